"""Attention: fastdl.functional.scaled_dot_product_attention against torch's (its default
backend, and on CUDA also its FLASH backend), and fastdl.nn.MultiheadAttention against
torch.nn.MultiheadAttention (need_weights=False, the fused path).

FLOPs (the issue's convention): forward 4 B H L S E, halved when causal; fwd+bwd 3.5x forward.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import fastdl
from harness import Case

TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
}


def _flash(q, k, v, is_causal=False):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def sdpa_case(
    device: str,
    dtype: torch.dtype,
    b: int,
    h: int,
    length: int,
    d: int,
    causal: bool,
    against_flash: bool = False,
) -> Case:
    def make_inputs():
        make = lambda: torch.randn(b, h, length, d, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
        return (make(), make(), make(), None, 0.0, causal)

    flops = 4.0 * b * h * length * length * d / (2 if causal else 1)
    op = "sdpa" + (" vs torch flash" if against_flash else "")
    label = f"B{b} H{h} L{length} D{d}" + " causal" * causal
    reference = (
        (lambda q, k, v, m, p, c: _flash(q, k, v, c))
        if against_flash
        else F.scaled_dot_product_attention
    )
    return Case(
        op,
        label,
        dtype,
        device,
        make_inputs,
        fastdl.functional.scaled_dot_product_attention,
        reference,
        flops_fwd=flops,
        flops_fwd_bwd=3.5 * flops,
        **TOLERANCE[dtype],
    )


def mha_case(device: str, dtype: torch.dtype, b: int, length: int, embed: int, heads: int) -> Case:
    torch_mha = nn.MultiheadAttention(embed, heads, batch_first=True, device=device, dtype=dtype)
    ours = fastdl.nn.MultiheadAttention.from_torch(copy.deepcopy(torch_mha))

    def make_inputs():
        return (torch.randn(b, length, embed, device=device, dtype=dtype, requires_grad=True),)

    flops = 4.0 * b * length * length * embed + 2.0 * 4 * b * length * embed * embed
    return Case(
        "multihead_attention",
        f"B{b} L{length} E{embed} H{heads} self",
        dtype,
        device,
        make_inputs,
        lambda x: ours(x, x, x, need_weights=False)[0],
        lambda x: torch_mha(x, x, x, need_weights=False)[0],
        flops_fwd=flops,
        flops_fwd_bwd=3 * flops,
        **TOLERANCE[dtype],
    )


def cases(device: str, quick: bool) -> list[Case]:
    """CPU fp32: SDPA B2 H8 L512 D64 (the ANCHORS row), causal too, and MultiheadAttention
    B2 L512 E512 H8. CUDA (ANCHORS): bf16 B4 H16 L4096 D64/D128 against torch's default and
    FLASH backends, fp32 B4 H16 L2048 D64, MultiheadAttention bf16."""
    if device == "cpu":
        length = 256 if quick else 512
        return [
            sdpa_case("cpu", torch.float32, 2, 8, length, 64, False),
            sdpa_case("cpu", torch.float32, 2, 8, length, 64, True),
            mha_case("cpu", torch.float32, 2, length, 512, 8),
            sdpa_case("cpu", torch.bfloat16, 2, 8, length, 64, False),
            mha_case("cpu", torch.bfloat16, 2, length, 512, 8),
        ]
    length = 1024 if quick else 4096
    rows = []
    for d in (64, 128):
        rows.append(sdpa_case("cuda", torch.bfloat16, 4, 16, length, d, False))
        rows.append(sdpa_case("cuda", torch.bfloat16, 4, 16, length, d, False, against_flash=True))
    rows.append(sdpa_case("cuda", torch.bfloat16, 4, 16, length, 64, True))
    rows.append(sdpa_case("cuda", torch.float32, 4, 16, length // 2, 64, False))
    rows.append(mha_case("cuda", torch.bfloat16, 4, length // 2, 1024, 16))
    return rows
