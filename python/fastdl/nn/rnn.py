"""LSTM, GRU, LSTMCell, GRUCell and PeepholeLSTM backed by fastdl's fused recurrent kernels.

LSTM, GRU and the cells subclass their torch.nn twins: constructor arguments, parameter names
(``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}``,
the ``_reverse`` suffix), shapes, gate order, initialisation, ``extra_repr``, input checks
and error messages are torch's own, so ``load_state_dict`` works both ways. ``forward``
follows torch's (batch_first, unbatched input, ``hx`` handling, PackedSequence) and runs each
layer and direction with :func:`fastdl.functional.lstm` / :func:`fastdl.functional.gru`.
A PackedSequence is run as a padded batch with per-element lengths (the kernels stop each
element at its length), which gives torch's packed results.

``torch.compile(fullgraph=True)`` traces these modules through fastdl's fake kernels, but
dynamo refuses every ``torch.nn.RNNBase`` subclass by default: set
``torch._dynamo.config.allow_rnn = True`` to compile them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import functional
from ._base import FastdlModule


class _FusedRNN(FastdlModule):
    """torch's RNNBase.forward flow (shared by LSTM and GRU) on fastdl's layer ops."""

    _is_lstm: bool

    def _layer_weights(self, layer: int, direction: int) -> dict[str, Optional[Tensor]]:
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        get = lambda name: getattr(self, name + suffix, None)  # noqa: E731
        weights = dict(
            weight_ih=get("weight_ih"),
            weight_hh=get("weight_hh"),
            bias_ih=get("bias_ih") if self.bias else None,
            bias_hh=get("bias_hh") if self.bias else None,
        )
        if self._is_lstm:
            weights["weight_hr"] = get("weight_hr") if self.proj_size > 0 else None
            weights["peephole"] = get("weight_peephole")
        return weights

    def _run(self, x: Tensor, h0: Tensor, c0: Optional[Tensor], lengths: Optional[Tensor]):
        """All layers and directions over a time-major padded ``x``; returns (output, h_n, c_n)."""
        directions = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                w = self._layer_weights(layer, direction)
                if self._is_lstm:
                    out, h, c = functional.lstm(
                        layer_input,
                        h0[index],
                        c0[index],
                        lengths=lengths,
                        reverse=direction == 1,
                        **w,
                    )
                    c_n.append(c)
                else:
                    out, h = functional.gru(
                        layer_input, h0[index], lengths=lengths, reverse=direction == 1, **w
                    )
                outputs.append(out)
                h_n.append(h)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n), (torch.stack(c_n) if self._is_lstm else None)

    def _run_packed(self, data: Tensor, batch_sizes: Tensor, h0, c0):
        """A PackedSequence's data (sorted order) as a padded batch with lengths, and back."""
        padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
        out, h_n, c_n = self._run(padded, h0, c0, lengths)
        return pack_padded_sequence(out, lengths).data, h_n, c_n

    def _state_zeros(self, batch: int, size: int, like: Tensor) -> Tensor:
        directions = 2 if self.bidirectional else 1
        return torch.zeros(
            self.num_layers * directions, batch, size, dtype=like.dtype, device=like.device
        )

    def forward(self, input, hx=None):  # noqa: C901 (torch's own flow, kept recognisable)
        self._update_flat_weights()
        name = type(self).__name__
        orig_input = input
        state_size = self.proj_size if self._is_lstm and self.proj_size > 0 else self.hidden_size
        batch_sizes = None
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch = int(batch_sizes[0])
            if hx is None:
                hx = self._state_zeros(max_batch, state_size, input)
                if self._is_lstm:
                    hx = (hx, self._state_zeros(max_batch, self.hidden_size, input))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            self.check_forward_args(input, hx, batch_sizes)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead"
                )
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = unsorted_indices = None
            if hx is None:
                hx = self._state_zeros(max_batch, state_size, input)
                if self._is_lstm:
                    hx = (hx, self._state_zeros(max_batch, self.hidden_size, input))
            elif self._is_lstm:
                if is_batched and (hx[0].dim() != 3 or hx[1].dim() != 3):
                    raise RuntimeError(
                        "For batched 3-D input, hx and cx should also be 3-D but got "
                        f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
                if not is_batched:
                    if hx[0].dim() != 2 or hx[1].dim() != 2:
                        raise RuntimeError(
                            "For unbatched 2-D input, hx and cx should also be 2-D but got "
                            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                        )
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            else:
                if is_batched and hx.dim() != 3:
                    raise RuntimeError(
                        f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                    )
                if not is_batched:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            self.check_forward_args(input, hx, batch_sizes)

        h0, c0 = (hx[0], hx[1]) if self._is_lstm else (hx, None)
        if batch_sizes is not None:
            output, h_n, c_n = self._run_packed(input, batch_sizes, h0, c0)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            output, h_n, c_n = self._run(x, h0, c0, None)
            if self.batch_first:
                output = output.transpose(0, 1)
        hidden = (h_n, c_n) if self._is_lstm else h_n

        if isinstance(orig_input, PackedSequence):
            return (
                PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(hidden, unsorted_indices),
            )
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (
                (hidden[0].squeeze(1), hidden[1].squeeze(1)) if self._is_lstm else hidden.squeeze(1)
            )
        return output, self.permute_hidden(hidden, unsorted_indices)


class LSTM(_FusedRNN, nn.LSTM):
    """Drop-in :class:`torch.nn.LSTM` (multi-layer, bidirectional, batch_first, dropout,
    proj_size, PackedSequence) running :func:`fastdl.functional.lstm` per layer and direction."""

    torch_type = nn.LSTM
    _is_lstm = True


class GRU(_FusedRNN, nn.GRU):
    """Drop-in :class:`torch.nn.GRU` running :func:`fastdl.functional.gru` per layer and direction."""

    torch_type = nn.GRU
    _is_lstm = False


class PeepholeLSTM(LSTM):
    """An LSTM whose gates also read the cell state through diagonal peephole weights (Gers &
    Schmidhuber): ``i = σ(... + p_i ⊙ c(t-1))``, ``f = σ(... + p_f ⊙ c(t-1))``,
    ``o = σ(... + p_o ⊙ c(t))``.

    Takes :class:`torch.nn.LSTM`'s arguments and parameters plus ``weight_peephole_l{k}``
    (``_reverse``) of shape ``(3, hidden_size)`` (rows ``i, f, o``), initialised like the other
    weights, ``U(-1/sqrt(hidden), 1/sqrt(hidden))``. There is no torch twin; its float64
    reference is :func:`fastdl.reference.rnn.peephole_lstm`.
    """

    torch_type = None  # not a conversion target

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        factory = dict(device=self.weight_ih_l0.device, dtype=self.weight_ih_l0.dtype)
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse") if self.bidirectional else ("",):
                p = nn.Parameter(
                    torch.empty(3, self.hidden_size, **factory).uniform_(-bound, bound)
                )
                self.register_parameter(f"weight_peephole_l{layer}{suffix}", p)


def _batched_cell_inputs(
    cell: str, input: Tensor, states, count: int, hidden_size: int, state_name
) -> tuple[Tensor, list[Tensor], bool]:
    """A cell's input and ``count`` states as batched tensors (zeros when ``states`` is None),
    and whether the input was batched; torch's errors for inputs of the wrong rank."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{cell}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    for idx, value in enumerate(states or ()):
        if value.dim() not in (1, 2):
            raise ValueError(
                f"{cell}: Expected {state_name(idx)} to be 1D or 2D, got {value.dim()}D instead"
            )
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
    if states is None:
        zeros = torch.zeros(input.size(0), hidden_size, dtype=input.dtype, device=input.device)
        return input, [zeros] * count, is_batched
    return input, [s if is_batched else s.unsqueeze(0) for s in states], is_batched


class LSTMCell(FastdlModule, nn.LSTMCell):
    """Drop-in :class:`torch.nn.LSTMCell`: one fused step (:func:`fastdl.functional.lstm_cell`)."""

    torch_type = nn.LSTMCell

    def forward(
        self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, Tensor]:
        input, (h0, c0), is_batched = _batched_cell_inputs(
            "LSTMCell", input, hx, 2, self.hidden_size, lambda idx: f"hx[{idx}]"
        )
        h, c = functional.lstm_cell(
            input, (h0, c0), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )
        return (h.squeeze(0), c.squeeze(0)) if not is_batched else (h, c)


class GRUCell(FastdlModule, nn.GRUCell):
    """Drop-in :class:`torch.nn.GRUCell`: one fused step (:func:`fastdl.functional.gru_cell`)."""

    torch_type = nn.GRUCell

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        input, (hx,), is_batched = _batched_cell_inputs(
            "GRUCell",
            input,
            None if hx is None else (hx,),
            1,
            self.hidden_size,
            lambda idx: "hidden",
        )
        h = functional.gru_cell(
            input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )
        return h.squeeze(0) if not is_batched else h
