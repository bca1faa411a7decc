"""fastdl batch_norm's precision against torch: half inputs with float32 parameters, autocast,
and channels whose squares overflow float's range (the op's other tests: test_batch_norm.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from helpers import (
    CUDA_AVAILABLE,
    DEVICES,
    HALF_DTYPES,
    assert_close_to_reference,
    compare_with_torch,
)
from test_batch_norm import MODES, _check_running, _fns, _inputs

FAMILY = "norm"  # the emulator summary counts test cases per op family


# ---------------------------------------------------------------------------------------------
# Half inputs with float32 parameters (mixed precision)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "shape, channels_last",
    [
        ((4, 3, 7), False),
        ((2, 3, 5, 4), False),
        ((2, 3, 5, 4), True),
        ((8, 64, 9, 9), True),
        ((3, 70, 40), False),
        ((300, 37), False),
    ],
)
def test_half_input_float32_params(device, dtype, mode, shape, channels_last):
    """Half inputs with float32 weight, bias and running statistics (mixed precision)."""
    x, w, b, rm, rv, training = _inputs(
        shape, device, dtype, "weight_bias", mode, param_dtype=torch.float32
    )
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    out, ref, ours_args, torch_args = compare_with_torch(*_fns(training), [x, w, b, rm, rv], dtype)
    assert out.dtype == dtype and out.stride() == ref.stride()
    _check_running(ours_args, torch_args, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_input_float32_bias_without_weight(device, dtype):
    """A half input with a float32 bias and no weight: the bias gradient is summed and returned
    in float32 (100 rows of 1000 overflow float16 and round in bfloat16)."""
    x = torch.randn(100, 3, device=device, dtype=dtype, requires_grad=True)
    b = torch.zeros(3, device=device, requires_grad=True)
    out = FF.batch_norm(x, None, None, None, b, training=True)
    out.backward(torch.full((100, 3), 1000.0, device=device, dtype=dtype))
    assert b.grad.dtype == torch.float32
    torch.testing.assert_close(b.grad, torch.full((3,), 100000.0, device=device))


# ---------------------------------------------------------------------------------------------
# Autocast
# ---------------------------------------------------------------------------------------------


def test_autocast_cpu():
    """CPU autocast: batch_norm keeps the input's dtype, as torch's does (no autocast rule; the
    CPU kernels compute a half input in float32); float32 running stats stay float32."""
    x = torch.randn(4, 3, 5)
    xb = x.bfloat16().requires_grad_()
    w, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    trm, trv = rm.clone(), rv.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = FF.batch_norm(xb, rm, rv, w, b, training=True)
        theirs = F.batch_norm(xb.detach(), trm, trv, w.detach(), b.detach(), training=True)
        ours_f32 = FF.batch_norm(x, None, None, w, b, training=True)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert ours_f32.dtype == torch.float32
    assert rm.dtype == rv.dtype == torch.float32
    ref = F.batch_norm(
        xb.detach().double(), None, None, w.detach().double(), b.detach().double(), True
    )
    assert_close_to_reference(ours, ref, torch.bfloat16, baseline=theirs)
    torch.testing.assert_close(rm, trm, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(rv, trv, rtol=1e-3, atol=1e-3)
    ours.float().sum().backward()
    assert xb.grad is not None and xb.grad.dtype == torch.bfloat16
    assert w.grad is not None and w.grad.dtype == torch.float32


def test_autocast_cpu_module_after_conv():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), fnn.BatchNorm2d(3))
    ref = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = model(x), ref(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(model[1].running_mean, ref[1].running_mean, rtol=1e-2, atol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_autocast_cuda(dtype):
    """CUDA autocast: torch's batch_norm keeps the input's dtype; so does fastdl."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3), fnn.BatchNorm2d(3)).cuda()
    ref = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)).cuda()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, 5, 5, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        ours, theirs = model(x), ref(x)
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=2e-2)
    assert model[1].running_mean.dtype == torch.float32
    torch.testing.assert_close(model[1].running_mean, ref[1].running_mean, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# Channels whose squares overflow (from the differential fuzzer): redone in double
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_float32_channel_whose_squares_overflow(device):
    """Found by the differential fuzzer: a float32 channel holding -1e30 (squares past float's
    range) got invstd = 0 and came out as the bias; its sums are now redone in double, giving
    the float64 result (torch's float32 one here)."""
    x = torch.randn(3, 4, 5, device=device)
    x[1, 2, 3] = -1e30
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    rm64, rv64 = rm.double(), rv.double()
    out = FF.batch_norm(x, rm, rv, training=True, momentum=1.0)
    ref = F.batch_norm(x.double(), rm64, rv64, training=True, momentum=1.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rm.double(), rm64, rtol=1e-5, atol=0)
    # channel 2's variance (~1e59) is past float32's range: inf, as float32 rounds it
    assert torch.isinf(rv[2]) and rv64[2] > torch.finfo(torch.float32).max
    keep = torch.tensor([0, 1, 3], device=device)
    torch.testing.assert_close(rv[keep].double(), rv64[keep], rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["planes", "channels_last"])
def test_float32_overflowing_channel_in_other_layouts(device, layout):
    """The double-precision redo of a channel whose squares overflow reads the channel in each
    layout: long planes (inner = 42, the CUDA planar reduction) and channels-last (inner = 1)."""
    x = torch.randn(2, 3, 6, 7, device=device)
    x[1, 1, 4, 5] = 3e28
    x[0, 1, 2, 3] = -2e27
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.randn(3, device=device), torch.randn(3, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    rm64, rv64 = rm.double(), rv.double()
    out = FF.batch_norm(x, rm, rv, w, b, training=True, momentum=0.5)
    ref = F.batch_norm(x.double(), rm64, rv64, w.double(), b.double(), training=True, momentum=0.5)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, 1], b[1].expand_as(out[:, 1]))
    torch.testing.assert_close(rm.double(), rm64, rtol=1e-5, atol=1e-6)
    assert torch.isinf(rv[1]) and rv64[1] > torch.finfo(torch.float32).max
    keep = torch.tensor([0, 2], device=device)
    torch.testing.assert_close(rv[keep].double(), rv64[keep], rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32])
def test_bfloat16_channel_whose_squares_overflow(device, param_dtype):
    """bfloat16 has float32's range, so its float-accumulated statistics overflow as float32's
    do: the kernels redo such a channel in double for bfloat16 too, with bfloat16 or float32
    parameters and running statistics."""
    x = torch.randn(3, 4, 5, device=device)
    x[1, 2, 3] = -1e30
    x = x.bfloat16()
    rm = torch.zeros(4, device=device, dtype=param_dtype)
    rv = torch.ones(4, device=device, dtype=param_dtype)
    rm64, rv64 = rm.double(), rv.double()
    out = FF.batch_norm(x, rm, rv, training=True, momentum=1.0)
    ref = F.batch_norm(x.double(), rm64, rv64, training=True, momentum=1.0)
    assert_close_to_reference(out, ref, torch.bfloat16)
    torch.testing.assert_close(
        rm.double(), rm64, rtol=1e-2 if param_dtype == torch.bfloat16 else 1e-5, atol=1e-6
    )
    assert torch.isinf(rv[2]) and torch.isfinite(rv[[0, 1, 3]]).all()
