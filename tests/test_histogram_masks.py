"""fastdl histogram's masks, empty bags, NaN inputs and invariances, and the hard kernel (an
indicator forward, HistNetQ's surrogate backward), against fastdl.reference.histogram_reference
(the soft kernels' values and gradients: test_histogram.py)."""

import pytest
import torch

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from fastdl.reference import histogram_reference
from helpers import (
    DEVICES,
    compare_with_torch,
)

from test_histogram import HARD_SLOPE, KERNELS, _fns, _inputs

FAMILY = "histogram"  # the emulator summary counts test cases per op family


# ---------------------------------------------------------------------------------------------
# Masks, empty bags, invariances
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("normalize", [True, False], ids=["mean", "sum"])
def test_empty_bag_gives_zeros(device, kernel, normalize):
    """A bag with no present element: exactly zero output and exactly zero gradients (no NaN
    from 0/0), in both a batched and an unbatched call."""
    x, c, w, _ = _inputs(kernel, 3, 5, 4, 6, device, torch.float32)
    mask = torch.tensor([[False] * 5, [True, False, True, True, False], [False] * 5], device=device)
    out = FF.histogram(x, c, w, kernel, mask, normalize)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(
        out[2], torch.zeros_like(out[2])
    )
    out.backward(torch.randn_like(out))
    for t in (x, c, w):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(x.grad[0], torch.zeros_like(x.grad[0]))
    assert torch.equal(x.grad[:, [1, 4]], torch.zeros_like(x.grad[:, [1, 4]]))  # masked everywhere
    xu = x[0].detach().requires_grad_()
    out = FF.histogram(
        xu,
        c.detach(),
        w.detach(),
        kernel,
        torch.zeros(5, dtype=torch.bool, device=device),
        normalize,
    )
    assert out.shape == (4, 6) and torch.equal(out, torch.zeros_like(out))
    out.backward(torch.ones_like(out))
    assert torch.equal(xu.grad, torch.zeros_like(xu))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("normalize", [True, False], ids=["mean", "sum"])
def test_padding_does_not_count(device, kernel, normalize):
    """A padded bag under a mask gives the histogram of its present elements, whatever the
    padding holds (here values right at the kinks and far outside [0, 1]), and the padding
    gets zero gradient."""
    x, c, w, _ = _inputs(kernel, 1, 5, 3, 4, device, torch.float64)
    pad = torch.stack(
        [
            c.detach()[:, 0],
            (c - w).detach()[:, 1],
            torch.full((3,), 1e6, device=device, dtype=torch.float64),
        ]
    )
    padded = torch.cat([x.detach()[:, :2], pad[None], x.detach()[:, 2:]], dim=1).requires_grad_()
    mask = torch.tensor([[True, True, False, False, False, True, True, True]], device=device)
    out = FF.histogram(padded, c, w, kernel, mask, normalize)
    expected = FF.histogram(x, c, w, kernel, None, normalize)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    assert torch.equal(padded.grad[:, 2:5], torch.zeros_like(padded.grad[:, 2:5]))
    torch.testing.assert_close(padded.grad[:, mask[0]], x.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_non_finite_padding_does_not_count(device, kernel):
    """Padding under a mask is never read: NaN and inf there leave the result finite (the
    reference multiplies by the mask, so it gives NaN here; fastdl skips absent elements)."""
    x, c, w, _ = _inputs(kernel, 2, 5, 3, 4, device, torch.float32)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5], device=device)
    padded = x.detach().clone()
    padded[0, 3], padded[0, 4] = float("nan"), float("inf")
    padded.requires_grad_()
    out = FF.histogram(padded, c, w, kernel, mask)
    torch.testing.assert_close(out[0], FF.histogram(x[0, :3], c, w, kernel))
    out.backward(torch.ones_like(out))
    assert (
        torch.isfinite(padded.grad).all()
        and torch.isfinite(c.grad).all()
        and torch.isfinite(w.grad).all()
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bins", [3, 37], ids=["scalar_bins", "vector_bins"])
@pytest.mark.parametrize("where", ["x", "centers"])
def test_nan_input_propagates_as_reference(device, dtype, kernel, bins, where):
    """A NaN element gives the reference's result: NaN in every bin of its feature for the
    sigmoid, soft and rbf kernels, not counted by the hard one; with the reference's gradient
    NaN positions (its hard-kernel NaN gradients are torch.where's artifact: 0 here). Both the
    vectorised bins and the scalar tail (fewer bins than a vector) were checked; the fuzzer
    found float32's vectorised exp turning a NaN centre into 0 (sigmoid) or inf (rbf)."""
    x, c, w, _ = _inputs(kernel, 2, 5, 3, bins, device, dtype)
    x, c = x.detach().clone(), c.detach().clone()
    if where == "x":
        x[0, 1, 2] = float("nan")
    else:
        c[2, 1] = float("nan")
    x.requires_grad_()
    c.requires_grad_()
    out = FF.histogram(x, c, w, kernel)
    ref = histogram_reference(x, c, w, kernel)
    assert torch.equal(out.isnan(), ref.isnan())
    if where == "x":
        assert out[0, 2].isnan().all() == (kernel != "hard") and not out[1].isnan().any()
    else:
        assert out[:, 2, 1].isnan().all() == (kernel != "hard") and out.isnan().sum() == (
            0 if kernel == "hard" else 2
        )
    torch.testing.assert_close(out, ref, equal_nan=True)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, c, w], g)
    theirs = torch.autograd.grad(ref, [x, c, w], g)
    for name, a, b in zip(("x", "centers", "widths"), ours, theirs):
        if kernel == "hard":  # 0 where the reference has torch.where's NaN, equal elsewhere
            assert not a.isnan().any(), name
            b = torch.where(b.isnan(), torch.zeros_like(b), b) if name == where == "x" else b
            if name != "x" or where != "x":
                torch.testing.assert_close(a[b.isfinite()], b[b.isfinite()], msg=name)
                continue
        assert torch.equal(a.isnan(), b.isnan()), name
        torch.testing.assert_close(a, b, equal_nan=True, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_permutation_invariant(device, kernel):
    x, c, w, mask = _inputs(
        kernel, 3, 9, 4, 5, device, torch.float64, mask=True, requires_grad=False
    )
    perm = torch.randperm(9, device=device)
    torch.testing.assert_close(
        FF.histogram(x[:, perm], c, w, kernel, mask[:, perm]), FF.histogram(x, c, w, kernel, mask)
    )


# ---------------------------------------------------------------------------------------------
# The hard kernel: forward an indicator, backward HistNetQ's surrogate
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", [True, False], ids=["mean", "sum"])
def test_hard_closed_form(device, normalize):
    """Forward: (the share of) elements with |d| < w. Gradients: those of 1.01**(w - |d|) on
    the same support, written out here in float64 (checks the reference as well)."""
    x, c, w, mask = _inputs("hard", 3, 6, 4, 5, device, torch.float64, mask=True)
    g = torch.randn(3, 4, 5, device=device, dtype=torch.float64)
    out = FF.histogram(x, c, w, "hard", mask, normalize)
    out.backward(g)
    d = x.detach()[..., None] - c.detach()  # (bags, N, F, B)
    inside = (d.abs() < w.detach()) & mask[:, :, None, None]
    count = (
        mask.sum(1).clamp(min=1).double()[:, None, None]
        if normalize
        else torch.ones(3, 1, 1, device=device, dtype=torch.float64)
    )
    torch.testing.assert_close(out.detach(), inside.double().sum(1) / count, rtol=0, atol=1e-15)
    slope = torch.where(inside, HARD_SLOPE * 1.01 ** (w.detach() - d.abs()), torch.zeros_like(d))
    gs = slope * (g / count)[:, None]  # d out / d w for each (bag, element, feature, bin)
    torch.testing.assert_close(w.grad, gs.sum((0, 1)), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(x.grad, -(gs * d.sign()).sum(-1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(c.grad, (gs * d.sign()).sum((0, 1)), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_hard_gradient_is_a_surrogate(device):
    """gradcheck cannot validate "hard": its forward is piecewise constant (away from the jumps
    a finite difference is exactly zero) and its backward is, by design, HistNetQ's surrogate.
    So: the forward does not move under small perturbations, the gradients are nonzero and
    equal the reference's straight-through surrogate in float64 (tight), and gradcheck
    rejects them (the surrogate is not the derivative)."""
    x, c, w, mask = _inputs("hard", 2, 5, 3, 4, device, torch.float64, mask=True)
    fn, ref = _fns("hard", mask)
    out = fn(x, c, w)
    for dx, dc, dw in ((1e-5, 0, 0), (0, 1e-5, 0), (0, 0, 1e-5)):  # well inside MARGIN
        torch.testing.assert_close(fn(x + dx, c + dc, w + dw), out, rtol=0, atol=0)
    grads = torch.autograd.grad(fn(x, c, w).sum(), (x, c, w))
    assert all(g.abs().sum() > 0 for g in grads)
    compare_with_torch(fn, ref, [x, c, w], torch.float64)
    assert not torch.autograd.gradcheck(fn, (x, c, w), raise_exception=False)
