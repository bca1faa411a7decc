"""Functional fastdl ops with torch.nn.functional's signatures."""

from .attention import scaled_dot_product_attention
from .conv import conv1d, conv2d
from .histogram import histogram
from .sets import induced_attention, induced_attention_with_lse
from .norm import batch_norm, layer_norm
from .pooling import avg_pool1d, avg_pool2d, max_pool1d, max_pool2d
from .rnn import gru, gru_cell, lstm, lstm_cell

__all__ = [
    "avg_pool1d",
    "avg_pool2d",
    "batch_norm",
    "conv1d",
    "conv2d",
    "gru",
    "gru_cell",
    "histogram",
    "induced_attention",
    "induced_attention_with_lse",
    "layer_norm",
    "lstm",
    "lstm_cell",
    "max_pool1d",
    "max_pool2d",
    "scaled_dot_product_attention",
]
