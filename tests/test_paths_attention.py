"""Every code path of the scaled-dot-product attention CPU kernels (attention/cpu/sdpa.cpp,
sdpa_rows.h, sdpa_weights.cpp, and the register-tiled products of common/cpu/small_gemm.h
under them), with shapes on both sides of each threshold, in float32 and float64, with 1
thread and with several.

sdpa.cpp: tasks of ``kQueryBlock`` = 32 query rows (a partial last block), key blocks of
``kKeyBlock`` = 128 (a partial last block, the running maximum and the rescaling of what was
accumulated when it grows), causal blocks skipped, fully masked rows, bool and float masks
with broadcast strides, grouped-query heads; row loops in ``L``-lane vectors plus a tail.
The need_weights rows (sdpa_weights.cpp's ``sdpa_weights_probs_cpu``,
``sdpa_weights_softmax_backward_cpu``): rows of S keys in vectors plus a tail.

small_gemm.h's ``small_gemm``: one or two rows take four-vector column panels (``4 L``), then
two-vector and one-vector panels and a scalar column tail; rows in tiles of 8 (AVX-512) or
4, then 4, 2, 1. Its m is the block's query rows (or keys, for dK and dV), its n the keys or
the head dims: head dims around L, 2 L and 4 L below.
"""

import pytest
import torch
import torch.nn.functional as F

import fastdl.functional as FF
from helpers import compare_with_torch
from thresholds import DTYPES, around, dominant_keys, threads, vec_width  # noqa: F401  (threads: a fixture)


def _sdpa(dtype, Lq, S, E, Ev, heads=1, kv_heads=None, mask=None, causal=False):
    kv_heads = kv_heads or heads
    q = torch.randn(1, heads, Lq, E, dtype=dtype).requires_grad_()
    k = torch.randn(1, kv_heads, S, E, dtype=dtype).requires_grad_()
    v = torch.randn(1, kv_heads, S, Ev, dtype=dtype).requires_grad_()
    gqa = kv_heads != heads
    compare_with_torch(
        lambda q, k, v, m: FF.scaled_dot_product_attention(
            q, k, v, m, is_causal=causal, enable_gqa=gqa
        ),
        lambda q, k, v, m: F.scaled_dot_product_attention(
            q, k, v, m, is_causal=causal, enable_gqa=gqa
        ),
        [q, k, v, mask],
        dtype,
    )


# (query rows, keys) around the 32-row query blocks and the 128-key blocks: 1, 2 and 3 rows
# (small_gemm's one/two-row panels, then a 2 + 1 split), 31/32/33 and 65 rows, 127/128/129
# and 257 keys, and 1 or 2 keys (a dK/dV product of one or two rows).
BLOCKS = [(1, 129), (2, 130), (3, 127), (31, 128), (32, 1), (33, 257), (65, 129), (40, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sdpa_query_and_key_blocks(dtype, causal, threads):
    L = vec_width(dtype)
    for Lq, S in BLOCKS:
        _sdpa(dtype, Lq, S, L + 1, L - 1, heads=2, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_head_dims(dtype, threads):
    # Head dims (columns of the products into O, dQ, dK, dV) below / at / above L, 2 L, 4 L
    # and 5 L + 1; query blocks of 1, 2, 9 rows and 33 (8-row tiles and their remainders).
    L = vec_width(dtype)
    dims = sorted(set(around(L) + around(2 * L) + around(4 * L) + [5 * L + 1]))
    for i, E in enumerate(dims):
        Ev = dims[(i + 3) % len(dims)]
        _sdpa(dtype, [1, 2, 9, 33][i % 4], 131, E, Ev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_masks(dtype, kind, threads):
    # A (1, 1, Lq, S) mask broadcast over batch and heads (zero strides) and a full one; rows
    # masked entirely (output 0 and zero gradients, as torch's safe softmax) and a key block
    # masked entirely.
    L = vec_width(dtype)
    for shape in [(1, 1, 35, 140), (2, 2, 35, 140)]:
        keep = torch.rand(shape) > 0.3
        keep[..., 3, :] = False  # a query row with no key
        keep[..., 128:] = False  # the whole second key block
        if kind == "bool":
            mask = keep
        else:
            mask = torch.randn(shape, dtype=dtype).masked_fill(~keep, float("-inf"))
        q_heads = shape[1] if shape[1] > 1 else 2
        b = shape[0]
        q = torch.randn(b, q_heads, 35, L + 2, dtype=dtype).requires_grad_()
        k = torch.randn(b, q_heads, 140, L + 2, dtype=dtype).requires_grad_()
        v = torch.randn(b, q_heads, 140, 2 * L, dtype=dtype).requires_grad_()
        if kind == "float":
            mask.requires_grad_()
        compare_with_torch(
            lambda q, k, v, m: FF.scaled_dot_product_attention(q, k, v, m),
            lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m),  # safe softmax
            [q, k, v, mask],
            dtype,
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_grouped_query_heads(dtype, threads):
    # Four query heads share two key/value heads: one backward task per key/value head sums
    # its group's dK, dV.
    L = vec_width(dtype)
    _sdpa(dtype, 33, 130, L, 4 * L, heads=4, kv_heads=2)
    _sdpa(dtype, 33, 130, L, 4 * L, heads=4, kv_heads=2, causal=True)


def _weights(q, k, mask, causal):
    lse = torch.ops.fastdl.sdpa_forward(q, k, k, mask, 0.0, causal, None, None)[1]
    return torch.ops.fastdl.sdpa_weights(q, k, mask, 0.0, causal, None, None, lse)


def _weights_reference(q, k, mask, causal):
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s if mask is None else s + mask, -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask", ["causal", "float_mask"])
def test_sdpa_weights_rows(dtype, mask, threads):
    # need_weights: the probability rows and their softmax backward over S keys, S below /
    # at / above L and 4 L (vectors plus a tail); causal, or a float mask broadcast over the
    # heads (a zero stride).
    L = vec_width(dtype)
    causal = mask == "causal"
    for S in sorted(set(around(L) + around(4 * L))):
        q = torch.randn(1, 2, S, 5, dtype=dtype).requires_grad_()
        k = torch.randn(1, 2, S, 5, dtype=dtype).requires_grad_()
        m = None if causal else torch.randn(1, 1, S, S, dtype=dtype).requires_grad_()
        heads = (lambda m: None) if causal else (lambda m: m.expand(1, 2, S, S))  # noqa: E731
        compare_with_torch(
            lambda q, k, m: _weights(q, k, heads(m), causal),
            lambda q, k, m: _weights_reference(q, k, heads(m), causal),
            [q, k, m],
            dtype,
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_dominant_keys(dtype, threads):
    # Each query row scores one key (at a vector / key-block edge) 200 (float32) or 1000
    # (float64) above the rest: the row maximum (vector max_of over a key block, then the
    # running maximum across blocks) must be the true one, or exp(s - max) overflows.
    L = vec_width(dtype)
    positions = [0, 1, L - 1, L, 2 * L - 1, 2 * L, 127, 128, 129, 260]
    q, k = dominant_keys(dtype, positions, 261, max(len(positions), L + 1))
    v = torch.randn(1, 1, 261, L + 1, dtype=dtype)
    compare_with_torch(
        FF.scaled_dot_product_attention,
        F.scaled_dot_product_attention,
        [q.requires_grad_(), k.requires_grad_(), v.requires_grad_()],
        dtype,
    )


# bfloat16 on the AMX tiles (sdpa.cpp's TileProducts, with FASTDL_CPU_ISA amx: head dims that
# are multiples of 32; elsewhere these run the float32 kernel on converted copies): keys and
# values packed once per head (zero past S), 32-row query blocks (a partial last one, its rows
# padded with zeros), key blocks of 512 whose whole 32-key chunks multiply on the tiles and
# whose last cols % 32 keys add in float32, causal blocks skipped, masks, grouped heads.
TILE_CASES = [
    (1, 1, 32, 32),
    (33, 31, 32, 64),
    (31, 513, 64, 32),
    (65, 1030, 64, 64),
    (32, 96, 128, 96),
    (40, 33, 96, 128),
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sdpa_bf16_tiles(causal, threads):
    for Lq, S, E, Ev in TILE_CASES:
        _sdpa(torch.bfloat16, Lq, S, E, Ev, heads=2, causal=causal)
    _sdpa(torch.bfloat16, 33, 600, 64, 32, heads=4, kv_heads=2, causal=causal)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_bf16_tiles_masks(kind, threads):
    # A broadcast mask over two key blocks: a row with no key, the second block masked.
    keep = torch.rand(1, 1, 35, 600) > 0.3
    keep[..., 3, :] = False
    keep[..., 512:] = False
    mask = (
        keep
        if kind == "bool"
        else torch.randn(keep.shape, dtype=torch.bfloat16).masked_fill(~keep, float("-inf"))
    )
    q = torch.randn(1, 2, 35, 64, dtype=torch.bfloat16).requires_grad_()
    k = torch.randn(1, 2, 600, 64, dtype=torch.bfloat16).requires_grad_()
    v = torch.randn(1, 2, 600, 32, dtype=torch.bfloat16).requires_grad_()
    compare_with_torch(
        lambda q, k, v, m: FF.scaled_dot_product_attention(q, k, v, m),
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m),
        [q, k, v, mask],
        torch.bfloat16,
    )


def test_sdpa_bf16_tiles_dropout(threads):
    # With dropout the tiles' output is the float32 kernel's on the same values (the keep mask
    # is one function of the seed), up to bfloat16 probabilities and output rounding.
    q, k = (torch.randn(2, 2, 70, 64, dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(2, 2, 70, 64, dtype=torch.bfloat16)
    torch.manual_seed(3)
    ours = FF.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(3)
    exact = FF.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=0.3)
    assert (ours.float() - exact).abs().max().item() < 3e-2 * exact.abs().max().item()
