"""fastdl.nn.LayerNorm against torch.nn.LayerNorm: construction, forward and gradients in
training and eval, state dicts, from_torch, copies, half types (the op: test_layer_norm.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.nn as fnn
from helpers import DEVICES, assert_close_to_reference, assert_raises_naming, device_dtypes

FAMILY = "norm"  # the emulator summary counts test cases per op family

LN_ARGS = [
    dict(normalized_shape=5),
    dict(normalized_shape=(3, 5)),
    dict(normalized_shape=[2, 3, 5]),
    dict(normalized_shape=5, elementwise_affine=False),
    dict(normalized_shape=5, bias=False),
    dict(normalized_shape=(3, 5), eps=1e-3),
]
LN_IDS = ["int", "tuple", "list3", "no_affine", "no_bias", "eps"]


def _input_for(normalized_shape, device="cpu", dtype=torch.float32):
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return torch.randn((2, 3) + ns, device=device, dtype=dtype)


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


@pytest.mark.parametrize("kwargs", LN_ARGS, ids=LN_IDS)
def test_module_mirrors_torch(kwargs):
    ours, theirs = fnn.LayerNorm(**kwargs), nn.LayerNorm(**kwargs)
    assert isinstance(ours, nn.LayerNorm)
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    for k in sd_ours:  # same init
        assert sd_ours[k].shape == sd_theirs[k].shape and torch.equal(sd_ours[k], sd_theirs[k])
    for attr in ("normalized_shape", "eps", "elementwise_affine"):
        assert getattr(ours, attr) == getattr(theirs, attr)


@pytest.mark.parametrize("device, dtype", device_dtypes(only=(torch.float32, torch.float64)))
@pytest.mark.parametrize("kwargs", LN_ARGS, ids=LN_IDS)
def test_module_forward_backward(device, dtype, kwargs):
    theirs = _randomise(nn.LayerNorm(**kwargs, device=device, dtype=dtype))
    ours = fnn.LayerNorm(**kwargs, device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    x = _input_for(kwargs["normalized_shape"], device, dtype)
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yt = ours(xo), theirs(xt)
        assert_close_to_reference(yo, yt, dtype)
        g = torch.randn_like(yt)
        yo.backward(g)
        yt.backward(g)
        assert_close_to_reference(xo.grad, xt.grad, dtype, name="grad input")
        for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert_close_to_reference(p.grad, q.grad, dtype, name=f"grad {n}")
            p.grad, q.grad = None, None


@pytest.mark.parametrize("kwargs", LN_ARGS, ids=LN_IDS)
def test_module_state_dict_both_ways(kwargs):
    theirs = _randomise(nn.LayerNorm(**kwargs))
    ours = fnn.LayerNorm(**kwargs)
    assert not ours.load_state_dict(theirs.state_dict(), strict=True).missing_keys
    x = _input_for(kwargs["normalized_shape"])
    torch.testing.assert_close(ours(x), theirs(x))
    _randomise(ours)
    back = nn.LayerNorm(**kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(back(x), ours(x))


def test_module_from_torch_shares_parameters():
    theirs = _randomise(nn.LayerNorm(6))
    ours = fnn.LayerNorm.from_torch(theirs)
    assert type(ours) is fnn.LayerNorm
    assert ours.weight is theirs.weight and ours.bias is theirs.bias
    x = torch.randn(3, 6)
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(TypeError):
        fnn.LayerNorm.from_torch(nn.BatchNorm1d(6))


@pytest.mark.parametrize("device", DEVICES)
def test_module_deepcopy_and_to(device):
    m = _randomise(fnn.LayerNorm(4))
    m2 = copy.deepcopy(m).to(device=device, dtype=torch.float64)
    assert type(m2) is fnn.LayerNorm and m2.weight.dtype == torch.float64
    x = torch.randn(2, 4, device=device, dtype=torch.float64)
    torch.testing.assert_close(m2(x), F.layer_norm(x, (4,), m2.weight, m2.bias))


def test_module_bad_input():
    m = fnn.LayerNorm((3, 5))
    assert_raises_naming(RuntimeError, lambda: m(torch.randn(2, 5, 3)), "normalized_shape")


@pytest.mark.parametrize("to_dtype", ["bfloat16", "half"])
def test_module_in_half_on_cpu(to_dtype):
    """fastdl.nn.LayerNorm after .bfloat16() / .half(), as torch's: forward and gradients."""
    torch.manual_seed(0)
    ref = getattr(nn.LayerNorm((6, 40)), to_dtype)()
    ours = getattr(fnn.LayerNorm((6, 40)), to_dtype)()
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.copy_(torch.randn_like(q))
            q.copy_(p)
    x = torch.randn(3, 6, 40, dtype=ours.weight.dtype)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yr = ours(xo), ref(xr)
    assert yo.dtype == yr.dtype == x.dtype
    # Both compute in float32 and round once: equal to a unit in the last place.
    torch.testing.assert_close(yo, yr)
    go = torch.randn_like(yr)
    yo.backward(go)
    yr.backward(go)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=2e-2, atol=2e-2)
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert p.grad.dtype == q.grad.dtype == p.dtype
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=2e-2)
