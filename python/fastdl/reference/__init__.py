"""Pure-PyTorch compositions of fastdl's ops, written from their equations: the references
the tests and benchmarks compare fastdl's kernels with (they are not used by fastdl itself)."""

from .histogram import histogram_reference
from .rnn import peephole_lstm

__all__ = ["histogram_reference"]
__all__ += ["peephole_lstm"]
