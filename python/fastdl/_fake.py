"""What the fake (meta) kernels share. Each op's fake kernel (its output shapes and dtypes
without running it, so the ops trace under torch.compile(fullgraph=True), torch.export and
FakeTensor) is registered next to its Python wrapper, in fastdl.functional.<family>."""

from __future__ import annotations

import torch


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics are float32 for half inputs, else the input's dtype (as the kernels)."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def pair(v):
    """A 1- or 2-element size as (h, w)."""
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def empty_in_layout(input, shape, dtype=None):
    """An empty tensor of `shape` in the memory format the kernels give the outputs of a 4-d
    input (channels-last when the input suggests it)."""
    fmt = torch.contiguous_format
    if input.dim() == 4 and torch._prims_common.suggest_memory_format(input) == torch.channels_last:
        fmt = torch.channels_last
    return input.new_empty(shape, dtype=dtype).contiguous(memory_format=fmt)
