"""Every code path of the LSTM/GRU CPU kernels (rnn/cpu/rnn.cpp) and of the drivers around
them (rnn/lstm.cpp, rnn/gru.cpp), with shapes on both sides of each threshold, in float32 and
float64, with 1 thread and with several, against torch (``torch.lstm``/``torch.gru``) or the
float64 step-by-step reference of fastdl.reference.

rnn.cpp: the fused step kernels over the hidden units in ``L``-lane vectors plus a scalar
tail (``over_lanes``); bias and peephole gradients as column sums over blocks of
``kBlock`` = 256 columns (4H for the LSTM, 3H for the GRU), each block's accumulator zeroed
for it, blocks split over threads; the peephole gradient's vectors that straddle two gates
(H not a multiple of L). ``matmul_cpu``: products with at most 64 rows (a step: the batch)
go to ``parallel_gemm`` (panels of 4 L columns split over threads; ``small_gemm`` with one or
two rows takes four-vector panels, more rows 8/4/2/1-row tiles); larger ones (all steps'
input projections and gradients once T * B > 64, or a batch of 65) to the packed float32 GEMM
or at::mm. Variable lengths (inactive steps carry the state), projections, reverse.
"""

import pytest
import torch

import fastdl.functional as FF
from fastdl.reference import peephole_lstm
from helpers import compare_with_torch
from thresholds import DTYPES, around, threads, vec_width  # noqa: F401  (threads: a fixture)

I = 5  # input size


def _weights(dtype, gates, H, P=None, bias=True):
    """(weight_ih, weight_hh, bias_ih, bias_hh) of a layer with ``gates`` gates, scaled so
    the gates do not saturate."""
    s = 1 / (H**0.5)
    w_ih = torch.randn(gates * H, I, dtype=dtype) * s
    w_hh = torch.randn(gates * H, P or H, dtype=dtype) * s
    b = [torch.randn(gates * H, dtype=dtype) * s for _ in range(2)] if bias else [None, None]
    return [w_ih, w_hh] + b


def _flat(*tensors):
    """Every output in one tensor, so one random output gradient reaches all of them."""
    return torch.cat([t.flatten() for t in tensors])


def _per_sequence(run, x, states, lengths):
    """A layer over padded sequences from ``run`` over each sequence alone: outputs zero past
    each length, the final states those after its last valid step (what ``lengths`` means)."""
    outs, finals = [], []
    for b in range(x.shape[1]):
        n = int(lengths[b])
        out, *final = run(x[:n, b : b + 1], *(s[b : b + 1] for s in states))
        outs.append(torch.cat([out, out.new_zeros(x.shape[0] - n, 1, out.shape[2])]))
        finals.append(final)
    return (torch.cat(outs, 1), *(torch.cat(f) for f in zip(*finals)))


def _lstm_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peephole, lengths, reverse):
    if lengths is not None:
        return _per_sequence(
            lambda x, h, c: _lstm_reference(
                x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, peephole, None, reverse
            ),
            x,
            (h0, c0),
            lengths,
        )
    if w_hr is None:  # the step-by-step reference (zero peepholes: a plain LSTM)
        p = peephole if peephole is not None else x.new_zeros(3, c0.shape[1])
        return peephole_lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, p, reverse)
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else []) + [w_hr]
    xs = x.flip(0) if reverse else x
    out, h, c = torch.lstm(
        xs, (h0[None], c0[None]), params, b_ih is not None, 1, 0.0, True, False, False
    )
    return (out.flip(0) if reverse else out), h[0], c[0]


def _gru_reference(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    if lengths is not None:
        return _per_sequence(
            lambda x, h: _gru_reference(x, h, w_ih, w_hh, b_ih, b_hh, None, reverse),
            x,
            (h0,),
            lengths,
        )
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
    xs = x.flip(0) if reverse else x
    out, h = torch.gru(xs, h0[None], params, b_ih is not None, 1, 0.0, True, False, False)
    return (out.flip(0) if reverse else out), h[0]


def _lengths(T, B):
    """Valid lengths from T down to 1 (the first sequence full, one of length 1)."""
    return torch.tensor([max(1, T - (b * T) // max(B - 1, 1)) for b in range(B)])


def _lstm(
    dtype, T, B, H, P=None, bias=True, peephole=False, lengths=None, reverse=False, outputs="all"
):
    """fastdl's lstm vs the reference, forward and every gradient. ``outputs="final"``
    backpropagates through the final states only (no gradient of the outputs)."""
    x = torch.randn(T, B, I, dtype=dtype)
    h0, c0 = torch.randn(B, P or H, dtype=dtype), torch.randn(B, H, dtype=dtype)
    w = _weights(dtype, 4, H, P, bias)
    w_hr = torch.randn(P, H, dtype=dtype) / H**0.5 if P else None
    pp = torch.randn(3, H, dtype=dtype) * 0.5 if peephole else None
    pick = (lambda o, h, c: _flat(o, h, c)) if outputs == "all" else (lambda o, h, c: _flat(h, c))
    args = [t.requires_grad_() if t is not None else None for t in [x, h0, c0, *w, w_hr, pp]]
    compare_with_torch(
        lambda *a: pick(*FF.lstm(*a, lengths=lengths, reverse=reverse)),
        lambda *a: pick(*_lstm_reference(*a, lengths, reverse)),
        args,
        dtype,
    )


def _gru(dtype, T, B, H, bias=True, lengths=None, reverse=False):
    x, h0 = torch.randn(T, B, I, dtype=dtype), torch.randn(B, H, dtype=dtype)
    args = [
        t.requires_grad_() if t is not None else None
        for t in [x, h0, *_weights(dtype, 3, H, bias=bias)]
    ]
    compare_with_torch(
        lambda *a: _flat(*FF.gru(*a, lengths=lengths, reverse=reverse)),
        lambda *a: _flat(*_gru_reference(*a, lengths, reverse)),
        args,
        dtype,
    )


def _hidden_sizes(L):
    """Hidden sizes around the vector width and a non-multiple."""
    return sorted(set(around(L) + [2 * L + 3]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_hidden_lanes(dtype, threads):
    # The step kernels' vectors and scalar tail over H (LSTM, GRU), with and without biases.
    for H in _hidden_sizes(vec_width(dtype)):
        _lstm(dtype, 3, 2, H)
        _gru(dtype, 3, 2, H, bias=H % 2 == 0)
        _lstm(dtype, 2, 2, H, bias=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_bias_column_blocks(dtype, threads):
    # Bias gradients as column sums in blocks of 256: LSTM 4H = 252, 256, 260 and 280 columns
    # (one block; exactly one; a second of 4 or 24 columns), GRU 3H = 255, 258.
    for H in [63, 64, 65, 70]:
        _lstm(dtype, 3, 2, H)
    for H in [85, 86]:
        _gru(dtype, 3, 2, H)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_peephole_straddles(dtype, threads):
    # Peephole gradient columns [i | f | o] of H each: H < L (every vector straddles), H = L,
    # H = L + 3 (vectors straddling two gates) and past the 256-column block (3H = 276).
    L = vec_width(dtype)
    for H in sorted({L - 3, L, L + 3, 92}):
        _lstm(dtype, 3, 2, H, peephole=True)


# Batch sizes for small_gemm's row tiles (1 and 2 rows: four-vector panels; 3 = 2 + 1;
# 5 = 4 + 1; 8 and 13 = 8-row tiles and remainders), 64 rows (the last step product of ours)
# and 65 (the packed GEMM or at::mm instead); T * B past 64 for the all-steps products.
MATMUL_CASES = [(3, 1), (3, 2), (2, 3), (2, 5), (2, 8), (9, 13), (1, 64), (2, 65)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_matmul_paths(dtype, threads):
    L = vec_width(dtype)
    for T, B in MATMUL_CASES:
        _lstm(dtype, T, B, L + 1)
        _gru(dtype, T, B, 2 * L - 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_lengths_reverse_projection(dtype, threads):
    # Variable lengths (inactive steps in every kernel), reverse, projections (P around L:
    # the state-gradient split's vectors), gradients through the final states only.
    L = vec_width(dtype)
    T, B = 5, 4
    lengths = _lengths(T, B)
    for reverse in (False, True):
        _lstm(dtype, T, B, L + 1, lengths=lengths, reverse=reverse)
        _lstm(dtype, T, B, L + 1, peephole=True, lengths=lengths, reverse=reverse)
        _gru(dtype, T, B, L - 1, lengths=lengths, reverse=reverse)
        for P in around(L):
            _lstm(dtype, T, B, L + 2, P=P, lengths=lengths, reverse=reverse)
    _lstm(dtype, T, B, L + 1, outputs="final")
    _lstm(dtype, T, B, L + 1, P=L - 1, outputs="final")


# bfloat16: every product on the CPU's bfloat16 units where it has them (AMX tiles or
# AVX512_BF16; float32 elsewhere), the step weights packed once per call into 32-column panels
# of 32-step blocks, each step's batch into 32-row panels: batches below, at and past one
# panel and a multiple of 8 or not (the dot products' row groups); 4H and 3H past a panel and
# not a multiple of one, H (the reduction) a partial block; a projection (P = 20: its own
# packed weight, a reduction of H and a partial panel).
BF16_CASES = [(3, 1, 16), (3, 8, 37), (2, 13, 16), (2, 32, 8), (2, 33, 37), (2, 40, 64)]


@pytest.mark.parametrize("T,B,H", BF16_CASES, ids=[f"T{t}B{b}H{h}" for t, b, h in BF16_CASES])
def test_rnn_bf16_step_products(T, B, H, threads):
    _lstm(torch.bfloat16, T, B, H)
    _gru(torch.bfloat16, T, B, H)
    if H > 20:
        _lstm(torch.bfloat16, T, B, H, P=20, lengths=_lengths(T, B), reverse=True)


def test_lstm_bf16_fused_step_keeps_nan():
    """The fused bfloat16 step (H a multiple of 32) takes its activations from a fast exp
    that clamps its argument; a NaN input must still give NaN exactly where torch's does."""
    T, B, H = 3, 3, 32
    x = torch.randn(T, B, I).bfloat16()
    x[1, 1, 2] = float("nan")
    h0, c0 = torch.zeros(B, H).bfloat16(), torch.zeros(B, H).bfloat16()
    w = [t.bfloat16() for t in _weights(torch.float32, 4, H)]
    ours = FF.lstm(x, h0, c0, *w)
    theirs = torch.lstm(x, (h0[None], c0[None]), w, True, 1, 0.0, False, False, False)
    for a, b in zip(ours, (theirs[0], theirs[1][0], theirs[2][0])):
        assert a.isnan().any() and torch.equal(a.isnan(), b.isnan())
