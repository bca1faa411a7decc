"""Drop-in replacements for torch.nn layers, backed by fastdl's kernels."""

from .conv import Conv1d, Conv2d
from .convert import ConversionReport, convert
from .histogram import HardHistogram, RBFHistogram, SigmoidHistogram, SoftHistogram
from .norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm
from .pooling import AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d
from .sets import ISAB, MAB, PMA, SAB

__all__ = ["AvgPool1d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Conv1d", "Conv2d",
           "ConversionReport", "HardHistogram", "ISAB", "LayerNorm", "MAB", "MaxPool1d", "MaxPool2d", "PMA", "RBFHistogram", "SAB", "SigmoidHistogram",
           "SoftHistogram", "convert"]
