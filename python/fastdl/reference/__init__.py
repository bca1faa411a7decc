"""Pure-PyTorch compositions of fastdl's ops, written from their equations: the references
the tests and benchmarks compare fastdl's kernels with (they are not used by fastdl itself)."""

from .histogram import histogram_reference
from .rnn import peephole_lstm
from .sets import (
    induced_attention_reference,
    isab_reference,
    mab_reference,
    pma_reference,
    reference_code_mab,
    set_transformer_reference,
)

__all__ = [
    "histogram_reference",
    "induced_attention_reference",
    "isab_reference",
    "mab_reference",
    "peephole_lstm",
    "pma_reference",
    "reference_code_mab",
    "set_transformer_reference",
]
