"""Functional fastdl ops with torch.nn.functional's signatures."""

from .conv import conv1d, conv2d
from .histogram import histogram
from .induced import induced_attention, induced_attention_with_lse
from .norm import batch_norm, layer_norm
from .pooling import avg_pool1d, avg_pool2d, max_pool1d, max_pool2d

__all__ = ["avg_pool1d", "avg_pool2d", "batch_norm", "conv1d", "conv2d", "histogram", "induced_attention",
           "induced_attention_with_lse", "layer_norm",
           "max_pool1d", "max_pool2d"]
