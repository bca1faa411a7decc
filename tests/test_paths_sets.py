"""Every code path of the induced-attention CPU kernels (induced/cpu/induced_attention.cpp),
with shapes on both sides of each threshold, in float32 and float64, with 1 thread and with
several, against the float64 composition of fastdl.reference.

Few queries (L <= S): keys in chunks of ``kKeyChunk`` = 256, the key axis split into
``key_splits`` parallel parts (at least ``kMinKeysPerSplit`` = 512 keys each) while
``batch * heads * query blocks`` is below 4 x the thread count, merged by log-sum-exp; the
backward's blocks of ``kBackwardRows`` = 32 query rows, dQ in per-thread buffers. Many
queries (L > S): blocks of ``kQueryBlock`` = 64 query rows, dK and dV in per-thread buffers.
``add_weighted_rows`` (the P V and dS K, dS Q, P dO sums) runs four vectors at a time while
``e + 4 W <= d`` (``W`` = vector width), then one vector, then a scalar tail, over the value
and head dims; scores and exponentials in W-lane vectors plus a tail. Padded keys, a chunk
with every key padded and a set with no key at all.
"""

import pytest
import torch

import fastdl.functional as FF
from fastdl.reference import induced_attention_reference
from helpers import compare_with_torch
from thresholds import DTYPES, around, dominant_keys, threads, vec_width  # noqa: F401  (threads: a fixture)


def _induced(dtype, L, S, E, Ev, batch=1, heads=1, mask=None, strided=False):
    """fastdl's induced attention vs the reference; ``strided``: q, k, v as the (batch, n,
    heads, d) views that splitting heads makes (read in place)."""

    def make(n, d):
        if strided:
            return torch.randn(batch, n, heads, d, dtype=dtype).transpose(1, 2).requires_grad_()
        return torch.randn(batch, heads, n, d, dtype=dtype).requires_grad_()

    q, k, v = make(L, E), make(S, E), make(S, Ev)
    compare_with_torch(
        lambda q, k, v: FF.induced_attention(q, k, v, mask),
        lambda q, k, v: induced_attention_reference(q, k, v, mask),
        [q, k, v],
        dtype,
    )


def _dims(W):
    """Head / value dims around the vector width and the four-vector block."""
    return sorted(set(around(W) + around(4 * W) + [5 * W + 3]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("queries", ["few", "many"])
def test_induced_head_and_value_dims(dtype, queries, threads):
    # E and Ev below / at / above W and 4 W (every branch of add_weighted_rows, in the
    # forward's P V and the backward's dQ, dK, dV sums), in both partitions.
    dims = _dims(vec_width(dtype))
    L, S = (5, 40) if queries == "few" else (40, 5)
    for i, E in enumerate(dims):
        _induced(dtype, L, S, E, dims[(i + 2) % len(dims)], heads=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_induced_key_chunks(dtype, threads):
    # S around the 256-key chunk (one chunk, exactly one, a second of one key) and 513 (three
    # chunks); 33 query rows so the backward takes two 32-row blocks.
    W = vec_width(dtype)
    for S in around(256) + [513]:
        _induced(dtype, 33, S, W + 1, W - 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_induced_key_splits(dtype, threads):
    # One (batch, head) and one query block: S = 1100 splits the keys in two (550 each: two
    # chunks and a partial one), S = 2100 in four (at most S / 512), merged by log-sum-exp;
    # with more (batch, head) pairs than 4 x threads the keys are not split.
    W = vec_width(dtype)
    _induced(dtype, 3, 1100, W, W + 3)
    _induced(dtype, 2, 2100, W - 1, 4 * W)
    _induced(dtype, 2, 1030, W, W, batch=2, heads=2 * max(torch.get_num_threads(), 1) + 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_induced_query_blocks(dtype, threads):
    # Many queries: L around the 64-row block and 130 (three blocks), a short key set.
    W = vec_width(dtype)
    for L in around(64) + [130]:
        _induced(dtype, L, 9, W + 2, 4 * W + 1, batch=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("queries", ["few", "many"])
def test_induced_padding(dtype, queries, threads):
    # Padded keys (zero probabilities), the first key chunk entirely padded in one set, and a
    # set with every key padded (zero output and gradients), on strided (B, n, H, d) views.
    W = vec_width(dtype)
    L, S = (4, 600) if queries == "few" else (70, 20)
    mask = torch.rand(3, S) < 0.3
    mask[1, : min(S, 256)] = True
    mask[2] = True
    _induced(dtype, L, S, W + 1, 4 * W, batch=3, heads=2, mask=mask, strided=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_induced_dominant_keys(dtype, threads):
    # Each query row scores one key (at a vector / key-chunk edge) 200 (float32) or 1000
    # (float64) above the rest: a chunk's maximum (vector max_of) and the running maximum
    # must be the true ones, or exp(s - max) overflows. The output and dV only: with one-hot
    # probabilities dQ and dK are sums that cancel to ~0, whose float32 rounding (a few 1e-5
    # against scores of 200) no relative tolerance can judge.
    W = vec_width(dtype)
    positions = [0, 1, W - 1, W, 2 * W - 1, 2 * W, 255, 256, 299]
    q, k = dominant_keys(dtype, positions, 300, max(len(positions), W + 1))
    v = torch.randn(1, 1, 300, 4 * W + 1, dtype=dtype)
    compare_with_torch(
        lambda v: FF.induced_attention(q, k, v),
        lambda v: induced_attention_reference(q.to(v.dtype), k.to(v.dtype), v),
        [v.requires_grad_()],
        dtype,
    )
