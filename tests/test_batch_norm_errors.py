"""fastdl batch_norm on bad and awkward input: clear errors naming the argument (running statistics
left unchanged), degenerate statistics (one value per channel, a large mean with a small spread)
and unusual layouts (strided weights, ambiguous channels-last strides); the op's values and
gradients: test_batch_norm.py."""

import pytest
import torch
import torch.nn.functional as F

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from helpers import (
    CUDA_AVAILABLE,
    DEVICES,
    assert_raises_naming,
    assert_unchanged,
    compare_with_torch,
)

from test_batch_norm import MODES, OP, OP_BACKWARD, _fns

FAMILY = "norm"  # the emulator summary counts test cases per op family


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bad_rank(device):
    for x in (torch.randn(3, device=device), torch.tensor(1.0, device=device)):
        assert_raises_naming(
            RuntimeError, lambda: FF.batch_norm(x, None, None, training=True), "input", "(N, C)"
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_bad_parameter_shape(device, name):
    x = torch.randn(4, 3, 5, device=device)
    args = dict(
        weight=torch.ones(3, device=device),
        bias=torch.zeros(3, device=device),
        running_mean=torch.zeros(3, device=device),
        running_var=torch.ones(3, device=device),
    )
    args[name] = torch.ones(4, device=device)
    assert_raises_naming(
        RuntimeError, lambda: FF.batch_norm(x, training=True, **args), name, "[3]", "[4]"
    )
    args[name] = torch.ones(1, 3, device=device)
    assert_raises_naming(
        RuntimeError, lambda: FF.batch_norm(x, training=False, **args), name, "[3]"
    )


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_bad_parameter_device(name):
    x = torch.randn(4, 3, 5, device="cuda")
    args = dict(
        weight=torch.ones(3, device="cuda"),
        bias=torch.zeros(3, device="cuda"),
        running_mean=torch.zeros(3, device="cuda"),
        running_var=torch.ones(3, device="cuda"),
    )
    args[name] = args[name].cpu()
    assert_raises_naming(
        RuntimeError, lambda: FF.batch_norm(x, training=True, **args), name, "device"
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("other", ["running_mean", "weight"])
def test_mixed_parameter_dtypes_rejected(device, other):
    """A half input's parameters and running statistics share one dtype (all the input's, or
    all float32), as torch requires."""
    x = torch.randn(4, 3, 5, device=device, dtype=torch.bfloat16)
    args = dict(
        weight=torch.ones(3, device=device),
        bias=torch.zeros(3, device=device),
        running_mean=torch.zeros(3, device=device),
        running_var=torch.ones(3, device=device),
    )
    args[other] = args[other].bfloat16()
    assert_raises_naming(
        RuntimeError, lambda: FF.batch_norm(x, training=True, **args), "share one dtype"
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)])
def test_training_with_one_value_per_channel(device, shape):
    """torch raises ValueError here; so does fastdl (functional and modules)."""
    x = torch.randn(shape, device=device)
    assert_raises_naming(
        ValueError, lambda: F.batch_norm(x, None, None, training=True), "value per channel"
    )
    assert_raises_naming(
        ValueError, lambda: FF.batch_norm(x, None, None, training=True), "value per channel"
    )
    module = {2: fnn.BatchNorm1d, 3: fnn.BatchNorm1d, 4: fnn.BatchNorm2d, 5: fnn.BatchNorm3d}[
        len(shape)
    ]
    assert_raises_naming(ValueError, lambda: module(3).to(device)(x), "value per channel")


@pytest.mark.parametrize("device", DEVICES)
def test_running_mean_without_running_var(device):
    x = torch.randn(4, 3, device=device)
    s = torch.zeros(3, device=device)
    for training in (True, False):
        assert_raises_naming(
            ValueError,
            lambda: FF.batch_norm(x, s, None, training=training),
            "running_mean",
            "running_var",
        )
        assert_raises_naming(
            ValueError,
            lambda: FF.batch_norm(x, None, s, training=training),
            "running_mean",
            "running_var",
        )


@pytest.mark.parametrize("device", DEVICES)
def test_eval_without_running_stats(device):
    x = torch.randn(4, 3, device=device)
    assert_raises_naming(
        RuntimeError, lambda: FF.batch_norm(x, None, None, training=False), "running_mean"
    )


@pytest.mark.parametrize("device", DEVICES)
def test_bad_momentum_and_eps(device):
    x = torch.randn(4, 3, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    for m in (float("nan"), float("inf")):
        assert_raises_naming(
            RuntimeError, lambda: FF.batch_norm(x, rm, rv, training=True, momentum=m), "momentum"
        )
    for e in (-1.0, float("nan"), float("inf")):
        assert_raises_naming(
            RuntimeError, lambda: FF.batch_norm(x, rm, rv, training=True, eps=e), "eps"
        )
    assert torch.equal(rm, torch.zeros(3, device=device)) and torch.equal(
        rv, torch.ones(3, device=device)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_bad_input(device):
    x = torch.randn(4, 3, 5, device=device)
    _, mean, invstd = OP(x, None, None, None, None, True, 0.1, 1e-5)
    g = torch.randn_like(x)
    mask = [True, False, False]
    assert_raises_naming(
        RuntimeError, lambda: OP_BACKWARD(g[:2], x, None, mean, invstd, True, mask), "grad_output"
    )
    assert_raises_naming(
        RuntimeError,
        lambda: OP_BACKWARD(g.double(), x, None, mean, invstd, True, mask),
        "grad_output",
    )
    assert_raises_naming(
        RuntimeError, lambda: OP_BACKWARD(g, x, None, mean[:2], invstd, True, mask), "save_mean"
    )
    assert_raises_naming(
        RuntimeError,
        lambda: OP_BACKWARD(g, x, torch.ones(2, device=device), mean, invstd, True, mask),
        "weight",
    )


def test_bad_input_leaves_running_stats_unchanged():
    """A rejected call does not half-update running statistics."""
    x = torch.randn(4, 3)
    rm, rv = torch.zeros(3), torch.ones(3)
    assert_unchanged(
        [x, rm, rv],
        lambda: pytest.raises(RuntimeError, FF.batch_norm, x, rm, rv, torch.ones(4), None, True),
    )
    assert_unchanged(
        [rm, rv],
        lambda: pytest.raises(
            ValueError, FF.batch_norm, torch.randn(1, 3), rm, rv, None, None, True
        ),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_large_mean_small_spread(device, mode, channels_last):
    """|mean| / std = 10^4 in float32: the normalisation is centred ((x - mean) * k), so output
    and gradients keep torch's accuracy where x * k + (b - mean * k) would cancel ~4 digits."""
    x = 100 + 0.01 * torch.randn(4, 3, 16, 16, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.rand(3, device=device).add_(0.5).requires_grad_()
    b = torch.randn(3, device=device).requires_grad_()
    rm = rv = None
    if mode != "train_no_running":
        rm = x.detach().mean((0, 2, 3)) + 0.001 * torch.randn(3, device=device)
        rv = x.detach().var((0, 2, 3))
    compare_with_torch(*_fns(mode != "eval"), [x, w, b, rm, rv], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_weight(device):
    """A non-contiguous weight (a slice with stride 2) gives the gradients of the same weight
    contiguous, checked against the equations. (The differential fuzzer found torch 2.14's CPU
    batch_norm backward wrong here: it reads the strided weight as contiguous.)"""
    x = torch.randn(3, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, device=device, dtype=torch.float64)[1::2].detach().requires_grad_()
    g = torch.randn(3, 5, device=device, dtype=torch.float64)
    gx, gw = torch.autograd.grad(FF.batch_norm(x, None, None, w, None, True), [x, w], g)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    ref = (x - mean) / torch.sqrt(var + 1e-5) * w
    rx, rw = torch.autograd.grad(ref, [x, w], g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_ambiguous_channels_last_strides(device, training):
    """An input that passes as channels-last only through a size-1 dim's free stride
    ((25, 1, 5, 5) for (6, 5, 1, 5)) with an NCHW output gradient gives the gradients of the
    equations. (The differential fuzzer found torch 2.14's CPU backward wrong here, cases 311,
    406, 786 and 1068.)"""
    opts = dict(device=device, dtype=torch.float64)
    x = torch.randn(6, 5, 1, 5, **opts).transpose(1, 3).detach().requires_grad_()
    assert x.stride() == (25, 1, 5, 5)
    w, b = (torch.randn(5, **opts).requires_grad_() for _ in range(2))
    rm, rv = torch.randn(5, **opts), torch.rand(5, **opts) + 0.5
    g = torch.randn(6, 5, 1, 5, **opts)
    got = torch.autograd.grad(
        FF.batch_norm(x, rm.clone(), rv.clone(), w, b, training), [x, w, b], g
    )
    mean = x.mean((0, 2, 3)) if training else rm
    var = x.var((0, 2, 3), unbiased=False) if training else rv
    ref = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5) * w[:, None, None] + b[
        :, None, None
    ]
    for a, e in zip(got, torch.autograd.grad(ref, [x, w, b], g)):
        torch.testing.assert_close(a, e)
