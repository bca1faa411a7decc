"""fastdl batch_norm (the op and the functional) against torch.nn.functional.batch_norm (the
modules: test_batch_norm_modules.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from helpers import (CUDA_AVAILABLE, DEVICES, HALF_DTYPES, device_dtypes,
                     assert_close_to_reference, assert_no_double_backward, assert_raises_naming,
                     assert_unchanged, check_compile, check_compile_module, check_gradcheck,
                     check_opcheck, compare_with_torch, randomise_running_stats)

FAMILY = "norm"  # the emulator summary counts test cases per op family

OP = torch.ops.fastdl.batch_norm_forward
OP_BACKWARD = torch.ops.fastdl.batch_norm_backward

# Every device with every dtype: the CPU kernels take float16/bfloat16 too (computed in float).
DEVICE_DTYPES = device_dtypes(cpu_half=True)

# (N, C) and (N, C, *) for BatchNorm1d/2d/3d: odd sizes, C = 1, spatial size 1, N = 1 with
# spatial positions (still more than one value per channel), a larger-ish odd case.
SHAPES = [
    (5, 3),
    (4, 3, 7),
    (2, 3, 5, 4),
    (2, 3, 3, 2, 3),
    (3, 1, 5),
    (2, 4, 1, 1),
    (2, 3, 1),
    (1, 3, 5),
    (7, 5, 9),
    (2, 6, 17, 3),
]
MODES = ["train_running", "train_no_running", "eval"]
AFFINE = ["weight_bias", "weight", "bias", "none"]


def _inputs(shape, device, dtype, affine, mode, param_dtype=None):
    """x (requires grad), weight, bias, running_mean, running_var, training."""
    c = shape[1]
    param_dtype = param_dtype or dtype
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(c, device=device, dtype=param_dtype).requires_grad_()
         if affine in ("weight_bias", "weight") else None)
    b = (torch.randn(c, device=device, dtype=param_dtype).requires_grad_()
         if affine in ("weight_bias", "bias") else None)
    if mode == "train_no_running":
        rm = rv = None
    else:
        rm = torch.randn(c, device=device, dtype=param_dtype)
        rv = torch.rand(c, device=device, dtype=param_dtype) + 0.5
    return x, w, b, rm, rv, mode != "eval"


def _fns(training, momentum=0.1, eps=1e-5):
    ours = lambda x, w, b, rm, rv: FF.batch_norm(x, rm, rv, w, b, training, momentum, eps)  # noqa: E731
    ref = lambda x, w, b, rm, rv: F.batch_norm(x, rm, rv, w, b, training, momentum, eps)  # noqa: E731
    return ours, ref


def _check_running(our_args, torch_args, dtype):
    for i, name in ((3, "running_mean"), (4, "running_var")):
        if our_args[i] is not None:
            assert our_args[i].dtype == torch_args[i].dtype
            assert_close_to_reference(our_args[i], torch_args[i], dtype, name=name)


# ---------------------------------------------------------------------------------------------
# Forward, gradients and running statistics against torch
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine", AFFINE)
def test_forward_backward(device, dtype, shape, mode, affine):
    x, w, b, rm, rv, training = _inputs(shape, device, dtype, affine, mode)
    out, ref, ours_args, torch_args = compare_with_torch(*_fns(training), [x, w, b, rm, rv], dtype)
    assert out.dtype == dtype and out.stride() == ref.stride()
    _check_running(ours_args, torch_args, dtype)
    if mode == "eval":  # eval never touches the running statistics
        assert torch.equal(ours_args[3], rm) and torch.equal(ours_args[4], rv)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 5, 2, 3, 4), (2, 3, 1, 5), (4, 2, 3, 1)],
                         ids=["2d", "3d", "h1", "w1"])
@pytest.mark.parametrize("mode", MODES)
def test_channels_last(device, dtype, shape, mode):
    """Channels-last inputs work and keep their layout in the output and grad_input, as torch."""
    x, w, b, rm, rv, training = _inputs(shape, device, dtype, "weight_bias", mode)
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = x.detach().to(memory_format=fmt).requires_grad_()
    out, ref, ours_args, torch_args = compare_with_torch(*_fns(training), [x, w, b, rm, rv], dtype)
    assert out.is_contiguous(memory_format=fmt) and out.stride() == ref.stride()
    _check_running(ours_args, torch_args, dtype)
    # grad_input's layout as torch's
    for fn, xx in zip(_fns(training), (x.detach().clone(memory_format=fmt).requires_grad_(),
                                        x.detach().clone(memory_format=fmt).requires_grad_())):
        fn(xx, w, b, None if rm is None else rm.clone(), None if rv is None else rv.clone()).sum().backward()
        assert xx.grad.is_contiguous(memory_format=fmt), "grad_input lost channels-last"


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("grad_fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("x_fmt", ["contiguous", "channels_last"])
def test_mixed_layouts_of_input_and_grad(device, dtype, x_fmt, grad_fmt):
    fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    x, w, b, rm, rv, _ = _inputs((2, 3, 4, 5), device, dtype, "weight_bias", "train_running")
    x = x.detach().to(memory_format=fmt[x_fmt]).requires_grad_()
    g = torch.randn(2, 3, 4, 5, device=device, dtype=dtype).to(memory_format=fmt[grad_fmt])
    compare_with_torch(*_fns(True), [x, w, b, rm, rv], dtype, grad_output=g)


def _noncontiguous_cases(device, dtype):
    mk = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
    return {
        "transposed_nc": mk(3, 4).t(),                      # (N, C) with C fastest... reversed
        "transposed_batch": mk(3, 4, 5).transpose(0, 1),    # (4, 3, 5)
        "sliced_spatial": mk(2, 3, 10)[:, :, ::2],
        "sliced_channels": mk(2, 6, 5)[:, ::2],
        "permuted_4d": mk(2, 4, 5, 3).permute(0, 3, 1, 2),  # channels-last-like but not exact
        "offset_view": mk(3, 4, 6)[1:, 1:, 1:],
    }


NONCONTIG = ["transposed_nc", "transposed_batch", "sliced_spatial", "sliced_channels",
             "permuted_4d", "offset_view"]


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", NONCONTIG)
@pytest.mark.parametrize("mode", MODES)
def test_noncontiguous(device, dtype, case, mode):
    x = _noncontiguous_cases(device, dtype)[case].requires_grad_()
    c = x.shape[1]
    _, w, b, rm, rv, training = _inputs((2, c), device, dtype, "weight_bias", mode)
    w = torch.randn(2 * c, device=device, dtype=dtype)[::2].requires_grad_()  # strided weight
    out, ref, ours_args, torch_args = compare_with_torch(*_fns(training), [x, w, b, rm, rv], dtype)
    _check_running(ours_args, torch_args, dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_noncontiguous_running_stats(device, dtype):
    """Strided running_mean / running_var views are updated in place, through the view."""
    x = torch.randn(4, 3, 5, device=device, dtype=dtype)
    store_ours = torch.zeros(3, 2, device=device, dtype=dtype)
    store_ours[:, 1] = 1
    store_torch = store_ours.clone()
    FF.batch_norm(x, store_ours[:, 0], store_ours[:, 1], training=True, momentum=0.3)
    F.batch_norm(x, store_torch[:, 0], store_torch[:, 1], training=True, momentum=0.3)
    assert_close_to_reference(store_ours, store_torch, dtype)
    assert not torch.equal(store_ours[:, 0], torch.zeros(3, device=device, dtype=dtype))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0])
def test_momentum_and_unbiased_running_var(device, dtype, momentum):
    """running = (1 - momentum) * running + momentum * batch stat, with the unbiased variance."""
    x = torch.randn(3, 2, 4, device=device, dtype=dtype)
    rm = torch.randn(2, device=device, dtype=dtype)
    rv = torch.rand(2, device=device, dtype=dtype) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    FF.batch_norm(x, rm, rv, training=True, momentum=momentum)
    xd = x.double().transpose(0, 1).reshape(2, -1)
    want_m = (1 - momentum) * rm0.double() + momentum * xd.mean(1)
    want_v = (1 - momentum) * rv0.double() + momentum * xd.var(1, unbiased=True)
    assert_close_to_reference(rm, want_m.to(dtype), dtype, name="running_mean")
    assert_close_to_reference(rv, want_v.to(dtype), dtype, name="running_var")


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("eps", [1e-5, 1e-1, 0.0])
def test_eps(device, dtype, eps):
    x, w, b, rm, rv, _ = _inputs((4, 3, 5), device, dtype, "weight_bias", "train_running")
    for training in (True, False) if eps > 0 else (False,):  # torch rejects eps=0 in training
        compare_with_torch(*_fns(training, eps=eps), [x, w, b, rm, rv], dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_eps_zero_in_training_rejected_like_torch(device):
    """torch.nn.functional.batch_norm raises ValueError("batch_norm eps must be positive during
    training, but got 0.0"); a drop-in must reject it too (a constant channel would divide by 0)."""
    x = torch.randn(4, 3, device=device)
    assert_raises_naming(ValueError, lambda: F.batch_norm(x, None, None, training=True, eps=0.0), "eps")
    assert_raises_naming(ValueError, lambda: FF.batch_norm(x, None, None, training=True, eps=0.0), "eps")


@pytest.mark.parametrize("device", DEVICES)
def test_large_offset_is_stable(device):
    """Channels with a large mean and small spread (Welford / two-pass): float32 error vs a
    float64 reference at most twice torch's float32 error."""
    x = 1000.0 + 0.01 * torch.randn(16, 3, 40, device=device, dtype=torch.float64)
    ref = F.batch_norm(x, None, None, training=True)
    ours = FF.batch_norm(x.float(), None, None, training=True).double()
    theirs = F.batch_norm(x.float(), None, None, training=True).double()
    err, torch_err = (ours - ref).abs().max().item(), (theirs - ref).abs().max().item()
    assert err <= 2 * torch_err + 1e-4, (err, torch_err)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5)])
def test_statistics_match_aten(device, dtype, shape):
    """In training, save_mean / save_invstd are aten.native_batch_norm's batch statistics."""
    x = torch.randn(shape, device=device, dtype=dtype)
    _, mean, invstd = OP(x, None, None, None, None, True, 0.1, 1e-5)
    _, ref_mean, ref_invstd = torch.ops.aten.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    stats_dtype = torch.float32 if dtype in HALF_DTYPES else dtype
    assert mean.shape == (shape[1],) and invstd.shape == (shape[1],)
    assert mean.dtype == stats_dtype and invstd.dtype == stats_dtype
    tol = dict(rtol=1e-3, atol=1e-3) if dtype in HALF_DTYPES else {}
    if ref_mean.dtype != stats_dtype:  # aten on the CPU rounds half statistics to the input dtype
        eps = torch.finfo(ref_mean.dtype).eps
        tol = dict(rtol=2 * eps, atol=2 * eps)
    torch.testing.assert_close(mean, ref_mean.to(stats_dtype), **tol)
    torch.testing.assert_close(invstd, ref_invstd.to(stats_dtype), **tol)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True),
                                  (False, False, True), (False, False, False)])
def test_backward_op_output_mask(device, dtype, training, mask):
    x = torch.randn(3, 4, 5, device=device, dtype=dtype)
    w = torch.randn(4, device=device, dtype=dtype)
    rm, rv = torch.randn(4, device=device, dtype=dtype), torch.rand(4, device=device, dtype=dtype) + 1
    g = torch.randn(3, 4, 5, device=device, dtype=dtype)
    _, mean, invstd = OP(x, w, None, rm.clone(), rv.clone(), training, 0.1, 1e-5)
    gi, gw, gb = OP_BACKWARD(g, x, w, mean, invstd, training, list(mask))
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, torch.zeros_like(w)))
    F.batch_norm(xr, rm.clone(), rv.clone(), wr, br, training).backward(g)
    for got, want, needed in ((gi, xr.grad, mask[0]), (gw, wr.grad, mask[1]), (gb, br.grad, mask[2])):
        assert (got is not None) == needed
        if needed:
            assert_close_to_reference(got, want, dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_only_some_inputs_require_grad(device, dtype):
    x, w, b, rm, rv, _ = _inputs((4, 3, 5), device, dtype, "weight_bias", "train_running")
    b.requires_grad_(False)
    compare_with_torch(*_fns(True), [x, w, b, rm, rv], dtype)
    x.requires_grad_(False)
    compare_with_torch(*_fns(True), [x, w, b, rm, rv], dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_with_batch_of_one(device):
    """N = 1 (and a single value per channel) is fine in eval."""
    for shape in [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 4)]:
        x, w, b, rm, rv, _ = _inputs(shape, device, torch.float32, "weight_bias", "eval")
        compare_with_torch(*_fns(False), [x, w, b, rm, rv], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (0, 3, 2, 2)])
def test_empty_batch(device, mode, shape):
    """An empty batch works as in torch (output empty; running stats as torch leaves them)."""
    x, w, b, rm, rv, training = _inputs(shape, device, torch.float32, "weight_bias", mode)
    ours_rm, ours_rv = (None, None) if rm is None else (rm.clone(), rv.clone())
    out = FF.batch_norm(x, ours_rm, ours_rv, w, b, training)
    ref = F.batch_norm(x, rm, rv, w, b, training)
    assert out.shape == ref.shape == x.shape
    if rm is not None:
        torch.testing.assert_close(ours_rm, rm, equal_nan=True)
        torch.testing.assert_close(ours_rv, rv, equal_nan=True)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training, stats", [(True, "running"), (True, "none"), (True, "no_channels"),
                                             (False, "running"), (False, "no_channels")])
def test_empty_1d_input(device, training, stats):
    """A 1-d input with no elements: torch returns it (empty), leaves the running statistics
    alone and gives zero gradients to weight and bias; so does fastdl, reading it as (0, C)."""
    c = 0 if stats == "no_channels" else 3  # no channels: no affine (torch raises IndexError)
    x = torch.empty(0, device=device, requires_grad=True)
    w = torch.randn(c, device=device, requires_grad=True) if c else None
    b = torch.randn(c, device=device, requires_grad=True) if c else None
    rm = None if stats == "none" else torch.randn(c, device=device)
    rv = None if stats == "none" else torch.rand(c, device=device) + 1
    ours = (None, None) if rm is None else (rm.clone(), rv.clone())
    out = FF.batch_norm(x, *ours, w, b, training)
    ref = F.batch_norm(x.detach(), rm, rv, None if w is None else w.detach(), None if b is None else b.detach(), training)
    assert out.shape == ref.shape == (0,) and out.dtype == ref.dtype
    if rm is not None:
        assert torch.equal(ours[0], rm) and torch.equal(ours[1], rv)
    out.sum().backward()
    assert x.grad.shape == (0,)
    if c:
        assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    # The per-channel tensors still have to agree with each other.
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, None, None, torch.ones(3, device=device),
                                                             torch.ones(4, device=device), True), "bias")


# ---------------------------------------------------------------------------------------------
# gradcheck, opcheck, compile, export, autocast
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine", ["weight_bias", "weight", "none"])
def test_gradcheck(device, mode, affine):
    x, w, b, rm, rv, training = _inputs((3, 2, 4), device, torch.float64, affine, mode)
    # running stats change at every call in training; gradcheck must not see them (momentum 0)
    check_gradcheck(lambda x, w, b: FF.batch_norm(x, rm, rv, w, b, training, 0.0), [x, w, b])


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_channels_last(device):
    x = torch.randn(2, 3, 2, 3, device=device, dtype=torch.float64)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    check_gradcheck(lambda x, w, b: FF.batch_norm(x, None, None, w, b, True), [x, w, b])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_double_backward_raises(device, training):
    x, w, b, rm, rv, _ = _inputs((3, 2, 4), device, torch.float64, "weight_bias", "eval")
    assert_no_double_backward(lambda x, w, b: FF.batch_norm(x, rm, rv, w, b, training, 0.0), [x, w, b])


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_error_message(device):
    x = torch.randn(3, 2, 4, device=device, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(FF.batch_norm(x, None, None, training=True).pow(2).sum(), x,
                               create_graph=True)
    assert_raises_naming(RuntimeError, lambda: g.sum().backward(), "batch_norm", "double backward")


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine", ["weight_bias", "none"])
def test_opcheck_forward(device, dtype, mode, affine):
    """Includes the mutating form (training with running statistics)."""
    x, w, b, rm, rv, training = _inputs((3, 4, 5), device, dtype, affine, mode)
    check_opcheck(OP, (x, w, b, rm, rv, training, 0.1, 1e-5))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_forward_channels_last(device):
    x, w, b, rm, rv, _ = _inputs((2, 3, 4, 5), device, torch.float32, "weight_bias", "train_running")
    x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    check_opcheck(OP, (x, w, b, rm, rv, True, 0.1, 1e-5))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True)])
def test_opcheck_backward(device, dtype, training, mask):
    x = torch.randn(3, 4, 5, device=device, dtype=dtype)
    w = torch.randn(4, device=device, dtype=dtype)
    rm, rv = torch.randn(4, device=device, dtype=dtype), torch.rand(4, device=device, dtype=dtype) + 1
    _, mean, invstd = OP(x, w, None, rm, rv, training, 0.1, 1e-5)
    g = torch.randn_like(x)
    check_opcheck(OP_BACKWARD, (g, x, w, mean, invstd, training, list(mask)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_compile_functional(device, mode):
    """Compiled == eager, including the in-place running-statistics update."""
    x, w, b, rm, rv, training = _inputs((4, 3, 5), device, torch.float32, "weight_bias", mode)
    check_compile(lambda x, w, b, rm, rv: FF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5),
                  x, w, b, rm, rv)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_channels_last(device):
    x = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    out = check_compile(lambda x: FF.batch_norm(x, None, None, training=True), x)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False])
def test_compile_module(device, train):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), fnn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 4), fnn.BatchNorm1d(4, momentum=0.2)).to(device)
    # (momentum=None is not used here: torch's own BatchNorm computes 1 / float(num_batches_tracked)
    # in forward, which fullgraph compile cannot trace either.)
    model.train(train)
    if not train:
        randomise_running_stats(model)
    check_compile_module(model, torch.randn(5, 2, 4, 4, device=device, requires_grad=True))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compile_inductor(device):
    x, w, b, rm, rv, _ = _inputs((4, 3, 5), device, torch.float32, "weight_bias", "train_running")
    check_compile(lambda x, w, b, rm, rv: torch.relu(FF.batch_norm(x, rm, rv, w, b, True)),
                  x, w, b, rm, rv, backend="inductor")


@pytest.mark.parametrize("device", DEVICES)
def test_export_eval(device):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), fnn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 4), fnn.BatchNorm1d(4)).to(device).eval()
    randomise_running_stats(model)
    x = torch.randn(2, 2, 4, 4, device=device)
    ep = torch.export.export(model, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.fastdl.batch_norm_forward.default) == 2
    x2 = torch.randn(2, 2, 4, 4, device=device)
    torch.testing.assert_close(ep.module()(x2), model(x2))


@pytest.mark.parametrize("device", DEVICES)
def test_export_train_updates_buffers(device):
    model = nn.Sequential(nn.Linear(3, 4), fnn.BatchNorm1d(4)).to(device).train()
    ref = copy.deepcopy(model)
    x = torch.randn(5, 3, device=device)
    ep = torch.export.export(copy.deepcopy(model), (x,))
    exported = ep.module()
    torch.testing.assert_close(exported(x), ref(x))
    torch.testing.assert_close(exported.state_dict()["1.running_mean"], ref[1].running_mean)
    torch.testing.assert_close(exported.state_dict()["1.running_var"], ref[1].running_var)
    assert int(exported.state_dict()["1.num_batches_tracked"]) == 1


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
    ref = F.batch_norm(xb.detach().double(), None, None, w.detach().double(), b.detach().double(), True)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, channels_last", [((4, 3, 7), False), ((2, 3, 5, 4), False),
                                                  ((2, 3, 5, 4), True), ((8, 64, 9, 9), True),
                                                  ((3, 70, 40), False), ((300, 37), False)])
def test_half_input_float32_params(device, dtype, mode, shape, channels_last):
    """Half inputs with float32 weight, bias and running statistics (mixed precision)."""
    x, w, b, rm, rv, training = _inputs(shape, device, dtype, "weight_bias", mode,
                                        param_dtype=torch.float32)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    out, ref, ours_args, torch_args = compare_with_torch(*_fns(training), [x, w, b, rm, rv], dtype)
    assert out.dtype == dtype and out.stride() == ref.stride()
    _check_running(ours_args, torch_args, dtype)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bad_rank(device):
    for x in (torch.randn(3, device=device), torch.tensor(1.0, device=device)):
        assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, None, None, training=True), "input", "(N, C)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_bad_parameter_shape(device, name):
    x = torch.randn(4, 3, 5, device=device)
    args = dict(weight=torch.ones(3, device=device), bias=torch.zeros(3, device=device),
                running_mean=torch.zeros(3, device=device), running_var=torch.ones(3, device=device))
    args[name] = torch.ones(4, device=device)
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, training=True, **args), name, "[3]", "[4]")
    args[name] = torch.ones(1, 3, device=device)
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, training=False, **args), name, "[3]")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_bad_parameter_dtype(device, name):
    x = torch.randn(4, 3, 5, device=device)
    args = dict(weight=torch.ones(3, device=device), bias=torch.zeros(3, device=device),
                running_mean=torch.zeros(3, device=device), running_var=torch.ones(3, device=device))
    args[name] = args[name].double()
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, training=True, **args), name, "Double")
    args[name] = args[name].long()
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, training=True, **args), name)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_bad_parameter_device(name):
    x = torch.randn(4, 3, 5, device="cuda")
    args = dict(weight=torch.ones(3, device="cuda"), bias=torch.zeros(3, device="cuda"),
                running_mean=torch.zeros(3, device="cuda"), running_var=torch.ones(3, device="cuda"))
    args[name] = args[name].cpu()
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, training=True, **args), name, "device")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_bad_input_dtype(device, dtype):
    x = torch.ones(4, 3, device=device).to(dtype)
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, None, None, training=True), "input", "float32")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("other", ["running_mean", "weight"])
def test_mixed_parameter_dtypes_rejected(device, other):
    """A half input's parameters and running statistics share one dtype (all the input's, or
    all float32), as torch requires."""
    x = torch.randn(4, 3, 5, device=device, dtype=torch.bfloat16)
    args = dict(weight=torch.ones(3, device=device), bias=torch.zeros(3, device=device),
                running_mean=torch.zeros(3, device=device), running_var=torch.ones(3, device=device))
    args[other] = args[other].bfloat16()
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, training=True, **args), "share one dtype")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)])
def test_training_with_one_value_per_channel(device, shape):
    """torch raises ValueError here; so does fastdl (functional and modules)."""
    x = torch.randn(shape, device=device)
    assert_raises_naming(ValueError, lambda: F.batch_norm(x, None, None, training=True), "value per channel")
    assert_raises_naming(ValueError, lambda: FF.batch_norm(x, None, None, training=True), "value per channel")
    module = {2: fnn.BatchNorm1d, 3: fnn.BatchNorm1d, 4: fnn.BatchNorm2d, 5: fnn.BatchNorm3d}[len(shape)]
    assert_raises_naming(ValueError, lambda: module(3).to(device)(x), "value per channel")


@pytest.mark.parametrize("device", DEVICES)
def test_running_mean_without_running_var(device):
    x = torch.randn(4, 3, device=device)
    s = torch.zeros(3, device=device)
    for training in (True, False):
        assert_raises_naming(ValueError, lambda: FF.batch_norm(x, s, None, training=training),
                             "running_mean", "running_var")
        assert_raises_naming(ValueError, lambda: FF.batch_norm(x, None, s, training=training),
                             "running_mean", "running_var")


@pytest.mark.parametrize("device", DEVICES)
def test_eval_without_running_stats(device):
    x = torch.randn(4, 3, device=device)
    assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, None, None, training=False), "running_mean")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_momentum_and_eps(device):
    x = torch.randn(4, 3, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    for m in (float("nan"), float("inf")):
        assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, rm, rv, training=True, momentum=m), "momentum")
    for e in (-1.0, float("nan"), float("inf")):
        assert_raises_naming(RuntimeError, lambda: FF.batch_norm(x, rm, rv, training=True, eps=e), "eps")
    assert torch.equal(rm, torch.zeros(3, device=device)) and torch.equal(rv, torch.ones(3, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_bad_input(device):
    x = torch.randn(4, 3, 5, device=device)
    _, mean, invstd = OP(x, None, None, None, None, True, 0.1, 1e-5)
    g = torch.randn_like(x)
    mask = [True, False, False]
    assert_raises_naming(RuntimeError, lambda: OP_BACKWARD(g[:2], x, None, mean, invstd, True, mask), "grad_output")
    assert_raises_naming(RuntimeError, lambda: OP_BACKWARD(g.double(), x, None, mean, invstd, True, mask), "grad_output")
    assert_raises_naming(RuntimeError, lambda: OP_BACKWARD(g, x, None, mean[:2], invstd, True, mask), "save_mean")
    assert_raises_naming(RuntimeError, lambda: OP_BACKWARD(g, x, torch.ones(2, device=device), mean, invstd, True, mask),
                         "weight")


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_inputs_unchanged(device, dtype, mode):
    """Only running_mean / running_var change, and only in training."""
    x, w, b, rm, rv, training = _inputs((4, 3, 5), device, dtype, "weight_bias", mode)
    x = x.detach().transpose(0, 2).requires_grad_()  # (5, 3, 4), non-contiguous
    g = torch.randn(5, 3, 4, device=device, dtype=dtype)
    allow = [rm, rv] if training and rm is not None else []

    def run():
        FF.batch_norm(x, rm, rv, w, b, training).backward(g)
        _, mean, invstd = OP(x.detach(), w.detach(), b.detach(), rm, rv, training, 0.1, 1e-5)
        OP_BACKWARD(g, x.detach(), w.detach(), mean, invstd, training, [True, True, True])

    assert_unchanged([x, w, b, g, rm, rv], run, allow=allow)


def test_bad_input_leaves_running_stats_unchanged():
    """A rejected call does not half-update running statistics."""
    x = torch.randn(4, 3)
    rm, rv = torch.zeros(3), torch.ones(3)
    assert_unchanged([x, rm, rv], lambda: pytest.raises(
        RuntimeError, FF.batch_norm, x, rm, rv, torch.ones(4), None, True))
    assert_unchanged([rm, rv], lambda: pytest.raises(
        ValueError, FF.batch_norm, torch.randn(1, 3), rm, rv, None, None, True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_zero_channels(device, training):
    """(N, 0, L): empty output and gradients, as torch, with no kernel launched on nothing."""
    x = torch.randn(4, 0, 3, device=device, requires_grad=True)
    rm, rv = torch.zeros(0, device=device), torch.ones(0, device=device)
    y = FF.batch_norm(x, rm, rv, training=training)
    expected = F.batch_norm(x.detach(), rm.clone(), rv.clone(), training=training)
    assert y.shape == expected.shape == (4, 0, 3)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.shape == x.shape


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
    torch.testing.assert_close(rm.double(), rm64, rtol=1e-2 if param_dtype == torch.bfloat16 else 1e-5,
                               atol=1e-6)
    assert torch.isinf(rv[2]) and torch.isfinite(rv[[0, 1, 3]]).all()
