"""fastdl histogram in float16/bfloat16 on the CPU (computed and summed in float32, the output
in x's dtype), half x with float32 parameters, and autocast (the op's other tests:
test_histogram.py)."""

import pytest
import torch

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from fastdl.reference import histogram_reference
from helpers import HALF_DTYPES, compare_with_torch
from test_histogram import CASES, KERNELS, _fns, _inputs, _run_case

FAMILY = "histogram"  # the emulator summary counts test cases per op family

# ---------------------------------------------------------------------------------------------
# float16 / bfloat16 on the CPU: computed and summed in float32, the output in x's dtype
# (judged by the reference's own error in that dtype against float64: compare_with_torch)
# ---------------------------------------------------------------------------------------------

# Bins past the vector widths with tails (33, 300), odd sizes, masks with an empty bag, sums,
# shared parameters, unbatched x.
HALF_CASES = [
    "basic",
    "mask_sum",
    "odd",
    "shared_mask_sum",
    "unbatched_mask",
    "B1",
    "wide",
    "bins300",
    "sharpness20",
]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", HALF_CASES)
def test_half_on_cpu(dtype, kernel, case):
    out, ref, (_, c, w), _ = _run_case("cpu", dtype, kernel, CASES[case])
    assert out.dtype == ref.dtype == dtype and out.is_contiguous()
    assert c.grad.dtype == w.grad.dtype == dtype


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_half_x_float32_parameters_on_cpu(dtype, kernel):
    """Half x with float32 centres and widths (a float32 layer on half features): the output
    in x's dtype, the parameters' gradients in float32, as on CUDA."""
    x, c, w, mask = _inputs(kernel, 3, 13, 5, 37, "cpu", dtype, mask=True)
    c32, w32 = (t.detach().float().requires_grad_() for t in (c, w))
    ours, ref = _fns(kernel, mask)
    out = ours(x, c32, w32)
    assert out.dtype == dtype
    compare_with_torch(ours, ref, [x, c32, w32], dtype, baseline_args=[x, c, w])
    grads = torch.autograd.grad(ours(x, c32, w32).float().sum(), (c32, w32))
    assert all(g.dtype == torch.float32 for g in grads)


def test_half_sums_in_float32():
    """300 elements in one bin of the hard kernel: a bfloat16 running sum stops at 256 (its
    spacing there is 2, so + 1 rounds back); the float32 one reaches 300, and the mean is 1."""
    x = torch.full((1, 300, 1), 0.5, dtype=torch.bfloat16, requires_grad=True)
    c = torch.tensor([0.5, 3.0], dtype=torch.bfloat16)
    w = torch.tensor([0.25, 0.25], dtype=torch.bfloat16)
    out = FF.histogram(x, c, w, "hard", normalize=False)
    assert out.tolist() == [[[300.0, 0.0]]]
    assert FF.histogram(x, c, w, "hard").tolist() == [[[1.0, 0.0]]]


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_autocast_cpu_keeps_dtype(x_dtype):
    """No autocast rule, as the reference's ops (sigmoid, exp, relu, sum) have none on the
    CPU: under CPU autocast the output has x's dtype, the same as outside it."""
    x, c, w, mask = _inputs("rbf", 2, 9, 3, 20, "cpu", x_dtype, mask=True)
    outside = FF.histogram(x, c, w, "rbf", mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = FF.histogram(x, c, w, "rbf", mask)
        ref = histogram_reference(x, c, w, "rbf", mask)
    assert out.dtype == ref.dtype == x_dtype
    assert torch.equal(out, outside)
    (gx,) = torch.autograd.grad(out.float().sum(), x)
    assert gx.dtype == x_dtype
