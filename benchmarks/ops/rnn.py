"""Recurrent: fastdl.functional.lstm / gru (one layer, one direction, whole sequence) and the
cells against torch's own LSTM/GRU kernels (``torch.lstm``/``torch.gru``, what nn.LSTM/nn.GRU
call: cuDNN on CUDA, ATen's CPU loop on the CPU) on the same weights, forward and
forward+backward.

FLOPs count the GEMMs (2 per multiply-add): forward 2 T B G H (I + H) with G gates (4 LSTM,
3 GRU); a backward computes the input/state and the weight gradients, each as many: 3x.
"""

from __future__ import annotations

import torch

import fastdl
from harness import Case

F = fastdl.functional

TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}


def _weights(gates: int, inp: int, hidden: int, device: str, dtype: torch.dtype):
    bound = hidden**-0.5
    mk = lambda *s: (
        (torch.rand(*s, device=device, dtype=dtype) * 2 - 1).mul_(bound).requires_grad_()
    )  # noqa: E731
    return (
        mk(gates * hidden, inp),
        mk(gates * hidden, hidden),
        mk(gates * hidden),
        mk(gates * hidden),
    )


def rnn_case(
    kind: str, device: str, dtype: torch.dtype, steps: int, batch: int, inp: int, hidden: int
) -> Case:
    gates = 4 if kind == "lstm" else 3

    def make_inputs():
        x = torch.randn(steps, batch, inp, device=device, dtype=dtype, requires_grad=True)
        h0 = torch.randn(batch, hidden, device=device, dtype=dtype, requires_grad=True)
        c0 = torch.randn(batch, hidden, device=device, dtype=dtype, requires_grad=kind == "lstm")
        return (x, h0, c0) + _weights(gates, inp, hidden, device, dtype)

    if kind == "lstm":

        def ours(x, h0, c0, *w):
            return F.lstm(x, h0, c0, *w)

        def theirs(x, h0, c0, *w):
            out, h, c = torch.lstm(
                x, (h0.unsqueeze(0), c0.unsqueeze(0)), list(w), True, 1, 0.0, True, False, False
            )
            return out, h[0], c[0]
    else:

        def ours(x, h0, c0, *w):  # c0 is unused (no cell state)
            return F.gru(x, h0, *w)

        def theirs(x, h0, c0, *w):
            out, h = torch.gru(x, h0.unsqueeze(0), list(w), True, 1, 0.0, True, False, False)
            return out, h[0]

    flops = 2.0 * steps * batch * gates * hidden * (inp + hidden)
    return Case(
        kind,
        f"T{steps} B{batch} I{inp} H{hidden}",
        dtype,
        device,
        make_inputs,
        ours,
        theirs,
        flops_fwd=flops,
        flops_fwd_bwd=3 * flops,
        **TOLERANCE[dtype],
    )


def cell_case(
    kind: str, device: str, dtype: torch.dtype, batch: int, inp: int, hidden: int
) -> Case:
    gates = 4 if kind == "lstm" else 3

    def make_inputs():
        x = torch.randn(batch, inp, device=device, dtype=dtype, requires_grad=True)
        h = torch.randn(batch, hidden, device=device, dtype=dtype, requires_grad=True)
        c = torch.randn(batch, hidden, device=device, dtype=dtype, requires_grad=kind == "lstm")
        return (x, h, c) + _weights(gates, inp, hidden, device, dtype)

    if kind == "lstm":
        ours = lambda x, h, c, *w: F.lstm_cell(x, (h, c), *w)  # noqa: E731
        theirs = lambda x, h, c, *w: torch.lstm_cell(x, (h, c), *w)  # noqa: E731
    else:
        ours = lambda x, h, c, *w: F.gru_cell(x, h, *w)  # noqa: E731
        theirs = lambda x, h, c, *w: torch.gru_cell(x, h, *w)  # noqa: E731
    flops = 2.0 * batch * gates * hidden * (inp + hidden)
    return Case(
        f"{kind}_cell",
        f"B{batch} I{inp} H{hidden}",
        dtype,
        device,
        make_inputs,
        ours,
        theirs,
        flops_fwd=flops,
        flops_fwd_bwd=3 * flops,
        **TOLERANCE[dtype],
    )


def cases(device: str, quick: bool) -> list[Case]:
    """CPU fp32 (ANCHORS): LSTM and GRU T64 B16 I128 H256 (T16 with ``quick``), cells B16 I128
    H256. CUDA (ANCHORS): T128 B64 I512 H512 in fp32 and fp16, and the latency-bound T256 B8
    I256 H256 fp32."""
    if device == "cpu":
        steps = 16 if quick else 64
        return [
            rnn_case("lstm", "cpu", torch.float32, steps, 16, 128, 256),
            rnn_case("gru", "cpu", torch.float32, steps, 16, 128, 256),
            cell_case("lstm", "cpu", torch.float32, 16, 128, 256),
            cell_case("gru", "cpu", torch.float32, 16, 128, 256),
            rnn_case("lstm", "cpu", torch.bfloat16, steps, 16, 128, 256),
            rnn_case("gru", "cpu", torch.bfloat16, steps, 16, 128, 256),
        ]
    out = []
    for kind in ("lstm", "gru"):
        out += [
            rnn_case(kind, "cuda", torch.float32, 128, 64, 512, 512),
            rnn_case(kind, "cuda", torch.float16, 128, 64, 512, 512),
            rnn_case(kind, "cuda", torch.float32, 256, 8, 256, 256),
            cell_case(kind, "cuda", torch.float32, 64, 512, 512),
        ]
    return out
