"""Drop-in replacements for torch.nn layers, backed by fastdl's kernels."""

from .convert import ConversionReport, convert
from .histogram import HardHistogram, RBFHistogram, SigmoidHistogram, SoftHistogram
from .norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "ConversionReport", "HardHistogram", "LayerNorm",
           "RBFHistogram", "SigmoidHistogram", "SoftHistogram", "convert"]
