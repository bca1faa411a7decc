"""Convolution: fastdl.functional.conv2d against torch.nn.functional.conv2d, dense 3x3
(padding 1, with bias) and depthwise 3x3 (groups = channels), forward and forward+backward.

FLOPs count the multiply-adds of the convolution (2 per MAC): forward 2 N K OH OW (C/groups)
kh kw; a backward computes the input and the weight gradient, each as many, so fwd+bwd is 3x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastdl
from harness import Case

TOLERANCE = {
    torch.float32: dict(atol=1e-3, rtol=1e-4),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}


def conv_case(device: str, dtype: torch.dtype, n: int, c: int, hw: int, k: int, groups: int,
              channels_last: bool) -> Case:
    kh = kw = 3
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def make_inputs():
        x = torch.randn(n, c, hw, hw, device=device, dtype=dtype).contiguous(memory_format=memory_format)
        w = torch.randn(k, c // groups, kh, kw, device=device, dtype=dtype) / (c // groups * kh * kw) ** 0.5
        b = torch.randn(k, device=device, dtype=dtype)
        return (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1, 1, 1, groups)

    flops = 2.0 * n * k * hw * hw * (c // groups) * kh * kw
    op = "conv2d" if groups == 1 else "conv2d_depthwise"
    label = f"N{n} C{c} {hw}x{hw} K{k} 3x3" + " channels_last" * channels_last
    return Case(op, label, dtype, device, make_inputs, fastdl.functional.conv2d, F.conv2d,
                flops_fwd=flops, flops_fwd_bwd=3 * flops, **TOLERANCE[dtype])


def cases(device: str, quick: bool) -> list[Case]:
    """CPU fp32: N8 C32 32x32 K64 3x3 (the ANCHORS row; N4 with ``quick``) and depthwise
    N8 C64 32x32. CUDA (ANCHORS): channels-last bf16 N32 C64 56x56 K64 3x3 and depthwise
    N32 C256 56x56, plus the fp32 NCHW dense case."""
    if device == "cpu":
        n = 4 if quick else 8
        return [conv_case("cpu", torch.float32, n, 32, 32, 64, 1, False),
                conv_case("cpu", torch.float32, n, 64, 32, 64, 64, False)]
    return [conv_case("cuda", torch.bfloat16, 32, 64, 56, 64, 1, True),
            conv_case("cuda", torch.float32, 32, 64, 56, 64, 1, False),
            conv_case("cuda", torch.bfloat16, 32, 256, 56, 256, 256, True)]
