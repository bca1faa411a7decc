"""fastdl.nn.MultiheadAttention (and the sdpa_weights op behind need_weights) against torch."""

import copy
import math

import pytest
import torch
from torch import nn

import fastdl  # noqa: F401
import fastdl.nn as fnn
from helpers import DEVICES, assert_raises_naming
from op_contract import OpContract, Sample

FAMILY = "attention"  # the emulator summary counts test cases per op family

E, HEADS = 16, 4


def _pair(device, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, HEADS, device=device, dtype=dtype, **kwargs)
    if ref.bias_k is not None:  # torch initialises them with xavier_normal; make them visible
        nn.init.normal_(ref.bias_k)
        nn.init.normal_(ref.bias_v)
    ours = fnn.MultiheadAttention.from_torch(copy.deepcopy(ref))
    return ours, ref


def _inputs(device, dtype, batch_first, L=5, S=7, N=3, kdim=E, vdim=E, batched=True):
    def make(n, d):
        shape = ((N, n, d) if batch_first else (n, N, d)) if batched else (n, d)
        return torch.randn(shape, device=device, dtype=dtype, requires_grad=True)

    return make(L, E), make(S, kdim), make(S, vdim)


def _run(module, inputs, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_() for t in inputs)
    kwargs = {
        k_: (
            t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
        )
        for k_, t in kwargs.items()
    }
    out, weights = module(q, k, v, **kwargs)
    loss = out.square().sum() + (weights.sum() * 0.3 if weights is not None else 0)
    loss.backward()
    grads = [q.grad, k.grad, v.grad] + [p.grad for p in module.parameters()]
    grads += [t.grad for t in kwargs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    return out, weights, grads


def _compare(ours, ref, inputs, **kwargs):
    o1, w1, g1 = _run(ours, inputs, **kwargs)
    o2, w2, g2 = _run(ref, inputs, **kwargs)
    torch.testing.assert_close(o1, o2)
    assert (w1 is None) == (w2 is None)
    if w1 is not None:
        torch.testing.assert_close(w1, w2)
    assert len(g1) == len(g2)
    for i, (a, b) in enumerate(zip(g1, g2)):
        assert (a is None) == (b is None), f"gradient {i}"
        if a is not None:
            torch.testing.assert_close(a, b, msg=lambda m: f"gradient {i}: {m}")


OPTIONS = [
    {},
    {"bias": False},
    {"add_bias_kv": True},
    {"add_zero_attn": True},
    {"add_bias_kv": True, "add_zero_attn": True},
    {"kdim": 6, "vdim": 10},
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
def test_matches_torch(device, options, batch_first, need_weights, average):
    ours, ref = _pair(device, batch_first=batch_first, **options)
    inputs = _inputs(
        device, torch.float64, batch_first, kdim=options.get("kdim", E), vdim=options.get("vdim", E)
    )
    _compare(ours, ref, inputs, need_weights=need_weights, average_attn_weights=average)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_kind", ["bool2d", "float2d", "bool3d", "float3d"])
@pytest.mark.parametrize("padding_kind", [None, "bool", "float"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_masks(device, mask_kind, padding_kind, need_weights):
    ours, ref = _pair(device, batch_first=True)
    N, L, S = 3, 5, 7
    inputs = _inputs(device, torch.float64, True, L=L, S=S, N=N)
    shape = (L, S) if mask_kind.endswith("2d") else (N * HEADS, L, S)
    blocked = torch.rand(shape, device=device) < 0.3
    blocked[..., 0] = False  # every query keeps a key: torch's math path gives NaN otherwise
    attn_mask = (
        blocked
        if mask_kind.startswith("bool")
        else torch.randn(shape, device=device, dtype=torch.float64).masked_fill(
            blocked, float("-inf")
        )
    )
    kwargs = {"attn_mask": attn_mask, "need_weights": need_weights}
    if padding_kind is not None:
        pad = torch.zeros(N, S, dtype=torch.bool, device=device)
        pad[0, -2:] = True
        pad[2, -1] = True
        kwargs["key_padding_mask"] = (
            pad
            if padding_kind == "bool"
            else torch.zeros(N, S, device=device, dtype=torch.float64).masked_fill(
                pad, float("-inf")
            )
        )
        if padding_kind == "bool" and mask_kind.startswith("float"):
            kwargs["key_padding_mask"] = (
                kwargs["key_padding_mask"].to(torch.float64).masked_fill(pad, float("-inf"))
            )
        if padding_kind == "float" and mask_kind.startswith("bool"):
            kwargs["attn_mask"] = torch.zeros(
                shape, device=device, dtype=torch.float64
            ).masked_fill(blocked, float("-inf"))
    _compare(ours, ref, inputs, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_hint(device, need_weights):
    ours, ref = _pair(device, batch_first=True)
    inputs = _inputs(device, torch.float64, True, L=6, S=6)
    causal = nn.Transformer.generate_square_subsequent_mask(6, device=device, dtype=torch.float64)
    _compare(ours, ref, inputs, attn_mask=causal, is_causal=True, need_weights=need_weights)


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_and_self_attention(device):
    ours, ref = _pair(device)
    q = torch.randn(5, E, device=device, dtype=torch.float64)
    _compare(
        ours,
        ref,
        (q, q, q),
        key_padding_mask=torch.tensor([False, False, True, False, False], device=device),
    )
    x = torch.randn(3, 5, E, device=device, dtype=torch.float64)
    ours_bf, ref_bf = _pair(device, batch_first=True)
    _compare(ours_bf, ref_bf, (x, x, x))


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_state_dict_both_ways(device):
    ref = nn.MultiheadAttention(E, HEADS, batch_first=True, device=device)
    ours = fnn.MultiheadAttention(E, HEADS, batch_first=True, device=device)
    ours.load_state_dict(ref.state_dict())
    ref2 = nn.MultiheadAttention(E, HEADS, batch_first=True, device=device)
    ref2.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, E, device=device)
    for a, b in ((ours, ref), (ours, ref2)):
        out_a, w_a = a(x, x, x)
        out_b, w_b = b(x, x, x)
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w_a, w_b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_train_and_eval(device):
    torch.manual_seed(0)
    mha = fnn.MultiheadAttention(E, HEADS, dropout=0.5, batch_first=True, device=device)
    x = torch.randn(2, 8, E, device=device)
    torch.manual_seed(3)
    out1, w1 = mha(x, x, x)
    torch.manual_seed(3)
    out2, w2 = mha(x, x, x)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)  # the same seed, the same mask
    out3, _ = mha(x, x, x)
    assert not torch.allclose(out1, out3)
    # The returned weights carry the same dropout mask as the output: a zero where dropped.
    full = fnn.MultiheadAttention(E, HEADS, dropout=0.5, batch_first=True, device=device)
    full.load_state_dict(mha.state_dict())
    _, w_raw = full(x, x, x, average_attn_weights=False)
    assert (w_raw == 0).float().mean().item() == pytest.approx(0.5, abs=0.1)
    mha.eval()
    e1, _ = mha(x, x, x)
    e2, _ = mha(x, x, x)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)
    ref = nn.MultiheadAttention(E, HEADS, dropout=0.5, batch_first=True, device=device).eval()
    ref.load_state_dict(mha.state_dict())
    torch.testing.assert_close(e1, ref(x, x, x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_convert_and_transformer_encoder_layer(device):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(
        E,
        HEADS,
        dim_feedforward=32,
        dropout=0.0,
        batch_first=True,
        device=device,
        dtype=torch.float64,
    )
    ours = copy.deepcopy(ref)
    report = fnn.convert(ours)
    assert any(new == "MultiheadAttention" for _, _, new in report.swapped)
    assert isinstance(ours.self_attn, fnn.MultiheadAttention)
    x = torch.randn(3, 7, E, device=device, dtype=torch.float64)
    pad = torch.zeros(3, 7, dtype=torch.bool, device=device)
    pad[1, -3:] = True
    # torch's fast path (eval, no grad) skips self_attn.forward; train mode exercises ours.
    ours.train()
    ref.train()
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(t, src_key_padding_mask=pad) for m, t in zip((ours, ref), xs)]
    torch.testing.assert_close(outs[0], outs[1])
    for o in outs:
        o.square().sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad)
    for (name, p), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    mha = fnn.MultiheadAttention(E, HEADS, batch_first=True, device=device)
    x = torch.randn(2, 6, E, device=device)
    assert_raises_naming(
        (RuntimeError, AssertionError),
        lambda: mha(x, x, x, attn_mask=torch.zeros(5, 6, device=device)),
        "attn_mask",
    )
    assert_raises_naming(
        (RuntimeError, AssertionError),
        lambda: mha(x, x, x, key_padding_mask=torch.zeros(2, 5, device=device)),
        "key_padding_mask",
    )
    assert_raises_naming(
        RuntimeError, lambda: mha(x, x, x, is_causal=True), "attn_mask", "is_causal"
    )
    with pytest.raises(AssertionError):
        fnn.MultiheadAttention(10, 3)  # embed_dim must be divisible by num_heads


# ---------------------------------------------------------------------------------------------
# The sdpa_weights op
# ---------------------------------------------------------------------------------------------

WEIGHTS_CASES = ["plain", "causal", "float_mask", "gqa", "dropout"]


def _weights_case(case, device):
    """(q, k, v, mask, is_causal, dropout_p, seed) of an sdpa_weights test case, in float64."""
    q = torch.randn(1, 2, 5, 3, device=device, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 3, device=device, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 3, device=device, dtype=torch.float64)
    mask, causal, p, seed = None, False, 0.0, None
    if case == "causal":
        causal = True
    elif case == "float_mask":
        mask = torch.randn(1, 2, 5, 7, device=device, dtype=torch.float64, requires_grad=True)
    elif case == "gqa":
        q = torch.randn(1, 4, 5, 3, device=device, dtype=torch.float64, requires_grad=True)
    elif case == "dropout":
        p, seed = 0.4, torch.tensor(11)
    return q, k, v, mask, causal, p, seed


def _weights_fn(mask, causal, p, seed, scale=None):
    """f(q, k, [mask]) -> the attention weights, with the forward's log-sum-exp."""

    def fn(q, k, *m):
        m = m[0] if m else mask
        lse = torch.ops.fastdl.sdpa_forward(q, k, k[..., :3], m, p, causal, scale, seed)[1]
        return torch.ops.fastdl.sdpa_weights(q, k, m, p, causal, scale, seed, lse)

    return fn


class TestSdpaWeightsContract(OpContract):
    """The sdpa_weights op (need_weights) and the module's compile; the module's other generic
    behaviour is torch's (test_matches_torch)."""

    backward_name = "sdpa_weights"

    def opcheck_samples(self, device, dtype):
        if dtype != torch.float64:
            return []
        samples = []
        for case in WEIGHTS_CASES:
            q, k, _, mask, causal, p, seed = _weights_case(case, device)
            lse = torch.ops.fastdl.sdpa_forward(q, k, k, mask, p, causal, None, seed)[1]
            samples.append(
                Sample(
                    [q, k, mask, p, causal, None, seed, lse],
                    op=torch.ops.fastdl.sdpa_weights,
                    name=case,
                )
            )
        return samples

    def compile_samples(self, device):
        mha = fnn.MultiheadAttention(E, HEADS, batch_first=True, device=device)
        x = torch.randn(2, 6, E, device=device, requires_grad=True)
        return [Sample([x, x, x], fn=mha, options=dict(rtol=1e-4, atol=1e-5), name="module")]

    def gradcheck_samples(self, device):
        samples = []
        for case in WEIGHTS_CASES:
            q, k, _, mask, causal, p, seed = _weights_case(case, device)
            samples.append(
                Sample(
                    [q, k] + ([mask] if mask is not None else []),
                    fn=_weights_fn(mask, causal, p, seed),
                    name=case,
                )
            )
        return samples

    def double_backward_samples(self, device):
        return self.gradcheck_samples(device)

    def empty_samples(self, device):
        """No head, no query, no key: the weights' shape, gradients of the inputs' shapes."""
        samples = []
        for q_shape, k_shape in (
            ((1, 0, 4, 3), (1, 0, 5, 3)),
            ((2, 2, 0, 3), (2, 2, 5, 3)),
            ((2, 2, 4, 3), (2, 2, 0, 3)),
        ):
            q = torch.randn(q_shape, device=device, requires_grad=True)
            k = torch.randn(k_shape, device=device, requires_grad=True)
            samples.append(
                Sample(
                    [q, k],
                    fn=_weights_fn(None, False, 0.0, None, scale=1.0),
                    ref=lambda q, k: torch.softmax(q @ k.transpose(-1, -2), -1),
                    name=f"{q_shape}{k_shape}",
                )
            )
        return samples


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", WEIGHTS_CASES)
def test_weights_op_rows_and_fused_output(device, case):
    """Rows sum to one without dropout; P @ V equals the fused output."""
    q, k, v, mask, causal, p, seed = _weights_case(case, device)
    extra = [mask] if mask is not None else []
    w = _weights_fn(mask, causal, p, seed)(q, k, *extra)
    out = torch.ops.fastdl.sdpa_forward(q, k, v, mask, p, causal, None, seed)[0]
    torch.testing.assert_close(w @ v.repeat_interleave(q.shape[1] // k.shape[1], 1), out)
    if p == 0:
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["bool_mask", "causal"])
def test_weights_op_nan_query_row(device, case):
    """A NaN query makes its row of the weights NaN, keys masked by a bool mask or is_causal
    included, as torch's softmax (the CUDA probabilities kernel gave such keys 0 in a NaN row,
    the CPU kernel NaN); the other rows match."""
    q = torch.randn(1, 2, 5, 3, device=device, dtype=torch.float64)
    k = torch.randn(1, 2, 7, 3, device=device, dtype=torch.float64)
    q[0, 1, 2, 0] = float("nan")
    causal = case == "causal"
    keep = torch.ones(5, 7, dtype=torch.bool, device=device).tril()
    if not causal:
        keep = torch.rand(5, 7, device=device) > 0.3
        keep[:, 0] = True
        keep[2, 1:] = torch.tensor([False, True, False, True, True, False])
    mask = None if causal else keep.expand(1, 2, 5, 7)
    lse = torch.ops.fastdl.sdpa_forward(q, k, k, mask, 0.0, causal, None, None)[1]
    w = torch.ops.fastdl.sdpa_weights(q, k, mask, 0.0, causal, None, None, lse)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(3)
    ref = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1)
    assert w[0, 1, 2].isnan().all() and w.isnan().sum() == 7
    assert torch.equal(w.isnan(), ref.isnan())
    torch.testing.assert_close(w, ref, equal_nan=True)


def test_cpu_autocast_with_masks_and_weights():
    """Under CPU autocast the projections come out bfloat16 while the masks stay float32; the
    fused output and the weights both run (in float32 kernels) and return bfloat16, as torch."""
    ours, ref = _pair("cpu", dtype=torch.float32, batch_first=True)
    x = torch.randn(2, 6, E)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, -2:] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, w = ours(x, x, x, key_padding_mask=pad)
        out_ref, w_ref = ref(x, x, x, key_padding_mask=pad)
    assert out.dtype == out_ref.dtype and w.dtype == w_ref.dtype
    torch.testing.assert_close(out.float(), out_ref.float(), rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(w.float(), w_ref.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("average", [True, False])
def test_need_weights_half(device, dtype, average):
    """need_weights in half precision: the weights rows (sdpa_weights' row kernels) and
    the output, against torch within twice torch's own half error of a float64 reference."""
    from helpers import assert_close_to_reference

    ours, ref = _pair(device, torch.float64)
    q, k, v = _inputs(device, torch.float64, False, L=9, S=40)
    out64, w64 = ref(q, k, v, need_weights=True, average_attn_weights=average)
    ours, ref = ours.to(dtype), ref.to(dtype)
    qh, kh, vh = (t.detach().to(dtype) for t in (q, k, v))
    out, weights = ours(qh, kh, vh, need_weights=True, average_attn_weights=average)
    base_out, base_w = ref(qh, kh, vh, need_weights=True, average_attn_weights=average)
    assert out.dtype == weights.dtype == dtype
    assert_close_to_reference(out, out64.detach(), dtype, baseline=base_out, name="output")
    assert_close_to_reference(weights, w64.detach(), dtype, baseline=base_w, name="weights")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_kind", ["key_padding", "causal"])
def test_need_weights_nan_query_rows(device, mask_kind):
    """A NaN query makes its rows of the attention weights NaN, masked keys included, as torch's
    (the weights are exp(s - lse) with the forward's row log-sum-exp, which must be NaN, not
    -inf); the other rows, the output and its gradients match torch."""
    ours, ref = _pair(device, batch_first=True)
    q, k, v = _inputs(device, torch.float64, batch_first=True)
    with torch.no_grad():
        q[1, 2, 0] = float("nan")
    if mask_kind == "key_padding":
        pad = torch.zeros(3, 7, dtype=torch.bool, device=device)
        pad[1, 5] = True
        kwargs = {"key_padding_mask": pad}
    else:
        kwargs = {"attn_mask": torch.ones(5, 7, dtype=torch.bool, device=device).triu(1)}
    o1, w1, g1 = _run(ours, [q, k, v], average_attn_weights=False, **kwargs)
    o2, w2, g2 = _run(ref, [q, k, v], average_attn_weights=False, **kwargs)
    assert w1[1, :, 2].isnan().all() and not w1.isnan().all()
    assert torch.equal(w1.isnan(), w2.isnan())
    torch.testing.assert_close(w1, w2, equal_nan=True)
    torch.testing.assert_close(o1, o2, equal_nan=True)
    assert torch.equal(g1[0].isnan(), g2[0].isnan())
    torch.testing.assert_close(g1[0], g2[0], equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("average", [True, False])
def test_need_weights_gradients_of_saturated_rows(device, average):
    """Large scores (softmax rows near one-hot): the weights' float32 gradients stay within a
    few ulp of the scores' size of the float64 ones. (The weights were exp(s - lse) with the
    fused forward's lse, a few ulp of |s| from their own scores, so rows summed to 1 + 1e-4
    and the softmax backward of a saturated row gave noise of that size; found by the
    differential fuzzer, MultiheadAttention case 690.)"""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(6, 3, bias=False, kdim=5, vdim=2, batch_first=True).to(device)
    ours = fnn.MultiheadAttention.from_torch(copy.deepcopy(ref))
    ref64 = copy.deepcopy(ref).double()
    q, k = torch.randn(3, 4, 6, device=device) * 30, torch.randn(3, 5, 5, device=device) * 30
    v = torch.randn(3, 5, 2, device=device)
    grads = []
    for m, dtype in ((ours, torch.float32), (ref64, torch.float64)):
        args = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out, weights = m(*args, need_weights=True, average_attn_weights=average)
        g = torch.Generator(device=device).manual_seed(1)
        gos = [
            torch.randn(t.shape, generator=g, device=device, dtype=torch.float64).to(dtype)
            for t in (out, weights)
        ]
        grads.append(torch.autograd.grad([out, weights], args[:2], gos))
    for a, e in zip(*grads):
        assert (a.double() - e).abs().max() <= 1e-4 * e.abs().max() + 1e-5
