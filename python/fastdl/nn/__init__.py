"""Drop-in replacements for torch.nn layers, backed by fastdl's kernels."""

from .attention import MultiheadAttention
from .conv import Conv1d, Conv2d
from .convert import ConversionReport, convert
from .histogram import HardHistogram, RBFHistogram, SigmoidHistogram, SoftHistogram
from .norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm
from .pooling import AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d
from .rnn import GRU, LSTM, GRUCell, LSTMCell, PeepholeLSTM
from .sets import ISAB, MAB, PMA, SAB

__all__ = [
    "AvgPool1d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Conv1d",
    "Conv2d",
    "ConversionReport",
    "GRU",
    "GRUCell",
    "HardHistogram",
    "ISAB",
    "LSTM",
    "LSTMCell",
    "LayerNorm",
    "MAB",
    "MaxPool1d",
    "MaxPool2d",
    "MultiheadAttention",
    "PMA",
    "PeepholeLSTM",
    "RBFHistogram",
    "SAB",
    "SigmoidHistogram",
    "SoftHistogram",
    "convert",
]
