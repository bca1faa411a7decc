"""fastdl scaled_dot_product_attention (op and functional) against torch's."""

import math

import pytest
import torch
import torch.nn.functional as F

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from helpers import (
    CUDA_AVAILABLE,
    device_dtypes,
    DEVICES,
    assert_close_to_reference,
    assert_close_with_nans,
    cuda_devices,
    assert_raises_naming,
    compare_with_torch,
)
from op_contract import OpContract, Sample

FAMILY = "attention"  # the emulator summary counts test cases per op family

# Every device with every dtype: the CPU kernels take float16/bfloat16 too (computed in float32).
DEVICE_DTYPES = device_dtypes(cpu_half=True)

OP = torch.ops.fastdl.sdpa_forward
OP_BACKWARD = torch.ops.fastdl.sdpa_backward


def _qkv(device, dtype, q_shape, k_shape, v_shape, requires_grad=True):
    make = lambda s: torch.randn(s, device=device, dtype=dtype).requires_grad_(requires_grad)  # noqa: E731
    return make(q_shape), make(k_shape), make(v_shape)


def _both(**kwargs):
    ours = lambda q, k, v, *m: FF.scaled_dot_product_attention(q, k, v, *m, **kwargs)  # noqa: E731
    ref = lambda q, k, v, *m: F.scaled_dot_product_attention(q, k, v, *m, **kwargs)  # noqa: E731
    return ours, ref


# (B, Hq, Hk, L, S, E, Ev): odd sizes, one query, one key, L != S both ways, E not a multiple
# of 8, E up to 256, more keys than a key block, GQA head groups.
SHAPES = [
    (2, 3, 3, 17, 33, 8, 6),
    (1, 2, 2, 1, 17, 16, 16),
    (2, 1, 1, 17, 1, 5, 7),
    (1, 2, 2, 40, 300, 13, 9),
    (1, 1, 1, 300, 40, 64, 64),
    (1, 2, 2, 65, 129, 96, 96),
    (1, 1, 1, 33, 70, 128, 128),
    (1, 1, 1, 9, 11, 256, 32),
    (2, 4, 2, 19, 23, 8, 8),
    (1, 6, 1, 10, 12, 16, 8),
    (1, 1, 1, 1000, 17, 8, 8),
    (1, 1, 1, 3, 1000, 8, 8),
    # value dims past 128 (the CUDA kernels' widest accumulator buckets)
    (1, 2, 2, 21, 37, 160, 200),
    (1, 1, 1, 7, 9, 64, 256),
]


def _shape_id(s):
    return "B{}Hq{}Hk{}L{}S{}E{}Ev{}".format(*s)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[_shape_id(s) for s in SHAPES])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_forward_backward(device, dtype, shape, causal):
    B, Hq, Hk, L, S, E, Ev = shape
    q, k, v = _qkv(device, dtype, (B, Hq, L, E), (B, Hk, S, E), (B, Hk, S, Ev))
    ours, ref = _both(is_causal=causal, enable_gqa=Hq != Hk)
    compare_with_torch(ours, ref, [q, k, v], dtype)


# attn_mask shapes that broadcast to (B, H, L, S) = (2, 3, 9, 21).
MASK_SHAPES = [(9, 21), (2, 3, 9, 21), (1, 3, 1, 21), (2, 1, 9, 1), (1, 21), (3, 9, 21)]


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=[str(m) for m in MASK_SHAPES])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks(device, dtype, mask_shape, kind):
    q, k, v = _qkv(device, dtype, (2, 3, 9, 8), (2, 3, 21, 8), (2, 3, 21, 5))
    if kind == "bool":
        mask = torch.rand(mask_shape, device=device) > 0.3
    else:  # differentiable float mask, with some -inf entries
        mask = torch.randn(mask_shape, device=device, dtype=dtype)
        mask = mask.masked_fill(torch.rand(mask_shape, device=device) < 0.2, float("-inf"))
        mask.requires_grad_()
    ours, ref = _both()
    compare_with_torch(ours, ref, [q, k, v, mask], dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_are_zero(device, dtype, kind):
    """Rows with every key masked give zeros and zero gradients, as torch's safe softmax."""
    q, k, v = _qkv(device, dtype, (2, 2, 6, 8), (2, 2, 10, 8), (2, 2, 10, 4))
    keep = torch.rand(6, 10, device=device) > 0.4
    keep[2] = False
    keep[5] = False
    mask = (
        keep
        if kind == "bool"
        else torch.zeros(6, 10, device=device, dtype=dtype).masked_fill(~keep, float("-inf"))
    )
    ours, ref = _both()
    out, *_ = compare_with_torch(ours, ref, [q, k, v, mask], dtype)
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    q2 = q.detach().clone().requires_grad_()
    FF.scaled_dot_product_attention(q2, k, v, mask).sum().backward()
    assert torch.equal(q2.grad[:, :, 5], torch.zeros_like(q2.grad[:, :, 5]))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_no_keys(device, dtype):
    q, k, v = _qkv(device, dtype, (2, 3, 4, 8), (2, 3, 0, 8), (2, 3, 0, 5))
    out = FF.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 4, 5) and torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_scale(device, dtype, scale):
    q, k, v = _qkv(device, dtype, (2, 2, 7, 16), (2, 2, 9, 16), (2, 2, 9, 16))
    ours, ref = _both(scale=scale)
    compare_with_torch(ours, ref, [q, k, v], dtype)


# Leading dims torch accepts: none (2-d), one, several, broadcasting ones.
RANK_SHAPES = [
    ((7, 8), (9, 8), (9, 6)),
    ((3, 7, 8), (3, 9, 8), (3, 9, 6)),
    ((2, 2, 3, 7, 8), (2, 2, 3, 9, 8), (2, 2, 3, 9, 6)),
    ((2, 3, 7, 8), (1, 3, 9, 8), (1, 3, 9, 6)),
    ((2, 3, 7, 8), (2, 1, 9, 8), (2, 1, 9, 6)),
]


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shapes", RANK_SHAPES, ids=[str(s[0]) + str(s[1]) for s in RANK_SHAPES])
def test_leading_dims_and_broadcasting(device, dtype, shapes):
    q, k, v = _qkv(device, dtype, *shapes)
    ours, ref = _both()
    compare_with_torch(ours, ref, [q, k, v], dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_gqa_with_mask_and_batch_dims(device, dtype):
    q, k, v = _qkv(device, dtype, (2, 2, 6, 5, 8), (2, 2, 3, 7, 8), (2, 2, 3, 7, 4))
    mask = torch.rand(6, 5, 7, device=device) > 0.3
    ours, ref = _both(enable_gqa=True)
    compare_with_torch(ours, ref, [q, k, v, mask], dtype)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


def _dropout_keep_mask(shape_bhls, p, seed, device, dtype):
    """The keep mask (scaled by 1/(1-p)) fastdl uses for `seed`: with all scores equal and
    V the identity, output[..., i, j] = keep[i, j] / ((1 - p) * S)."""
    B, H, L, S = shape_bhls
    q = torch.zeros(B, H, L, 4, device=device, dtype=dtype)
    k = torch.zeros(B, H, S, 4, device=device, dtype=dtype)
    v = torch.eye(S, device=device, dtype=dtype).expand(B, H, S, S)
    torch.manual_seed(seed)
    out = FF.scaled_dot_product_attention(q, k, v, dropout_p=p)
    return out * S


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_statistics(device, p):
    scaled_keep = _dropout_keep_mask((2, 4, 64, 96), p, 0, device, torch.float64)
    kept = scaled_keep != 0
    torch.testing.assert_close(scaled_keep[kept], torch.full_like(scaled_keep[kept], 1 / (1 - p)))
    n = kept.numel()
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n), f"kept {rate}, expected {1 - p}"
    # Different rows, heads and seeds get different masks.
    assert not torch.equal(kept[0, 0, 0], kept[0, 0, 1]) and not torch.equal(kept[0, 0], kept[0, 1])
    other = _dropout_keep_mask((2, 4, 64, 96), p, 1, device, torch.float64) != 0
    assert not torch.equal(kept, other)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_dropout_matches_reference_with_its_mask(device, dtype):
    """Output and gradients with dropout equal a float64 composition using the same keep mask
    (regenerated, not stored, in backward); the same seed reproduces them."""
    B, H, L, S, E = 2, 3, 20, 150, 8
    p = 0.3
    keep = _dropout_keep_mask((B, H, L, S), p, 7, device, torch.float64)
    q, k, v = _qkv(device, dtype, (B, H, L, E), (B, H, S, E), (B, H, S, E))
    mask = torch.rand(L, S, device=device) > 0.2

    def ours(q, k, v):
        torch.manual_seed(7)
        return FF.scaled_dot_product_attention(q, k, v, mask, dropout_p=p)

    def ref(q, k, v):
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(E)
        scores = scores.masked_fill(~mask, float("-inf"))
        return (torch.softmax(scores, -1) * keep.to(q.dtype)) @ v

    compare_with_torch(ours, ref, [q, k, v], dtype)
    torch.testing.assert_close(ours(q, k, v), ours(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_dropout_one_drops_everything(device, dtype, masked):
    """dropout_p=1.0 is accepted, as torch: every weight dropped, output and all gradients
    (the float mask's included) exactly zero, as torch's."""
    q, k, v = _qkv(device, dtype, (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4))
    mask = torch.randn(5, 7, device=device, dtype=dtype, requires_grad=True) if masked else None
    inputs = [q, k, v] + ([mask] if masked else [])
    out = FF.scaled_dot_product_attention(q, k, v, mask, dropout_p=1.0)
    ref = F.scaled_dot_product_attention(q, k, v, mask, dropout_p=1.0)
    assert (
        out.shape == ref.shape and torch.equal(out, torch.zeros_like(out)) and torch.equal(out, ref)
    )
    g = torch.randn_like(out)
    for ours, theirs in zip(
        torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)
    ):
        assert torch.equal(ours, torch.zeros_like(ours)) and torch.equal(ours, theirs)


# ---------------------------------------------------------------------------------------------
# The op contract (op_contract.py): opcheck, compile, gradcheck, no double backward, inputs
# unchanged, empty and non-contiguous inputs, bad dtypes
# ---------------------------------------------------------------------------------------------

OP_CASES = ["plain", "causal", "bool_mask", "float_mask", "gqa", "dropout"]


def _op_case(case, device, dtype, L, S, E, Ev):
    """(q, k, v, mask, is_causal, dropout_p, seed) of an op-level test case, B = 1 or 2, 2 heads."""
    B = 1 if dtype == torch.float64 else 2
    q, k, v = _qkv(device, dtype, (B, 2, L, E), (B, 2, S, E), (B, 2, S, Ev))
    mask, causal, p, seed = None, False, 0.0, None
    if case == "causal":
        causal = True
    elif case == "bool_mask":
        mask = (torch.rand(L, S, device=device) > 0.3).expand(B, 2, L, S)
    elif case == "float_mask":
        mask = torch.randn(B, 2, L, S, device=device, dtype=dtype, requires_grad=True)
    elif case == "gqa":
        q = torch.randn(B, 4, L, E, device=device, dtype=dtype, requires_grad=True)
    elif case == "dropout":
        p, seed = 0.4, torch.tensor(123)
    return q, k, v, mask, causal, p, seed


class TestSdpaContract(OpContract):
    backward_name = "sdpa"

    def fn(self, q, k, v, *mask, **kwargs):
        return FF.scaled_dot_product_attention(q, k, v, *mask, **kwargs)

    def reference(self, q, k, v, *mask, **kwargs):
        return F.scaled_dot_product_attention(q, k, v, *mask, **kwargs)

    def opcheck_samples(self, device, dtype):
        if dtype != torch.float32:
            return []
        samples = []
        for case in OP_CASES:
            q, k, v, mask, causal, p, seed = _op_case(case, device, dtype, 5, 9, 8, 4)
            out, lse = OP(q, k, v, mask, p, causal, 0.5, seed)
            want_mask = mask is not None and mask.dtype != torch.bool
            plain_mask = mask.detach() if mask is not None else None
            samples += [
                Sample([q, k, v, mask, p, causal, 0.5, seed], op=OP, name=case),
                Sample(
                    [
                        torch.randn_like(out),
                        q.detach(),
                        k.detach(),
                        v.detach(),
                        plain_mask,
                        out.detach(),
                        lse,
                        p,
                        causal,
                        0.5,
                        seed,
                        [True, True, True, want_mask],
                    ],
                    op=OP_BACKWARD,
                    name=f"{case}-backward",
                ),
            ]
        return samples

    def compile_samples(self, device):
        q, k, v = _qkv(device, torch.float32, (2, 3, 9, 8), (2, 3, 12, 8), (2, 3, 12, 8))
        mask = torch.rand(9, 12, device=device) > 0.3
        return [
            Sample([q, k, v, mask], name="bool_mask"),
            Sample([q, k, v], dict(is_causal=True, scale=0.2), name="causal"),
        ]

    def gradcheck_samples(self, device):
        samples = []
        for case in OP_CASES:
            q, k, v, mask, causal, p, seed = _op_case(case, device, torch.float64, 5, 7, 3, 4)
            differentiable = mask is not None and mask.requires_grad

            def fn(q, k, v, *m, mask=mask, causal=causal, p=p, seed=seed):
                return OP(q, k, v, m[0] if m else mask, p, causal, None, seed)[0]

            samples.append(Sample([q, k, v] + ([mask] if differentiable else []), fn=fn, name=case))
        return samples

    def double_backward_samples(self, device):
        return self.gradcheck_samples(device)

    def unchanged_samples(self, device, dtype):
        q, k, v = _qkv(device, dtype, (2, 3, 9, 8), (2, 3, 12, 8), (2, 3, 12, 8))
        mask = torch.randn(9, 12, device=device, dtype=dtype, requires_grad=True)
        return [Sample([q, k, v, mask], name="float_mask")]

    def empty_samples(self, device):
        return [
            Sample(
                list(_qkv(device, torch.float32, (B, 2, L, 8), (B, 2, 5, 8), (B, 2, 5, 4))),
                name=f"B{B}L{L}",
            )
            for B, L in ((0, 4), (2, 0))
        ]

    def noncontiguous_samples(self, device, dtype):
        """(B, L, H, E) tensors seen as (B, H, L, E), as multi-head attention passes them."""
        base = [torch.randn(2, n, 3, 16, device=device, dtype=dtype) for n in (11, 13, 13)]
        return [Sample([t.transpose(1, 2).requires_grad_() for t in base], dict(is_causal=True))]

    def bad_dtype_calls(self, device):
        q, k, v = _qkv(device, torch.float32, (2, 4, 5, 8), (2, 4, 7, 8), (2, 4, 7, 6), False)
        sdpa = FF.scaled_dot_product_attention
        return [
            (
                lambda: sdpa(q, k, v, torch.ones(5, 7, dtype=torch.int32, device=device)),
                "attn_mask",
                "dtype",
            ),
            (
                lambda: sdpa(q, k, v, torch.ones(5, 7, dtype=torch.float64, device=device)),
                "attn_mask",
                "dtype",
            ),
            (lambda: sdpa(q.int(), k.int(), v.int()), "query", "float"),
        ]


def test_cpu_autocast_returns_bfloat16_like_torch():
    q, k, v = _qkv("cpu", torch.float32, (2, 3, 9, 8), (2, 3, 12, 8), (2, 3, 12, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = FF.scaled_dot_product_attention(q, k, v)
        ref = F.scaled_dot_product_attention(q, k, v)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)
    ours.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32


@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_runs_in_half(dtype):
    q, k, v = _qkv("cuda", torch.float32, (2, 3, 64, 64), (2, 3, 80, 64), (2, 3, 80, 64))
    with torch.autocast("cuda", dtype=dtype):
        ours = FF.scaled_dot_product_attention(q, k, v)
        ref = F.scaled_dot_product_attention(q, k, v)
    assert ours.dtype == ref.dtype == dtype
    assert_close_to_reference(
        ours,
        F.scaled_dot_product_attention(q.double(), k.double(), v.double()),
        dtype,
        baseline=ref,
    )


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    q, k, v = _qkv(device, torch.float32, (2, 4, 5, 8), (2, 4, 7, 8), (2, 4, 7, 6), False)
    sdpa = FF.scaled_dot_product_attention
    assert_raises_naming(RuntimeError, lambda: sdpa(q[0, 0, 0], k, v), "at least 2 dimensional")
    assert_raises_naming(RuntimeError, lambda: sdpa(q, k[..., :7], v), "key", "E = 8")
    assert_raises_naming(RuntimeError, lambda: sdpa(q, k, v[:, :, :6]), "value", "length")
    assert_raises_naming(RuntimeError, lambda: sdpa(q, k.double(), v), "dtype")
    assert_raises_naming(RuntimeError, lambda: sdpa(q, k[:, :2], v[:, :2]), "enable_gqa")
    assert_raises_naming(
        RuntimeError, lambda: sdpa(q, k[:, :3], v[:, :3], enable_gqa=True), "multiple", "heads"
    )
    assert_raises_naming(
        RuntimeError,
        lambda: sdpa(q, k, v, torch.ones(3, 7, dtype=torch.bool, device=device)),
        "attn_mask",
        "broadcastable",
    )
    assert_raises_naming(
        RuntimeError,
        lambda: sdpa(q, k, v, torch.ones(5, 7, dtype=torch.bool, device=device), is_causal=True),
        "attn_mask",
        "is_causal",
    )
    assert_raises_naming(RuntimeError, lambda: sdpa(q, k, v, dropout_p=1.5), "dropout_p")
    assert_raises_naming(RuntimeError, lambda: sdpa(q, k, v, dropout_p=-0.1), "dropout_p")
    # The op itself: 4-d only, a seed with dropout.
    assert_raises_naming(RuntimeError, lambda: OP(q[0], k[0], v[0]), "4-d")
    assert_raises_naming(RuntimeError, lambda: OP(q, k, v, None, 0.5), "dropout_seed")
    if device == "cuda":
        assert_raises_naming(RuntimeError, lambda: sdpa(q, k.cpu(), v), "key", "device")


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(
    "case", ["plain", "causal", "bool_mask", "float_mask", "gqa", "no_keys_visible"]
)
def test_cuda_tensor_core_forward(device, dtype, head_dim, case):
    """Half types with E == Ev in {64, 128} take the WMMA forward: tails of both tiles (70
    queries, 131 keys), masks, causal, GQA, and rows with every key masked."""
    Hq = 4 if case == "gqa" else 2
    q, k, v = _qkv(
        device, dtype, (2, Hq, 70, head_dim), (2, 2, 131, head_dim), (2, 2, 131, head_dim)
    )
    args, kwargs = [q, k, v], {"enable_gqa": case == "gqa", "is_causal": case == "causal"}
    if case == "bool_mask":
        args.append(torch.rand(70, 131, device=device) > 0.3)
    elif case == "float_mask":
        args.append(torch.randn(2, 1, 70, 131, device=device, dtype=dtype))
    elif case == "no_keys_visible":
        mask = torch.rand(70, 131, device=device) > 0.3
        mask[5] = False
        args.append(mask)
    ours, ref = _both(**kwargs)
    compare_with_torch(ours, ref, args, dtype)


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_tensor_core_forward_dropout_and_strided(device, dtype, head_dim):
    """The tensor-core forward (half types, E == Ev in {64, 128}) with dropout, on (B, L, H, E)
    tensors seen as (B, H, L, E) (the strides of a fused projection's output): the float64
    composition with the same keep mask, and the same seed reproduces it."""
    B, H, L, S, p = 2, 2, 70, 131, 0.25
    keep = _dropout_keep_mask((B, H, L, S), p, 3, device, torch.float64)
    make = lambda n: torch.randn(B, n, H, head_dim, device=device, dtype=dtype).transpose(1, 2)  # noqa: E731
    q, k, v = (make(n).requires_grad_() for n in (L, S, S))
    assert q.stride(-2) == H * head_dim

    def ours(q, k, v):
        torch.manual_seed(3)
        return FF.scaled_dot_product_attention(q, k, v, dropout_p=p)

    def ref(q, k, v):
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        return (torch.softmax(scores, -1) * keep.to(q.dtype)) @ v

    with torch.no_grad():
        out = ours(q, k, v)
        torch.testing.assert_close(out, ours(q, k, v), rtol=0, atol=0)
    assert_close_to_reference(
        out, ref(*(t.double() for t in (q, k, v))), dtype, baseline=ref(q, k, v)
    )


# ---------------------------------------------------------------------------------------------
# Regressions from the differential fuzzer (tests/fuzz)
# ---------------------------------------------------------------------------------------------


def _assert_nans_and_values_as_torch(out, ref, ref64, inputs, inputs64, dtype):
    """fastdl's output ``out`` and its q/k/v gradients against torch's (``ref``, and ``ref64``
    on the float64 copies ``inputs64``): NaN at the same places, the rest close."""
    assert_close_with_nans(out, ref, ref64, dtype)
    g = torch.randn_like(out)
    grads = zip(
        torch.autograd.grad(out, inputs, g),
        torch.autograd.grad(ref, inputs, g),
        torch.autograd.grad(ref64, inputs64, g.double()),
        ("dq", "dk", "dv"),
    )
    for ours, theirs, exact, name in grads:
        assert_close_with_nans(ours, theirs, exact, dtype, name=name)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("where", ["query", "key", "float_mask"])
def test_nan_propagates_as_torch(device, dtype, where):
    """A NaN score makes its row NaN, output and gradients, as torch's softmax (the online
    softmax's row maximum used to drop it and return 0 or a finite mix); other rows stay finite."""
    q, k, v = _qkv(device, dtype, (2, 2, 5, 4), (2, 2, 300, 4), (2, 2, 300, 3), requires_grad=False)
    mask = torch.randn(5, 300, device=device, dtype=dtype) if where == "float_mask" else None
    {"query": q, "key": k, "float_mask": mask}[where].view(-1)[7] = float("nan")
    inputs = [t.requires_grad_() for t in (q, k, v)]
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    mask64 = None if mask is None else mask.double()
    out = FF.scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, mask)
    ref64 = F.scaled_dot_product_attention(*inputs64, mask64)
    assert out.isnan().any() and not out.isnan().all()
    _assert_nans_and_values_as_torch(out, ref, ref64, inputs, inputs64, dtype)


def _tensor_core_forward_launches():
    """How many times the emulator has launched the tensor-core forward kernel."""
    return sum(
        int(line.rsplit("\t", 1)[1])
        for line in torch.ops.fastdl_cudasim._kernel_launches()
        if "forward_tensor_core_kernel" in line
    )


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("where", ["query", "key", "float_mask"])
def test_cuda_tensor_core_forward_nan_propagates(device, dtype, where):
    """The tensor-core forward keeps a NaN score as the CUDA-core one does: a NaN query or mask
    entry makes its row NaN, a NaN key every row of its head (here in the last, partial key
    tile and row block, after finite tiles), output and gradients as torch (backward reads the
    row log-sum-exp it saves, which must be NaN too, not -inf); the rest match torch."""
    q, k, v = _qkv(
        device, dtype, (2, 2, 70, 64), (2, 2, 131, 64), (2, 2, 131, 64), requires_grad=False
    )
    mask = torch.randn(70, 131, device=device, dtype=dtype) if where == "float_mask" else None
    if where == "query":
        q[0, 1, 67, 5] = float("nan")
    elif where == "key":
        k[1, 0, 129, 5] = float("nan")
    else:
        mask[66, 70] = float("nan")
    inputs = [t.requires_grad_() for t in (q, k, v)]
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    before = _tensor_core_forward_launches() if device == "cuda_sim" else 0
    out = FF.scaled_dot_product_attention(q, k, v, mask)
    if device == "cuda_sim":
        assert _tensor_core_forward_launches() == before + 1
    ref = F.scaled_dot_product_attention(q, k, v, mask)
    ref64 = F.scaled_dot_product_attention(*inputs64, None if mask is None else mask.double())
    nan_rows = out.isnan().all(-1)
    assert torch.equal(out.isnan(), nan_rows[..., None].expand_as(out))
    assert nan_rows.sum() == {"query": 1, "key": 70, "float_mask": 4}[where]
    _assert_nans_and_values_as_torch(out, ref, ref64, inputs, inputs64, dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_empty_value_dim_gradients_are_zero(device, dtype):
    """Ev = 0: no output element, so zero gradients, as torch (a NaN or -inf in the inputs
    used to give NaN * 0 = NaN)."""
    q, k, v = _qkv(device, dtype, (3, 6), (9, 6), (9, 0), requires_grad=False)
    q[2, 0] = float("-inf")
    k[1, 3] = -1e30
    inputs = [t.requires_grad_() for t in (q, k, v)]
    out = FF.scaled_dot_product_attention(q, k, v, is_causal=True, scale=2.0)
    assert out.shape == (3, 0)
    for g in torch.autograd.grad(out, inputs, torch.zeros_like(out)):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("device", DEVICES)
def test_causal_with_negative_scale(device):
    """is_causal with a negative scale: each query attends the keys up to its own position, as
    the same limit given as a mask (the fuzzer found torch's is_causal NaN for the first rows
    there when L > S: its -inf fill times the scale is +inf; fastdl never scales the limit)."""
    q = torch.randn(2, 4, 9, 5, dtype=torch.float64, device=device, requires_grad=True)
    k = torch.randn(2, 2, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    v = torch.randn(2, 2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    limit = torch.ones(9, 3, dtype=torch.bool, device=device).tril()
    ours = FF.scaled_dot_product_attention(q, k, v, is_causal=True, scale=-1.0, enable_gqa=True)
    theirs = F.scaled_dot_product_attention(q, k, v, limit, scale=-1.0, enable_gqa=True)
    assert not ours.isnan().any()
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    for a, b in zip(
        torch.autograd.grad(ours, [q, k, v], g), torch.autograd.grad(theirs, [q, k, v], g)
    ):
        torch.testing.assert_close(a, b)
