"""The histograms on extreme values (±1e30 inputs and centres, widths whose products or squares
overflow float32): the kernel values and every gradient as in float64, where torch's float32
chain rule turns an overflowed product times an underflowed exp into NaN."""

import pytest
import torch

import fastdl.functional as FF
from fastdl.reference import histogram_reference
from helpers import DEVICES

FAMILY = "histogram"  # the emulator summary counts test cases per op family


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bins", [3, 37], ids=["scalar_bins", "vector_bins"])
@pytest.mark.parametrize(
    "case", ["w_times_d_overflows", "w_squared_overflows", "huge_input_and_centre"]
)
def test_rbf_gradients_where_the_kernel_underflows(device, bins, case):
    """rbf: v = exp(-(w d)^2) underflows to 0 and its exact derivatives are below float32's
    range, so both are 0, as the float64 reference gives (the fuzzer found fastdl's width
    gradient NaN there: -2 (w d) * (d v) with w d = inf). Ordinary bins beside the extreme
    one still get their usual gradients, and a NaN input still gives NaN."""
    x = torch.rand(2, 5, 3, dtype=torch.float64) * 2 - 1
    centers = torch.linspace(-1, 1, bins, dtype=torch.float64).repeat(3, 1)
    widths = torch.full((3, bins), float(bins), dtype=torch.float64)
    if case == "w_times_d_overflows":  # d ~ 1e30, w ~ 1e10: w d = inf in float32
        x[0, 1, 0] = 1e30
        widths[0, 1] = 1e10
    elif case == "w_squared_overflows":  # w ~ 1e20: w w = inf in float32, d = O(1)
        widths[2, bins - 1] = 1e20
    else:  # the input and a centre far apart, both ~1e30
        x[1, 2, 2] = 1e30
        centers[2, 0] = -1e30
    x[1, 4, 1] = float("nan")
    grad_out = torch.randn(2, 3, bins, dtype=torch.float64)

    def run(fn, dtype):
        leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, centers, widths)]
        out = fn(*leaves, "rbf")
        grads = torch.autograd.grad(out, leaves, grad_out.to(device=device, dtype=dtype))
        return [t.double().cpu() for t in (out, *grads)]

    expected = run(histogram_reference, torch.float64)
    for dtype in (torch.float32, torch.float64):
        actual = run(FF.histogram, dtype)
        for name, a, e in zip(("out", "x", "centers", "widths"), actual, expected):
            assert torch.equal(a.isnan(), e.isnan()), (dtype, name)
            torch.testing.assert_close(
                a, e, equal_nan=True, rtol=1e-4, atol=1e-5, msg=f"{dtype} {name}"
            )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["sigmoid", "soft", "rbf", "hard"])
def test_nan_centre_with_an_empty_bag(device, kernel):
    """A bag whose elements are all masked out is 0 in every bin, even where a centre is NaN:
    absent elements are never read (the fuzzer found the reference's v * mask = NaN * 0 there;
    the reference now selects, as fastdl's kernels do). The other bag's NaN bin stays NaN."""
    x = torch.rand(2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    centers = torch.linspace(0, 1, 5, dtype=torch.float64).repeat(3, 1)
    centers[1, 2] = float("nan")
    centers = centers.to(device).requires_grad_()
    widths = torch.full(
        (3, 5), 0.3 if kernel in ("sigmoid", "hard") else 4.0, dtype=torch.float64, device=device
    )
    mask = torch.tensor([[True, True, False, True], [False] * 4], device=device)
    out = FF.histogram(x, centers, widths, kernel, mask)
    ref = histogram_reference(x, centers, widths, kernel, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert out[0, 1, 2].isnan() == (kernel != "hard") and out.isnan().sum() == int(kernel != "hard")
    torch.testing.assert_close(out, ref, equal_nan=True)
    gx, gc = torch.autograd.grad(out, [x, centers], torch.ones_like(out))
    assert torch.equal(gx[1], torch.zeros_like(gx[1])) and not gx[0, 2].isnan().any()
    assert gc[0].isfinite().all() and gc[2].isfinite().all()
