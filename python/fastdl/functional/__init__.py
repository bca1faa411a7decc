"""Functional fastdl ops with torch.nn.functional's signatures."""

from .norm import batch_norm, layer_norm

__all__ = ["batch_norm", "layer_norm"]
