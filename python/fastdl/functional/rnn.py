"""Recurrent ops: whole-sequence LSTM and GRU layers (one layer, one direction per call) and
their one-step cells, on fastdl's fused kernels.

Sequences are time-major, ``(seq_len, batch, features)``. Gate order and weight layout are
torch's (LSTM ``i, f, g, o``; GRU ``r, z, n``), so the parameters of ``torch.nn.LSTM``/``GRU``
layers are used as they are. ``lengths`` gives variable-length batches the semantics of
torch's packed sequences: element ``b`` only takes steps ``t < lengths[b]`` (in either
direction), its outputs past its length are zero and its final state is the state after its
last step.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import register_fake

from .._fake import stats_dtype


def lstm(
    input: Tensor,
    hx: Tensor,
    cx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    weight_hr: Optional[Tensor] = None,
    peephole: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""One LSTM layer over a whole sequence.

    ``i, f, g, o = σ, σ, tanh, σ (W_ih x(t) + b_ih + W_hh h(t-1) + b_hh)``,
    ``c(t) = f ⊙ c(t-1) + i ⊙ g``, ``h(t) = o ⊙ tanh(c(t))`` (then ``W_hr h(t)`` with a
    projection). With ``peephole`` ``(3, hidden)``, ``i`` and ``f`` also read ``p ⊙ c(t-1)`` and
    ``o`` reads ``p ⊙ c(t)`` (diagonal peepholes).

    Args:
        input: ``(seq_len, batch, input_size)``.
        hx: ``(batch, proj_size or hidden_size)`` initial hidden state; cx: ``(batch, hidden_size)``.
        weight_ih: ``(4*hidden, input_size)``; weight_hh: ``(4*hidden, proj_size or hidden)``.
        bias_ih, bias_hh: optional ``(4*hidden,)``.
        weight_hr: optional ``(proj_size, hidden)`` projection (torch's ``proj_size``).
        peephole: optional ``(3, hidden)`` diagonal peephole weights of ``i, f, o``.
        lengths: optional int64 ``(batch,)`` valid lengths (CPU or the input's device).
        reverse: run from the last step to the first (the backward direction).

    Returns:
        ``(output, h_n, c_n)``: ``(seq_len, batch, proj or hidden)``, and the final states.
    """
    out = torch.ops.fastdl.lstm_forward(
        input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, peephole, lengths, reverse
    )
    return out[0], out[1], out[2]


def gru(
    input: Tensor,
    hx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""One GRU layer over a whole sequence, torch's form:
    ``r = σ(W_ir x + b_ir + W_hr h + b_hr)``, ``z = σ(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``, ``h' = (1 - z) ⊙ n + z ⊙ h``.

    Args:
        input: ``(seq_len, batch, input_size)``; hx: ``(batch, hidden)``.
        weight_ih: ``(3*hidden, input_size)``; weight_hh: ``(3*hidden, hidden)``.
        bias_ih, bias_hh: optional ``(3*hidden,)``.
        lengths, reverse: as in :func:`lstm`.

    Returns:
        ``(output, h_n)``: ``(seq_len, batch, hidden)`` and ``(batch, hidden)``.
    """
    out = torch.ops.fastdl.gru_forward(
        input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse
    )
    return out[0], out[1]


def lstm_cell(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step, as ``torch.nn.LSTMCell``: ``input (batch, input_size)``, ``hx = (h, c)``
    each ``(batch, hidden)``; returns ``(h', c')``. One input GEMM, one recurrent GEMM and one
    fused pointwise kernel."""
    if input.dim() != 2:
        raise ValueError(
            f"fastdl.lstm_cell: input must have shape (batch, input_size), got {list(input.shape)}"
        )
    if input.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # torch's CPU autocast runs lstm in bfloat16 but has no rule for lstm_cell: as torch,
        # the cell keeps its inputs' dtype.
        with torch.autocast("cpu", enabled=False):
            _, h, c = lstm(input.unsqueeze(0), hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh)
        return h, c
    _, h, c = lstm(input.unsqueeze(0), hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh)
    return h, c


def gru_cell(
    input: Tensor,
    hx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
) -> Tensor:
    """One GRU step, as ``torch.nn.GRUCell``: ``input (batch, input_size)``, ``hx (batch,
    hidden)``; returns ``h'``."""
    if input.dim() != 2:
        raise ValueError(
            f"fastdl.gru_cell: input must have shape (batch, input_size), got {list(input.shape)}"
        )
    return gru(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh)[1]


# ---- fake kernels: shapes and dtypes for torch.compile, torch.export, FakeTensor ----


def _rnn_check_input(op, input, weight_ih, gates):
    torch._check(
        input.dim() == 3,
        lambda: (
            f"{op}: input must have 3 dimensions (seq_len, batch, input_size), got {list(input.shape)}"
        ),
    )
    torch._check(
        weight_ih.dim() == 2 and weight_ih.shape[1] == input.shape[2],
        lambda: (
            f"{op}: weight_ih must have shape [{gates} * hidden_size, input_size] with input_size = {input.shape[2]}, got {list(weight_ih.shape)}"
        ),
    )
    return input.shape[0], input.shape[1], weight_ih.shape[0] // gates


@register_fake("fastdl::lstm_forward")
def _lstm_forward(
    input,
    hx,
    cx,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    weight_hr=None,
    peephole=None,
    lengths=None,
    reverse=False,
):
    T, B, H = _rnn_check_input("fastdl.lstm", input, weight_ih, 4)
    P = weight_hr.shape[0] if weight_hr is not None else H
    new = input.new_empty
    state = stats_dtype(input)  # gates and cells stay float32 for half inputs (rnn.h)
    return (
        new((T, B, P)),
        new((B, P)),
        new((B, H)),
        new((T, B, 4 * H), dtype=state),
        new((T, B, H), dtype=state),
        new((T, B, P)),
        new((T if weight_hr is not None else 0, B, H)),
    )


@register_fake("fastdl::lstm_backward")
def _lstm_backward(
    grad_output,
    grad_hy,
    grad_cy,
    input,
    hx,
    cx,
    weight_ih,
    weight_hh,
    weight_hr,
    peephole,
    lengths,
    reverse,
    gates,
    cells,
    hiddens,
    hidden_pre,
    output_mask,
):
    like = [
        input,
        hx,
        cx,
        weight_ih,
        weight_hh,
        weight_ih.new_empty(weight_ih.shape[0]),
        weight_ih.new_empty(weight_ih.shape[0]),
        weight_hr,
        peephole,
    ]
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format) if m and t is not None else None
        for m, t in zip(output_mask, like)
    )


@register_fake("fastdl::gru_forward")
def _gru_forward(
    input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, lengths=None, reverse=False
):
    T, B, H = _rnn_check_input("fastdl.gru", input, weight_ih, 3)
    new = input.new_empty
    return new((T, B, H)), new((B, H)), new((T, B, 4 * H), dtype=stats_dtype(input)), new((T, B, H))


@register_fake("fastdl::gru_backward")
def _gru_backward(
    grad_output,
    grad_hy,
    input,
    hx,
    weight_ih,
    weight_hh,
    lengths,
    reverse,
    work,
    hiddens,
    output_mask,
):
    like = [
        input,
        hx,
        weight_ih,
        weight_hh,
        weight_ih.new_empty(weight_ih.shape[0]),
        weight_ih.new_empty(weight_ih.shape[0]),
    ]
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format) if m else None
        for m, t in zip(output_mask, like)
    )
