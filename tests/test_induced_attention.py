"""fastdl.functional.induced_attention (torch.ops.fastdl.induced_attention_*) against the
pure-PyTorch composition softmax(scale q k^T) v (fastdl.reference.induced_attention_reference):
forward and every gradient over both partitions (few queries with the key axis split and
combined by log-sum-exp; many queries over a short key set), with masks, odd sizes, n < m,
n = 1; the log-sum-exp; fully padded sets; gradcheck; opcheck; torch.compile; bad input."""

from __future__ import annotations

import math

import pytest
import torch

import fastdl
import fastdl.testing
from fastdl.functional import induced_attention, induced_attention_with_lse
from fastdl.reference import induced_attention_reference
from helpers import (
    cuda_devices,
    devices,
    device_dtypes,
    DEVICES,
    assert_close_to_reference,
    assert_close_with_nans,
    assert_raises_naming,
    compare_with_torch,
)
from op_contract import OpContract, Sample

FAMILY = "sets"  # the emulator summary counts test cases per op family

# Every device with every dtype: the CPU kernels take float16/bfloat16 too (computed in float32).
DEVICE_DTYPES = device_dtypes(cpu_half=True)

OP = torch.ops.fastdl.induced_attention_forward

# (batch, heads, L queries, S keys, E, Ev). CPU splits the key axis (flash-decoding) when the
# queries are few and there are 512+ keys per split; 256 keys per chunk; 64 queries per block.
SHAPES = [
    (2, 3, 1, 17, 4, 4),  # n = 1 query
    (2, 2, 5, 37, 8, 8),  # few queries over more keys
    (1, 1, 3, 1500, 4, 4),  # key axis split in 2 (CPU) and combined
    (1, 2, 2, 2100, 5, 3),  # split in 4, odd head dims, Ev != E
    (2, 2, 7, 3, 8, 5),  # many queries over a short key set (L > S)
    (1, 3, 130, 33, 6, 6),  # several query blocks
    (1, 1, 300, 260, 3, 7),  # many queries over two key chunks
    (3, 1, 13, 13, 9, 9),  # L = S, odd
    (2, 2, 1, 1, 4, 4),  # one query, one key
    (1, 2, 5, 300, 40, 72),  # head dims past one warp's 32 lanes, not a multiple of 32
    (1, 1, 70, 20, 64, 64),  # the common 64-wide heads, many queries
]


def _inputs(shape, device, dtype, mask_kind=None, noncontiguous=False):
    B, H, L, S, E, Ev = shape
    if noncontiguous:  # the (batch, n, heads, E) -> (batch, heads, n, E) view the modules make
        q = torch.randn(B, L, H, E, device=device, dtype=dtype).transpose(1, 2)
        k = torch.randn(B, S, H, E, device=device, dtype=dtype).transpose(1, 2)
        v = torch.randn(B, S, H, Ev, device=device, dtype=dtype).transpose(1, 2)
    else:
        q = torch.randn(B, H, L, E, device=device, dtype=dtype)
        k = torch.randn(B, H, S, E, device=device, dtype=dtype)
        v = torch.randn(B, H, S, Ev, device=device, dtype=dtype)
    for t in (q, k, v):
        t.requires_grad_(True)
    mask = None
    if mask_kind == "random":  # sets of different sizes: each keeps at least one key
        mask = torch.rand(B, S, device=device) < 0.4
        mask[:, 0] = False
    elif mask_kind == "tail":  # padding at the end, as a batch of padded sets
        lengths = torch.randint(1, S + 1, (B,))
        mask = torch.arange(S)[None, :] >= lengths[:, None]
        mask = mask.to(device)
    return q, k, v, mask


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", [None, "random", "tail"])
def test_matches_reference(device, dtype, shape, mask_kind):
    q, k, v, mask = _inputs(shape, device, dtype, mask_kind)
    compare_with_torch(
        lambda q, k, v: induced_attention(q, k, v, mask),
        lambda q, k, v: induced_attention_reference(q, k, v, mask),
        [q, k, v],
        dtype,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 2, 3, 1500, 4, 4), (2, 1, 40, 7, 4, 4)], ids=["few", "many"])
def test_log_sum_exp(device, shape):
    q, k, v, mask = _inputs(shape, device, torch.float64, "random")
    out, lse = induced_attention_with_lse(q, k, v, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    assert_close_to_reference(lse, torch.logsumexp(scores, dim=-1), torch.float64, name="lse")
    assert not lse.requires_grad  # the log-sum-exp is not differentiable
    assert_close_to_reference(out, induced_attention_reference(q, k, v, mask), torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 2, 2, 1200, 4, 4), (3, 2, 70, 5, 4, 4)], ids=["few", "many"])
def test_fully_padded_set_gives_zeros(device, shape):
    """A set whose keys are all padding: output 0, lse -inf, zero gradients (documented), and
    the other sets of the batch are unaffected."""
    q, k, v, mask = _inputs(shape, device, torch.float64)
    mask = torch.zeros(shape[0], shape[3], dtype=torch.bool, device=device)
    mask[1] = True
    mask[2, 3:] = True
    out, lse = induced_attention_with_lse(q, k, v, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isneginf(lse[1]).all() and torch.isfinite(lse[[0, 2]]).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.equal(q.grad[1], torch.zeros_like(q.grad[1]))
    assert torch.equal(k.grad[1], torch.zeros_like(k.grad[1])) and torch.equal(
        v.grad[1], torch.zeros_like(v.grad[1])
    )
    assert torch.equal(k.grad[2, :, 3:], torch.zeros_like(k.grad[2, :, 3:]))  # padded keys get none
    compare_with_torch(
        lambda q, k, v: induced_attention(q, k, v, mask),
        lambda q, k, v: induced_attention_reference(q, k, v, mask),
        [q, k, v],
        torch.float64,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_padding_content_never_leaks(device):
    """Padded keys may hold anything, even NaN and inf: results equal those with zeros there."""
    for shape in [(2, 2, 3, 1100, 4, 4), (2, 2, 50, 9, 4, 4)]:
        q, k, v, mask = _inputs(shape, device, torch.float64, "tail")
        k2, v2 = k.detach().clone(), v.detach().clone()
        k2[mask[:, None, :].expand(-1, shape[1], -1)] = float("nan")
        v2[mask[:, None, :].expand(-1, shape[1], -1)] = float("inf")
        for t in (k2, v2):
            t.requires_grad_(True)
        clean = induced_attention(q, k, v, mask)
        dirty = induced_attention(q, k2, v2, mask)
        torch.testing.assert_close(dirty, clean)
        g = torch.randn_like(clean)
        (gq_clean,) = torch.autograd.grad(clean, q, g)
        (gq_dirty,) = torch.autograd.grad(dirty, q, g)
        torch.testing.assert_close(gq_dirty, gq_clean)


# ---------------------------------------------------------------------------------------------
# The op contract (op_contract.py): opcheck, compile, gradcheck, no double backward, inputs
# unchanged, empty and non-contiguous inputs, bad dtypes
# ---------------------------------------------------------------------------------------------


class TestInducedAttentionContract(OpContract):
    backward_name = "induced_attention"

    def fn(self, q, k, v, *, mask=None, scale=None):
        return induced_attention(q, k, v, mask, scale=scale)

    def reference(self, q, k, v, *, mask=None, scale=None):
        return induced_attention_reference(q, k, v, mask, scale=scale)

    def opcheck_samples(self, device, dtype):
        if dtype != torch.float32:
            return []
        samples = []
        for shape, kind in [
            ((2, 2, 3, 5, 4, 4), "random"),
            ((1, 2, 9, 4, 4, 3), None),
            ((1, 1, 2, 1100, 4, 4), "tail"),
        ]:
            q, k, v, mask = _inputs(shape, device, dtype, kind)
            samples += [
                Sample([q, k, v, mask, None], op=OP, name=f"{shape}"),
                Sample(
                    [q.detach(), k.detach(), v.detach(), mask, 0.5], op=OP, name=f"{shape}-scale"
                ),
            ]
        return samples

    def compile_samples(self, device):
        q, k, v, mask = _inputs((2, 2, 9, 5, 4, 4), device, torch.float32, "random")
        return [Sample([q, k, v], fn=lambda q, k, v: induced_attention(q, k, v, mask) * 2)]

    def gradcheck_samples(self, device):
        samples = []
        for name, shape in [
            ("few", (2, 2, 3, 7, 3, 2)),
            ("many", (1, 2, 6, 4, 2, 3)),
            ("split", (1, 1, 2, 1030, 2, 1)),
        ]:
            q, k, v, mask = _inputs(shape, device, torch.float64, "random")
            samples.append(
                Sample(
                    [q, k, v], dict(mask=mask), name=name, options=dict(fast_mode=shape[3] > 100)
                )
            )
        return samples

    def double_backward_samples(self, device):
        q, k, v, _ = _inputs((1, 1, 2, 3, 2, 2), device, torch.float64)
        return [Sample([q, k, v])]

    def unchanged_samples(self, device, dtype):
        q, k, v, mask = _inputs((2, 2, 3, 1100, 4, 4), device, dtype, "random")
        return [Sample([q, k, v], dict(mask=mask))]

    def empty_samples(self, device):
        samples = []
        for B, H, L, S in [(0, 2, 3, 4), (2, 2, 0, 4), (2, 1, 3, 0)]:
            q = torch.randn(B, H, L, 4, device=device, requires_grad=True)
            k = torch.randn(B, H, S, 4, device=device, requires_grad=True)
            v = torch.randn(B, H, S, 5, device=device, requires_grad=True)
            samples.append(Sample([q, k, v], name=f"B{B}H{H}L{L}S{S}"))
        return samples

    def check_more(self, check, sample, out, ref, args, ref_args):
        """No key: output 0 and zero gradients, exactly; the log-sum-exp has the rows' shape."""
        if check != "empty":
            return
        q, k, v = args
        assert torch.equal(out, torch.zeros_like(out))
        assert not q.grad.abs().sum() and not k.grad.abs().sum() and not v.grad.abs().sum()
        out2, lse = induced_attention_with_lse(q, k, v)
        assert out2.shape == out.shape and lse.shape == q.shape[:3]

    def noncontiguous_samples(self, device, dtype):
        samples = []
        for name, shape in [("few", (2, 2, 3, 1100, 8, 8)), ("many", (2, 3, 70, 9, 8, 8))]:
            q, k, v, mask = _inputs(shape, device, dtype, "random", noncontiguous=True)
            samples.append(Sample([q, k, v], dict(mask=mask, scale=0.3), name=name))
        return samples

    def bad_dtype_calls(self, device):
        q, k, v, mask = _inputs((2, 2, 3, 5, 4, 4), device, torch.float32, "random")
        q, k, v = q.detach(), k.detach(), v.detach()
        return [
            (lambda: induced_attention(q, k, v, mask.float()), "key_padding_mask", "bool"),
            (lambda: induced_attention(q.long(), k, v), "query", "float32"),
        ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs(device):
    q, k, v, mask = _inputs((2, 2, 3, 5, 4, 4), device, torch.float32, "random")
    q, k, v = q.detach(), k.detach(), v.detach()
    assert_raises_naming(RuntimeError, lambda: induced_attention(q[0], k, v), "query", "4-d")
    assert_raises_naming(
        RuntimeError, lambda: induced_attention(q, k[:, :, :, :3], v), "key", "(2, 2, S, 4)"
    )
    assert_raises_naming(RuntimeError, lambda: induced_attention(q, k, v[:, :, :4]), "value", "S")
    assert_raises_naming(
        RuntimeError, lambda: induced_attention(q, k, v, mask[:, :4]), "key_padding_mask", "(2, 5)"
    )
    assert_raises_naming(
        RuntimeError, lambda: induced_attention(q, k, v, mask[0]), "key_padding_mask"
    )
    assert_raises_naming(RuntimeError, lambda: induced_attention(q, k.double(), v), "same dtype")
    assert_raises_naming(
        RuntimeError, lambda: induced_attention(q, k, v, scale=float("nan")), "scale"
    )


@pytest.mark.parametrize("device", cuda_devices())
def test_cuda_matches_cpu(device):
    """Long sets (key splits merged by log-sum-exp; many query blocks): CUDA against CPU."""
    for shape in [(1, 2, 3, 5000, 16, 16), (2, 2, 3000, 32, 32, 32)]:
        q, k, v, mask = _inputs(shape, "cpu", torch.float32, "tail")
        with fastdl.testing.outside_cuda_sim():
            out = induced_attention(q, k, v, mask)
        moved = [t.detach().to(device) for t in (q, k, v, mask)]
        torch.testing.assert_close(induced_attention(*moved).cpu(), out, rtol=1e-4, atol=1e-5)


def test_autocast_cpu_runs_in_bfloat16():
    """Under CPU autocast the op runs in the autocast dtype, as torch's attention does: a
    float32 input is rounded to bfloat16, the result (computed in float32) is bfloat16; a MAB
    whose Linear layers autocast works."""
    q, k, v, mask = _inputs((2, 2, 5, 9, 4, 4), "cpu", torch.float32, "random")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = induced_attention(q, k, v, mask)
    assert out.dtype == torch.bfloat16
    ref = induced_attention_reference(
        q.bfloat16().double(), k.bfloat16().double(), v.bfloat16().double(), mask
    )
    assert_close_to_reference(out, ref, torch.bfloat16)
    mab = fastdl.nn.MAB(6, 6, 8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mab(torch.randn(2, 5, 6), torch.randn(2, 7, 6))
    assert torch.isfinite(y).all()


def test_output_layout_merges_heads_for_free():
    q, k, v, _ = _inputs((2, 3, 5, 9, 4, 6), "cpu", torch.float32)
    out = induced_attention(q, k, v)
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("device", devices(("cuda_sim",)))
def test_key_splits_past_the_grid(device):
    """Few queries over many keys want more key splits than the grid's y extent holds (65535 on
    a GPU; 2 on the emulated device): each split takes more keys, then they are merged."""
    import fastdl.testing

    q, k, v, mask = _inputs((1, 2, 3, 1500, 8, 8), device, torch.float32, "tail")
    with fastdl.testing.cuda_sim(max_grid=(0, 2, 2)):
        compare_with_torch(
            lambda q, k, v: induced_attention(q, k, v, mask),
            lambda q, k, v: induced_attention_reference(q, k, v, mask),
            [q, k, v],
            torch.float32,
        )


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_nan_query_propagates_and_padding_gets_no_gradient(device, dtype):
    """Found by the differential fuzzer: a NaN query row is NaN (output and its gradients, as
    the reference), where the online softmax used to return 0; padded keys still get exactly
    zero gradients, also from a NaN row."""
    q = torch.randn(2, 2, 7, 4, device=device, dtype=dtype)
    k = torch.randn(2, 2, 5, 4, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 2, 5, 3, device=device, dtype=dtype, requires_grad=True)
    q[0, 1, 3, 2] = float("nan")
    q.requires_grad_()
    pad = torch.zeros(2, 5, dtype=torch.bool, device=device)
    pad[0, 4] = True
    inputs64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = induced_attention(q, k, v, pad)
    ref = induced_attention_reference(q, k, v, pad)
    ref64 = induced_attention_reference(*inputs64, pad)
    assert out[0, 1, 3].isnan().all() and out.isnan().sum() == 3
    assert_close_with_nans(out, ref, ref64, dtype)
    g = torch.randn_like(out)
    gq, gk, gv = torch.autograd.grad(out, [q, k, v], g)
    rq, rk, rv = torch.autograd.grad(ref, [q, k, v], g)
    eq, ek, ev = torch.autograd.grad(ref64, inputs64, g.double())
    assert_close_with_nans(gq, rq, eq, dtype, name="dq")
    # The reference's padded key 4 of bag 0 gets 0 * NaN = NaN through masked_fill; fastdl's 0.
    present = ~pad[:, None, :, None].expand_as(gk)
    assert_close_with_nans(gk[present], rk[present], ek[present], dtype, name="dk")
    present_v = present[..., :1].expand_as(gv)
    assert_close_with_nans(gv[present_v], rv[present_v], ev[present_v], dtype, name="dv")
    assert torch.equal(gk[0, :, 4], torch.zeros_like(gk[0, :, 4]))
    assert torch.equal(gv[0, :, 4], torch.zeros_like(gv[0, :, 4]))
