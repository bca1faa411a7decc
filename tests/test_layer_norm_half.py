"""fastdl layer_norm in float16/bfloat16 (on the CPU: rows converted to float, computed,
converted back; on CUDA), mixed-precision parameters, and autocast, against torch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from helpers import (
    CUDA_AVAILABLE,
    DEVICES,
    HALF_DTYPES,
    assert_close_to_reference,
    compare_with_torch,
    cuda_devices,
)
from test_layer_norm import AFFINE, OP, SHAPES, _fns, _params

FAMILY = "norm"  # the emulator summary counts test cases per op family


# ---------------------------------------------------------------------------------------------
# float16 / bfloat16 (judged by torch's own error in that dtype against float64)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape, ns", SHAPES, ids=[f"{s}-{n}" for s, n in SHAPES])
@pytest.mark.parametrize("affine", AFFINE)
def test_half_on_cpu(dtype, shape, ns, affine):
    """Half input and parameters on the CPU, forward and every gradient, judged by torch's own
    error in that dtype against a float64 reference (compare_with_torch); the statistics are
    float32 and the output keeps the input's dtype, as torch."""
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    w, b = _params(ns, "cpu", dtype, affine)
    out, mean, rstd = OP(x, ns, w, b, 1e-5)
    assert out.dtype == dtype and mean.dtype == rstd.dtype == torch.float32
    compare_with_torch(*_fns(ns), [x, w, b], dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape, ns", [((3, 5), (5,)), ((2, 3, 7), (3, 7)), ((4, 1030), (1030,))])
def test_half_input_float32_params_on_cpu(dtype, shape, ns):
    """Half inputs with float32 weight and bias (mixed precision) on the CPU: the parameters'
    gradients in float32, as torch."""
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    w, b = _params(ns, "cpu", dtype, "weight_bias", param_dtype=torch.float32)
    out = FF.layer_norm(x, ns, w, b)
    assert out.dtype == dtype
    half_w, half_b = (t.detach().to(dtype).requires_grad_() for t in (w, b))
    compare_with_torch(*_fns(ns), [x, w, b], dtype, baseline_args=[x, half_w, half_b])
    grads = torch.autograd.grad(FF.layer_norm(x, ns, w, b).float().sum(), (w, b))
    assert all(g.dtype == torch.float32 for g in grads)


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape, ns", [((3, 5), (5,)), ((2, 3, 7), (3, 7)), ((4, 1030), (1030,))])
def test_half_input_float32_params_cuda(device, dtype, shape, ns):
    """Half inputs with float32 weight and bias (mixed precision)."""
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    w, b = _params(ns, device, dtype, "weight_bias", param_dtype=torch.float32)
    out = FF.layer_norm(x, ns, w, b)
    assert out.dtype == dtype
    half_w, half_b = (t.detach().to(dtype).requires_grad_() for t in (w, b))
    compare_with_torch(*_fns(ns), [x, w, b], dtype, baseline_args=[x, half_w, half_b])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_input_float32_bias_without_weight(device, dtype):
    """A half input with a float32 bias and no weight: the bias gradient is summed and returned
    in float32 (100 rows of 1000 overflow float16 and round in bfloat16)."""
    x = torch.randn(100, 4, device=device, dtype=dtype, requires_grad=True)
    b = torch.zeros(4, device=device, requires_grad=True)
    FF.layer_norm(x, (4,), None, b).backward(
        torch.full((100, 4), 1000.0, device=device, dtype=dtype)
    )
    assert b.grad.dtype == torch.float32
    torch.testing.assert_close(b.grad, torch.full((4,), 100000.0, device=device))


@pytest.mark.parametrize("device", cuda_devices())
def test_bfloat16_rows_whose_squares_overflow(device):
    """bfloat16 has float32's range, so its float-accumulated statistics overflow as float32's
    do: the CUDA kernel redoes them in double for bfloat16 too (the float64 result, rounded)."""
    x = torch.randn(3, 7, device=device)
    x[1, 2] = 1e30
    x[2, 0] = -3e25
    x = x.bfloat16()
    w, b = torch.randn(7, device=device).bfloat16(), torch.randn(7, device=device).bfloat16()
    out = FF.layer_norm(x, (7,), w, b)
    ref = F.layer_norm(x.double(), (7,), w.double(), b.double())
    assert_close_to_reference(out, ref, torch.bfloat16)
    assert not torch.allclose(out[1], b)


# ---------------------------------------------------------------------------------------------
# Autocast
# ---------------------------------------------------------------------------------------------


def test_autocast_cpu():
    """CPU autocast: like torch (which has no CPU autocast rule for layer_norm), the output
    keeps the input's dtype; fastdl computes half inputs in float32 (layer_norm.cpp)."""
    x = torch.randn(4, 8)
    w, b = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = FF.layer_norm(xb, (8,), w, b)
        y_from_float = FF.layer_norm(x, (8,), w, b)
        y_torch = F.layer_norm(xb.detach(), (8,), w, b)
    assert y.dtype == y_torch.dtype == torch.bfloat16
    assert y_from_float.dtype == torch.float32
    torch.testing.assert_close(y, F.layer_norm(xb.detach().float(), (8,), w, b).bfloat16())
    y.float().sum().backward()
    assert xb.grad is not None and xb.grad.dtype == torch.bfloat16
    assert w.grad is not None and w.grad.dtype == torch.float32


def test_autocast_cpu_after_linear():
    lin = nn.Linear(8, 8)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        assert h.dtype == torch.bfloat16
        y = FF.layer_norm(h, (8,))
        y_torch = F.layer_norm(h, (8,))
    assert y.dtype == y_torch.dtype
    torch.testing.assert_close(y, F.layer_norm(h.float(), (8,)).to(y.dtype))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_autocast_cuda(dtype):
    """CUDA autocast: torch runs layer_norm in float32 and returns float32; so does fastdl."""
    x = torch.randn(4, 8, device="cuda", dtype=dtype)
    w = torch.randn(8, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        ours = FF.layer_norm(x, (8,), w)
        theirs = F.layer_norm(x, (8,), w)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs)
