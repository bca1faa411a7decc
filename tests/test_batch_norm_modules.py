"""fastdl.nn.BatchNorm1d/2d/3d against torch.nn.BatchNorm1d/2d/3d: construction, training steps,
running statistics, state dicts, layouts (the op itself: test_batch_norm.py)."""

import copy

import pytest
import torch
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.nn as fnn
from helpers import (
    DEVICES,
    assert_close_to_reference,
    assert_raises_naming,
    device_dtypes,
    randomise_running_stats,
)

FAMILY = "norm"  # the emulator summary counts test cases per op family

# ---------------------------------------------------------------------------------------------
# The modules
# ---------------------------------------------------------------------------------------------

MODULES = [
    (fnn.BatchNorm1d, nn.BatchNorm1d, (6, 3)),
    (fnn.BatchNorm1d, nn.BatchNorm1d, (4, 3, 5)),
    (fnn.BatchNorm2d, nn.BatchNorm2d, (3, 3, 4, 5)),
    (fnn.BatchNorm3d, nn.BatchNorm3d, (2, 3, 3, 2, 4)),
]
MODULE_IDS = ["1d_NC", "1d_NCL", "2d", "3d"]
BN_ARGS = [
    dict(),
    dict(affine=False),
    dict(track_running_stats=False),
    dict(momentum=None),
    dict(momentum=0.3, eps=1e-3),
    dict(affine=False, momentum=None),
]
BN_IDS = ["default", "no_affine", "no_tracking", "momentum_none", "momentum_eps", "no_affine_cma"]


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


@pytest.mark.parametrize("ours_t, theirs_t, shape", MODULES, ids=MODULE_IDS)
@pytest.mark.parametrize("kwargs", BN_ARGS, ids=BN_IDS)
def test_module_mirrors_torch(ours_t, theirs_t, shape, kwargs):
    ours, theirs = ours_t(3, **kwargs), theirs_t(3, **kwargs)
    assert isinstance(ours, theirs_t)
    assert ours.extra_repr() == theirs.extra_repr() and repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    for k in sd_ours:  # same init
        assert sd_ours[k].dtype == sd_theirs[k].dtype and torch.equal(sd_ours[k], sd_theirs[k]), k
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
        assert getattr(ours, attr) == getattr(theirs, attr)


@pytest.mark.parametrize("device, dtype", device_dtypes(only=(torch.float32, torch.float64)))
@pytest.mark.parametrize("ours_t, theirs_t, shape", MODULES, ids=MODULE_IDS)
@pytest.mark.parametrize("kwargs", BN_ARGS, ids=BN_IDS)
def test_module_training_steps_then_eval(device, dtype, ours_t, theirs_t, shape, kwargs):
    """Several training steps: outputs, all gradients, running statistics and
    num_batches_tracked equal torch's; then eval uses the same statistics."""
    theirs = _randomise(theirs_t(3, **kwargs, device=device, dtype=dtype))
    ours = ours_t(3, **kwargs, device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    for step in range(4):
        mode = "eval" if step == 3 else "train"
        getattr(ours, mode)()
        getattr(theirs, mode)()
        x = torch.randn(shape, device=device, dtype=dtype) * (step + 1) + step
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yt = ours(xo), theirs(xt)
        assert_close_to_reference(yo, yt, dtype, name=f"output at step {step}")
        g = torch.randn_like(yt)
        yo.backward(g)
        yt.backward(g)
        assert_close_to_reference(xo.grad, xt.grad, dtype, name=f"grad input at step {step}")
        for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert_close_to_reference(p.grad, q.grad, dtype, name=f"grad {n} at step {step}")
            p.grad, q.grad = None, None
        for (n, bo), (_, bt) in zip(ours.named_buffers(), theirs.named_buffers()):
            if bo.is_floating_point():
                assert_close_to_reference(bo, bt, dtype, name=f"{n} after step {step}")
            else:
                assert torch.equal(bo, bt), f"{n} after step {step}: {bo} != {bt}"
    if theirs.track_running_stats:
        assert int(ours.num_batches_tracked) == 3


def test_module_momentum_none_is_cumulative_average():
    """momentum=None: the running mean is the plain average of the batch means."""
    m = fnn.BatchNorm1d(2, momentum=None)
    batches = [torch.randn(5, 2) + i for i in range(4)]
    for x in batches:
        m(x)
    torch.testing.assert_close(m.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0))
    # the first batch gets factor 1/1, replacing the initial running_var of ones
    torch.testing.assert_close(m.running_var, torch.stack([x.var(0) for x in batches]).mean(0))
    assert int(m.num_batches_tracked) == 4


def test_module_track_running_stats_false():
    """No buffers; eval normalises with the batch's statistics, as torch."""
    m = fnn.BatchNorm2d(3, track_running_stats=False).eval()
    assert m.running_mean is None and m.num_batches_tracked is None
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(m(x), nn.BatchNorm2d(3, track_running_stats=False).eval()(x))
    assert_raises_naming(ValueError, lambda: m(torch.randn(1, 3, 1, 1)), "value per channel")


def test_module_tracking_turned_off_after_construction():
    """track_running_stats set to False on a module with buffers: training leaves them alone,
    eval still uses them (torch's rule)."""
    ours, theirs = randomise_running_stats(fnn.BatchNorm1d(3)), nn.BatchNorm1d(3)
    theirs.load_state_dict(ours.state_dict())
    ours.track_running_stats = theirs.track_running_stats = False
    x = torch.randn(4, 3)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 0
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("device", DEVICES)
def test_module_eval_batch_of_one(device):
    for ours_t, theirs_t, shape in MODULES:
        theirs = randomise_running_stats(_randomise(theirs_t(3))).to(device).eval()
        ours = ours_t(3).to(device).eval()
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn((1, 3) + (1,) * (len(shape) - 2), device=device)
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours_t, theirs_t, shape", MODULES[2:], ids=MODULE_IDS[2:])
def test_module_channels_last(device, ours_t, theirs_t, shape):
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    theirs = _randomise(theirs_t(3)).to(device)
    ours = ours_t(3).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(shape, device=device).to(memory_format=fmt)
    yo, yt = ours(x), theirs(x)
    assert yo.is_contiguous(memory_format=fmt) and yo.stride() == yt.stride()
    torch.testing.assert_close(yo, yt)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


@pytest.mark.parametrize("ours_t, theirs_t, shape", MODULES, ids=MODULE_IDS)
@pytest.mark.parametrize("kwargs", BN_ARGS, ids=BN_IDS)
def test_module_state_dict_both_ways(ours_t, theirs_t, shape, kwargs):
    theirs = _randomise(theirs_t(3, **kwargs))
    theirs(torch.randn(shape))  # move the running statistics and num_batches_tracked
    ours = ours_t(3, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), theirs(x))
    back = theirs_t(3, **kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    for k, v in back.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k]), k


@pytest.mark.parametrize("ours_t, theirs_t, shape", MODULES, ids=MODULE_IDS)
def test_module_rejects_wrong_rank(ours_t, theirs_t, shape):
    """The modules' input-rank check is torch's (ValueError naming the expected rank)."""
    bad = torch.randn({2: (2, 3, 4, 5), 3: (2, 3, 4, 5), 4: (2, 3, 4), 5: (2, 3, 4, 5)}[len(shape)])
    with pytest.raises(ValueError) as theirs_err:
        theirs_t(3)(bad)
    assert_raises_naming(ValueError, lambda: ours_t(3)(bad), str(theirs_err.value))


def test_module_wrong_channel_count():
    assert_raises_naming(RuntimeError, lambda: fnn.BatchNorm2d(3)(torch.randn(2, 4, 3, 3)), "[4]")


def test_module_from_torch_shares_tensors():
    theirs = randomise_running_stats(_randomise(nn.BatchNorm2d(3))).eval()
    ours = fnn.BatchNorm2d.from_torch(theirs)
    assert type(ours) is fnn.BatchNorm2d and not ours.training
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert p is q, n
    for (n, p), (_, q) in zip(ours.named_buffers(), theirs.named_buffers()):
        assert p is q, n
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(TypeError):
        fnn.BatchNorm2d.from_torch(nn.BatchNorm1d(3))


@pytest.mark.parametrize("device", DEVICES)
def test_module_deepcopy_and_to(device):
    m = _randomise(fnn.BatchNorm1d(4))
    m2 = copy.deepcopy(m).to(device=device, dtype=torch.float64)
    assert type(m2) is fnn.BatchNorm1d and m2.running_mean.dtype == torch.float64
    assert m2.num_batches_tracked.dtype == torch.long
    x = torch.randn(5, 4, device=device, dtype=torch.float64)
    ref = copy.deepcopy(m2)
    torch.testing.assert_close(m2(x), nn.BatchNorm1d.forward(ref, x))
    torch.testing.assert_close(m2.running_var, ref.running_var)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("to_dtype", ["bfloat16", "half"])
@pytest.mark.parametrize("ours_t, theirs_t, shape", MODULES, ids=MODULE_IDS)
def test_module_in_half(device, to_dtype, ours_t, theirs_t, shape):
    """The modules after .bfloat16() / .half() (parameters and running statistics in that
    dtype), training steps then eval: judged against float64 copies of the same module, with
    torch's module in the half dtype as the baseline for the error allowed."""
    theirs = getattr(_randomise(theirs_t(3, device=device)), to_dtype)()
    ours = getattr(ours_t(3, device=device), to_dtype)()
    ours.load_state_dict(theirs.state_dict())
    ref = copy.deepcopy(theirs).double()
    dtype = ours.weight.dtype
    for step in range(3):
        mode = "eval" if step == 2 else "train"
        for m in (ours, theirs, ref):
            getattr(m, mode)()
        x = (torch.randn(shape, device=device) * (step + 1) + step).to(dtype)
        xo, xt, xr = (x.clone().double() if m is ref else x.clone() for m in (ours, theirs, ref))
        xo, xt, xr = (t.requires_grad_() for t in (xo, xt, xr))
        yo, yt, yr = ours(xo), theirs(xt), ref(xr)
        assert yo.dtype == yt.dtype == dtype
        assert_close_to_reference(yo, yr, dtype, baseline=yt, name=f"output at step {step}")
        g = torch.randn_like(yt)
        for y in (yo, yt, yr):
            y.backward(g.to(y.dtype))
        assert_close_to_reference(
            xo.grad, xr.grad, dtype, baseline=xt.grad, name=f"grad input at step {step}"
        )
        for (n, p), q, r in zip(ours.named_parameters(), theirs.parameters(), ref.parameters()):
            assert p.grad.dtype == dtype
            assert_close_to_reference(
                p.grad, r.grad, dtype, baseline=q.grad, name=f"grad {n} at step {step}"
            )
            p.grad = q.grad = r.grad = None
        for (n, bo), bt, br in zip(ours.named_buffers(), theirs.buffers(), ref.buffers()):
            if bo.is_floating_point():
                assert bo.dtype == dtype
                assert_close_to_reference(bo, br, dtype, baseline=bt, name=f"{n} after step {step}")
