"""A peephole LSTM written step by step from its equations (Gers & Schmidhuber, diagonal
peepholes), the float64 reference of :class:`fastdl.nn.PeepholeLSTM` and of
:func:`fastdl.functional.lstm` with ``peephole``:

    i = σ(W_ii x + b_ii + W_hi h + b_hi + p_i ⊙ c(t-1))
    f = σ(W_if x + b_if + W_hf h + b_hf + p_f ⊙ c(t-1))
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    c(t) = f ⊙ c(t-1) + i ⊙ g
    o = σ(W_io x + b_io + W_ho h + b_ho + p_o ⊙ c(t))
    h(t) = o ⊙ tanh(c(t))
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def peephole_lstm(
    input: Tensor,
    hx: Tensor,
    cx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor],
    bias_hh: Optional[Tensor],
    peephole: Tensor,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One peephole LSTM layer over a time-major ``input`` (seq_len, batch, input_size);
    returns ``(output, h_n, c_n)`` like :func:`fastdl.functional.lstm`."""
    h, c = hx, cx
    steps = range(input.shape[0] - 1, -1, -1) if reverse else range(input.shape[0])
    outputs = [None] * input.shape[0]
    p_i, p_f, p_o = peephole
    for t in steps:
        pre = input[t] @ weight_ih.t() + h @ weight_hh.t()
        if bias_ih is not None:
            pre = pre + bias_ih
        if bias_hh is not None:
            pre = pre + bias_hh
        a_i, a_f, a_g, a_o = pre.chunk(4, dim=1)
        i = torch.sigmoid(a_i + p_i * c)
        f = torch.sigmoid(a_f + p_f * c)
        g = torch.tanh(a_g)
        c = f * c + i * g
        o = torch.sigmoid(a_o + p_o * c)
        h = o * torch.tanh(c)
        outputs[t] = h
    output = torch.stack(outputs) if outputs else input.new_empty(0, hx.shape[0], hx.shape[1])
    return output, h, c
