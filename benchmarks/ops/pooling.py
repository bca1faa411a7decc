"""Pooling: fastdl.functional.max_pool2d (3x3, stride 2, padding 1: the ResNet stem) and
avg_pool2d (2x2, stride 2) against torch.nn.functional, NCHW and channels-last.

Bytes moved count the activation tensors, each read or written once: a forward reads x and
writes y (max pooling also writes its int64 indices); a backward reads dy (and the indices)
and writes dx.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import fastdl
from harness import Case

TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def pool_case(
    op: str, device: str, dtype: torch.dtype, shape: tuple[int, int, int, int], channels_last: bool
) -> Case:
    n, c, h, w = shape
    k, s, p = (3, 2, 1) if op == "max_pool2d" else (2, 2, 0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def make_inputs():
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
        return (x.requires_grad_(), k, s, p)

    ours = getattr(fastdl.functional, op)
    theirs = getattr(F, op)
    x_bytes = math.prod(shape) * dtype.itemsize
    outputs = n * c * _out(h, k, s, p) * _out(w, k, s, p)
    y_bytes = outputs * dtype.itemsize
    idx_bytes = outputs * 8 if op == "max_pool2d" else 0
    label = "x".join(map(str, shape)) + f" k{k}s{s}" + " channels_last" * channels_last
    return Case(
        op,
        label,
        dtype,
        device,
        make_inputs,
        ours,
        theirs,
        bytes_fwd=x_bytes + y_bytes + idx_bytes,
        bytes_fwd_bwd=2 * (x_bytes + y_bytes + idx_bytes),
        **TOLERANCE[dtype],
    )


def cases(device: str, quick: bool) -> list[Case]:
    """CPU: fp32 and bf16 at N8 C32 32x32 (N4 C16 32x32 with ``quick``); CUDA: N32 C64
    112x112 (the ResNet stem's pooling input) in fp32 and bf16."""
    if device == "cpu":
        # bf16: the CPU kernels compute it in float32 (the same shapes as fp32).
        dtypes = [torch.float32, torch.bfloat16]
        shape = (4, 16, 32, 32) if quick else (8, 32, 32, 32)
    else:
        dtypes, shape = [torch.float32, torch.bfloat16], (32, 64, 112, 112)
    return [
        pool_case(op, device, dtype, shape, cl)
        for dtype in dtypes
        for op in ("max_pool2d", "avg_pool2d")
        for cl in (False, True)
    ]
