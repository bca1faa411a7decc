"""fastdl batch_norm (the op and the functional) against torch.nn.functional.batch_norm (the
modules: test_batch_norm_modules.py; half types, autocast and overflowing channels:
test_batch_norm_precision.py; bad input and degenerate statistics: test_batch_norm_errors.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from helpers import (
    DEVICES,
    HALF_DTYPES,
    device_dtypes,
    assert_close_to_reference,
    assert_raises_naming,
    check_compile,
    compare_with_torch,
    randomise_running_stats,
)
from op_contract import OpContract, Sample

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
    w = (
        torch.randn(c, device=device, dtype=param_dtype).requires_grad_()
        if affine in ("weight_bias", "weight")
        else None
    )
    b = (
        torch.randn(c, device=device, dtype=param_dtype).requires_grad_()
        if affine in ("weight_bias", "bias")
        else None
    )
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
@pytest.mark.parametrize(
    "shape",
    [(2, 3, 4, 5), (3, 5, 2, 3, 4), (2, 3, 1, 5), (4, 2, 3, 1)],
    ids=["2d", "3d", "h1", "w1"],
)
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
    for fn, xx in zip(
        _fns(training),
        (
            x.detach().clone(memory_format=fmt).requires_grad_(),
            x.detach().clone(memory_format=fmt).requires_grad_(),
        ),
    ):
        fn(
            xx, w, b, None if rm is None else rm.clone(), None if rv is None else rv.clone()
        ).sum().backward()
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
    assert_raises_naming(
        ValueError, lambda: F.batch_norm(x, None, None, training=True, eps=0.0), "eps"
    )
    assert_raises_naming(
        ValueError, lambda: FF.batch_norm(x, None, None, training=True, eps=0.0), "eps"
    )


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
    _, ref_mean, ref_invstd = torch.ops.aten.native_batch_norm(
        x, None, None, None, None, True, 0.1, 1e-5
    )
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
@pytest.mark.parametrize(
    "mask",
    [
        (True, True, True),
        (True, False, False),
        (False, True, True),
        (False, False, True),
        (False, False, False),
    ],
)
def test_backward_op_output_mask(device, dtype, training, mask):
    x = torch.randn(3, 4, 5, device=device, dtype=dtype)
    w = torch.randn(4, device=device, dtype=dtype)
    rm, rv = (
        torch.randn(4, device=device, dtype=dtype),
        torch.rand(4, device=device, dtype=dtype) + 1,
    )
    g = torch.randn(3, 4, 5, device=device, dtype=dtype)
    _, mean, invstd = OP(x, w, None, rm.clone(), rv.clone(), training, 0.1, 1e-5)
    gi, gw, gb = OP_BACKWARD(g, x, w, mean, invstd, training, list(mask))
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, torch.zeros_like(w)))
    F.batch_norm(xr, rm.clone(), rv.clone(), wr, br, training).backward(g)
    for got, want, needed in (
        (gi, xr.grad, mask[0]),
        (gw, wr.grad, mask[1]),
        (gb, br.grad, mask[2]),
    ):
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
@pytest.mark.parametrize(
    "training, stats",
    [
        (True, "running"),
        (True, "none"),
        (True, "no_channels"),
        (False, "running"),
        (False, "no_channels"),
    ],
)
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
    ref = F.batch_norm(
        x.detach(),
        rm,
        rv,
        None if w is None else w.detach(),
        None if b is None else b.detach(),
        training,
    )
    assert out.shape == ref.shape == (0,) and out.dtype == ref.dtype
    if rm is not None:
        assert torch.equal(ours[0], rm) and torch.equal(ours[1], rv)
    out.sum().backward()
    assert x.grad.shape == (0,)
    if c:
        assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    # The per-channel tensors still have to agree with each other.
    assert_raises_naming(
        RuntimeError,
        lambda: FF.batch_norm(
            x, None, None, torch.ones(3, device=device), torch.ones(4, device=device), True
        ),
        "bias",
    )


# ---------------------------------------------------------------------------------------------
# The op contract (op_contract.py): opcheck, compile, gradcheck, no double backward, inputs
# unchanged, empty and non-contiguous inputs, bad dtypes; then channels-last compile,
# inductor, export
# ---------------------------------------------------------------------------------------------


class TestBatchNormContract(OpContract):
    backward_name = "batch_norm"

    def fn(self, x, w, b, rm, rv, *, training, momentum=0.1, eps=1e-5):
        return FF.batch_norm(x, rm, rv, w, b, training, momentum, eps)

    def reference(self, x, w, b, rm, rv, *, training, momentum=0.1, eps=1e-5):
        return F.batch_norm(x, rm, rv, w, b, training, momentum, eps)

    def check_more(self, check, sample, out, ref, args, ref_args):
        _check_running(args, ref_args, out.dtype)

    def opcheck_samples(self, device, dtype):
        samples = []  # the mutating form (training with running statistics) included
        for mode in MODES:
            for affine in ["weight_bias", "none"]:
                x, w, b, rm, rv, training = _inputs((3, 4, 5), device, dtype, affine, mode)
                samples.append(
                    Sample(
                        [x, w, b, rm, rv, training, 0.1, 1e-5],
                        op=OP,
                        name=f"forward-{mode}-{affine}",
                    )
                )
        for training in (True, False):
            x = torch.randn(3, 4, 5, device=device, dtype=dtype)
            w = torch.randn(4, device=device, dtype=dtype)
            rm = torch.randn(4, device=device, dtype=dtype)
            rv = torch.rand(4, device=device, dtype=dtype) + 1
            _, mean, invstd = OP(x, w, None, rm, rv, training, 0.1, 1e-5)
            g = torch.randn_like(x)
            for mask in [(True, True, True), (True, False, False), (False, True, True)]:
                samples.append(
                    Sample(
                        [g, x, w, mean, invstd, training, list(mask)],
                        op=OP_BACKWARD,
                        name=f"backward-{training}-{mask}",
                    )
                )
        if dtype == torch.float32:
            x, w, b, rm, rv, _ = _inputs(
                (2, 3, 4, 5), device, dtype, "weight_bias", "train_running"
            )
            x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
            samples.append(Sample([x, w, b, rm, rv, True, 0.1, 1e-5], op=OP, name="channels_last"))
        return samples

    def compile_samples(self, device):
        samples = []  # compiled == eager, the in-place running-statistics update included
        for mode in MODES:
            x, w, b, rm, rv, training = _inputs(
                (4, 3, 5), device, torch.float32, "weight_bias", mode
            )
            samples.append(Sample([x, w, b, rm, rv], dict(training=training), name=mode))
        for train in (True, False):
            # (momentum=None is not used here: torch's own BatchNorm computes
            # 1 / float(num_batches_tracked) in forward, which fullgraph compile cannot trace.)
            model = nn.Sequential(
                nn.Conv2d(2, 3, 3),
                fnn.BatchNorm2d(3),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(12, 4),
                fnn.BatchNorm1d(4, momentum=0.2),
            ).to(device)
            model.train(train)
            if not train:
                randomise_running_stats(model)
            x = torch.randn(5, 2, 4, 4, device=device, requires_grad=True)
            samples.append(Sample([x], fn=model, name=f"module-train{train}"))
        return samples

    def gradcheck_samples(self, device):
        samples = []
        for mode in MODES:
            for affine in ["weight_bias", "weight", "none"]:
                x, w, b, rm, rv, training = _inputs((3, 2, 4), device, torch.float64, affine, mode)
                # running stats change at every call in training: gradcheck must not see them
                samples.append(
                    Sample(
                        [x, w, b],
                        dict(rm=rm, rv=rv, training=training),
                        fn=_with_stats(momentum=0.0),
                        name=f"{mode}-{affine}",
                    )
                )
        x = torch.randn(2, 3, 2, 3, device=device, dtype=torch.float64)
        x = x.to(memory_format=torch.channels_last).requires_grad_()
        w, b = (torch.randn(3, device=device, dtype=torch.float64).requires_grad_() for _ in "wb")
        return samples + [Sample([x, w, b, None, None], dict(training=True), name="channels_last")]

    def double_backward_samples(self, device):
        samples = []
        for training in (True, False):
            x, w, b, rm, rv, _ = _inputs((3, 2, 4), device, torch.float64, "weight_bias", "eval")
            samples.append(
                Sample(
                    [x, w, b],
                    dict(rm=rm, rv=rv, training=training),
                    fn=_with_stats(momentum=0.0),
                    name=f"training{training}",
                )
            )
        x = torch.randn(3, 2, 4, device=device, dtype=torch.float64, requires_grad=True)
        return samples + [Sample([x, None, None, None, None], dict(training=True), name="no_stats")]

    def unchanged_samples(self, device, dtype):
        samples = []  # only running_mean / running_var change, and only in training
        for mode in MODES:
            x, w, b, rm, rv, training = _inputs((4, 3, 5), device, dtype, "weight_bias", mode)
            x = x.detach().transpose(0, 2).requires_grad_()  # (5, 3, 4), non-contiguous
            g = torch.randn(5, 3, 4, device=device, dtype=dtype)

            def ops(x=x, w=w, b=b, rm=rm, rv=rv, g=g, training=training):
                _, mean, invstd = OP(
                    x.detach(), w.detach(), b.detach(), rm, rv, training, 0.1, 1e-5
                )
                OP_BACKWARD(g, x.detach(), w.detach(), mean, invstd, training, [True, True, True])

            allow = [rm, rv] if training and rm is not None else []
            samples.append(
                Sample(
                    [x, w, b, rm, rv],
                    dict(training=training),
                    grad_output=g,
                    allow=allow,
                    extra=ops,
                    name=mode,
                )
            )
        return samples

    def empty_samples(self, device):
        samples = []  # an empty batch (running stats as torch leaves them), no channels
        for mode in MODES:
            for shape in [(0, 3), (0, 3, 4), (0, 3, 2, 2)]:
                x, w, b, rm, rv, training = _inputs(
                    shape, device, torch.float32, "weight_bias", mode
                )
                samples.append(
                    Sample([x, w, b, rm, rv], dict(training=training), name=f"{mode}-{shape}")
                )
        for training in (True, False):
            x = torch.randn(4, 0, 3, device=device, requires_grad=True)
            rm, rv = torch.zeros(0, device=device), torch.ones(0, device=device)
            samples.append(
                Sample(
                    [x, None, None, rm, rv],
                    dict(training=training),
                    name=f"zero_channels-{training}",
                )
            )
        return samples

    def noncontiguous_samples(self, device, dtype):
        mk = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
        cases = {
            "transposed_nc": mk(3, 4).t(),  # (N, C) with C fastest
            "transposed_batch": mk(3, 4, 5).transpose(0, 1),  # (4, 3, 5)
            "sliced_spatial": mk(2, 3, 10)[:, :, ::2],
            "sliced_channels": mk(2, 6, 5)[:, ::2],
            "permuted_4d": mk(2, 4, 5, 3).permute(0, 3, 1, 2),  # channels-last-like, not exact
            "offset_view": mk(3, 4, 6)[1:, 1:, 1:],
        }
        samples = []
        for mode in MODES:
            for name, x in cases.items():
                c = x.shape[1]
                _, _, b, rm, rv, training = _inputs((2, c), device, dtype, "weight_bias", mode)
                w = mk(2 * c)[::2].requires_grad_()  # a strided weight
                samples.append(
                    Sample(
                        [x.detach().requires_grad_(), w, b, rm, rv],
                        dict(training=training),
                        name=f"{mode}-{name}",
                    )
                )
        return samples

    def bad_dtype_calls(self, device):
        x = torch.ones(4, 3, device=device)
        calls = [
            (lambda x=x.to(dt): FF.batch_norm(x, None, None, training=True), "input", "float32")
            for dt in (torch.int32, torch.int64, torch.bool, torch.complex64)
        ]
        x = torch.randn(4, 3, 5, device=device)
        for name in ["weight", "bias", "running_mean", "running_var"]:
            args = dict(
                weight=torch.ones(3, device=device),
                bias=torch.zeros(3, device=device),
                running_mean=torch.zeros(3, device=device),
                running_var=torch.ones(3, device=device),
            )
            for bad, words in ((args[name].double(), ("Double",)), (args[name].long(), ())):
                kw = {**args, name: bad}
                calls.append((lambda kw=kw: FF.batch_norm(x, training=True, **kw), name, *words))
        return calls


def _with_stats(momentum):
    """batch_norm of (x, w, b) with fixed running statistics (kwargs rm, rv) and momentum."""
    return lambda x, w, b, *, rm, rv, training: FF.batch_norm(x, rm, rv, w, b, training, momentum)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_output_keeps_channels_last(device):
    x = (
        torch.randn(2, 3, 4, 5, device=device)
        .to(memory_format=torch.channels_last)
        .requires_grad_()
    )
    out = check_compile(lambda x: FF.batch_norm(x, None, None, training=True), x)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compile_inductor(device):
    x, w, b, rm, rv, _ = _inputs((4, 3, 5), device, torch.float32, "weight_bias", "train_running")
    check_compile(
        lambda x, w, b, rm, rv: torch.relu(FF.batch_norm(x, rm, rv, w, b, True)),
        x,
        w,
        b,
        rm,
        rv,
        backend="inductor",
    )


@pytest.mark.parametrize("device", DEVICES)
def test_export_eval(device):
    model = (
        nn.Sequential(
            nn.Conv2d(2, 3, 3),
            fnn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(12, 4),
            fnn.BatchNorm1d(4),
        )
        .to(device)
        .eval()
    )
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
