"""Functional fastdl ops with torch.nn.functional's signatures."""

from .histogram import histogram
from .norm import batch_norm, layer_norm

__all__ = ["batch_norm", "histogram", "layer_norm"]
