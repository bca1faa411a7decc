"""fastdl max_pool1d/2d and avg_pool1d/2d (ops, functional, modules) against torch.nn.functional
(half types on the CPU: test_pooling_half.py; bad input: test_pooling_errors.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from helpers import (
    DEVICE_DTYPES,
    DEVICES,
    HALF_DTYPES,
    assert_close_to_reference,
    check_compile_module,
    compare_with_torch,
)
from op_contract import OpContract, Sample

FAMILY = "pooling"  # the emulator summary counts test cases per op family

MAX_OP = torch.ops.fastdl.max_pool2d_forward
MAX_BACKWARD = torch.ops.fastdl.max_pool2d_backward
AVG_OP = torch.ops.fastdl.avg_pool2d_forward
AVG_BACKWARD = torch.ops.fastdl.avg_pool2d_backward


def distinct(shape, device, dtype, memory_format=torch.contiguous_format):
    """Distinct values in random order (no ties, so max pooling's argmax is unique and the
    gradient is well defined for gradcheck and for half types)."""
    n = 1
    for s in shape:
        n *= s
    values = (torch.randperm(n, dtype=torch.float64) - n / 2) / max(n, 1) * 4
    return values.reshape(shape).to(device, dtype).contiguous(memory_format=memory_format)


# (input shape, kernel_size, stride, padding, dilation, ceil_mode): odd sizes, stride != kernel,
# padding, dilation, ceil_mode where it adds a window (and where it must drop one), 1x1, a
# kernel as large as the input, unbatched, a size-1 batch and channel.
MAX_CASES = [
    ((2, 3, 9, 11), 3, 2, 1, 1, False),
    ((2, 3, 9, 11), 3, 2, 1, 1, True),
    ((2, 3, 8, 8), 2, None, 0, 1, False),
    ((2, 3, 7, 7), 2, None, 0, 1, True),
    ((1, 2, 10, 9), (3, 2), (2, 1), (1, 0), (2, 1), True),
    ((2, 2, 11, 10), 3, 3, 1, 2, False),
    ((2, 2, 6, 5), 4, 3, 2, 1, True),  # last window would start in the right padding: dropped
    ((2, 3, 5, 7), 1, 1, 0, 1, False),
    ((2, 3, 5, 7), 1, 2, 0, 1, True),
    ((2, 3, 5, 7), (5, 7), None, 0, 1, False),
    ((3, 6, 7), 3, 2, 1, 1, False),  # unbatched
    ((1, 1, 13, 4), (5, 1), (4, 1), (2, 0), 1, True),
    ((2, 19, 7, 6), 3, 2, 1, 1, True),  # channels past a vector width, with a tail
    ((1, 17, 9, 9), 3, 1, 1, 2, False),
]
AVG_CASES = [
    ((2, 3, 9, 11), 3, 2, 1, False),
    ((2, 3, 9, 11), 3, 2, 1, True),
    ((2, 3, 8, 8), 2, None, 0, False),
    ((2, 3, 7, 7), 2, None, 0, True),
    ((1, 2, 10, 9), (3, 2), (2, 1), (1, 0), True),
    ((2, 2, 6, 5), 4, 3, 2, True),
    ((2, 3, 5, 7), 1, 1, 0, False),
    ((2, 3, 5, 7), (5, 7), None, 0, False),
    ((3, 6, 7), 3, 2, 1, True),
    ((1, 1, 13, 4), (5, 1), (4, 1), (2, 0), True),
    ((2, 19, 7, 6), 3, 2, 1, True),
]
AVG_OPTIONS = [(True, None), (False, None), (True, 5), (False, 2)]


def _max_fns(k, s, p, d, c):
    return (
        lambda x: FF.max_pool2d(x, k, s, p, d, c, return_indices=True),
        lambda x: F.max_pool2d(x, k, s, p, d, c, return_indices=True),
    )


def _avg_fns(k, s, p, c, cip, dov):
    return (
        lambda x: FF.avg_pool2d(x, k, s, p, c, cip, dov),
        lambda x: F.avg_pool2d(x, k, s, p, c, cip, dov),
    )


def _layouts(x):
    """The input in every layout: contiguous, channels-last (4-d) and a non-contiguous view."""
    out = [("contiguous", x)]
    if x.dim() == 4:
        out.append(("channels_last", x.contiguous(memory_format=torch.channels_last)))
    wide = torch.cat([x, x], dim=-1)[..., ::2]  # every other column: strided, not dense
    out.append(("strided", wide))
    return out


# ---------------------------------------------------------------------------------------------
# Forward and gradients against torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", MAX_CASES, ids=[str(i) for i in range(len(MAX_CASES))])
def test_max_pool2d(device, dtype, case):
    shape, k, s, p, d, c = case
    base = distinct(shape, device, dtype)
    for name, x in _layouts(base):
        x = x.detach().requires_grad_()
        (out, idx), (ref, ref_idx), _, _ = compare_with_torch(*_max_fns(k, s, p, d, c), [x], dtype)
        assert torch.equal(idx, ref_idx), name
        assert idx.dtype == torch.int64 and out.dtype == dtype
        assert out.stride() == ref.stride() and idx.stride() == ref_idx.stride(), name


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=[str(i) for i in range(len(AVG_CASES))])
@pytest.mark.parametrize("cip, dov", AVG_OPTIONS, ids=["pad", "nopad", "div5", "nopad-div2"])
def test_avg_pool2d(device, dtype, case, cip, dov):
    shape, k, s, p, c = case
    base = torch.randn(shape, device=device, dtype=dtype)
    for name, x in _layouts(base):
        x = x.detach().requires_grad_()
        out, ref, _, _ = compare_with_torch(*_avg_fns(k, s, p, c, cip, dov), [x], dtype)
        assert out.dtype == dtype and out.stride() == ref.stride(), name


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "k, s, p, d, c",
    [(3, 2, 1, 1, False), (2, None, 0, 1, True), (3, 1, 1, 2, True), (1, 1, 0, 1, False)],
)
@pytest.mark.parametrize("shape", [(2, 3, 9), (4, 10)], ids=["batched", "unbatched"])
def test_max_pool1d(device, dtype, k, s, p, d, c, shape):
    x = distinct(shape, device, dtype).requires_grad_()
    (out, idx), (_, ref_idx), _, _ = compare_with_torch(
        lambda x: FF.max_pool1d(x, k, s, p, d, c, return_indices=True),
        lambda x: F.max_pool1d(x, k, s, p, d, c, return_indices=True),
        [x],
        dtype,
    )
    assert torch.equal(idx, ref_idx)
    assert torch.equal(FF.max_pool1d(x, k, s, p, d, c).detach(), out.detach())


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "k, s, p, c, cip",
    [
        (3, 2, 1, False, True),
        (3, 2, 1, True, False),
        (2, None, 0, True, True),
        (4, 1, 2, False, False),
    ],
)
@pytest.mark.parametrize("shape", [(2, 3, 9), (4, 10)], ids=["batched", "unbatched"])
def test_avg_pool1d(device, dtype, k, s, p, c, cip, shape):
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    compare_with_torch(
        lambda x: FF.avg_pool1d(x, k, s, p, c, cip),
        lambda x: F.avg_pool1d(x, k, s, p, c, cip),
        [x],
        dtype,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_argument_forms(device):
    """Ints, 1-tuples and 2-tuples; stride None / () means kernel_size, as torch."""
    x = torch.randn(2, 3, 9, 8, device=device)
    for k, s in [(3, None), ((3,), ()), ((3, 2), [2]), ([2, 3], (1, 2))]:
        torch.testing.assert_close(FF.max_pool2d(x, k, s), F.max_pool2d(x, k, s))
        torch.testing.assert_close(FF.avg_pool2d(x, k, s), F.avg_pool2d(x, k, s))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.float32,) + HALF_DTYPES)
def test_max_pool_nan_and_inf(device, dtype):
    """NaN propagates and its index is reported as torch does; -inf inputs are pooled, not padding."""
    x = torch.randn(2, 19, 6, 6, device=device).to(dtype)
    x[0, 0, 1, 1] = float("nan")
    x[1, 1, 4, 2] = float("nan")
    x[1, 17, 2:4, 2] = float("nan")  # two NaNs in a window (a channels-last tail channel)
    x[1, 0] = float("-inf")
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        for args in [(2,), (3, 2, 1), (3, 1, 1, 2, True)]:
            out, idx = FF.max_pool2d(inp, *args, return_indices=True)
            ref, ref_idx = F.max_pool2d(inp, *args, return_indices=True)
            torch.testing.assert_close(out, ref, equal_nan=True)
            assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
def test_overlapping_windows_accumulate(device):
    """A stride smaller than the kernel: one input can be the max of several windows."""
    x = torch.zeros(1, 1, 5, 5, device=device)
    x[0, 0, 2, 2] = 1.0
    x = x.requires_grad_()
    FF.max_pool2d(x, 3, 1, 1).sum().backward()
    assert x.grad[0, 0, 2, 2].item() == 9.0


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_half_overlapping_windows_sum_in_float32(channels_last):
    """The nine windows that share one maximum send it 256 and eight 1s: 264 in bfloat16,
    where a bfloat16 running sum (spacing 2 above 256) would drop every 1 and give 256."""
    x = torch.zeros(1, 1, 5, 5, dtype=torch.bfloat16)
    x[0, 0, 2, 2] = 1.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.zeros(1, 1, 5, 5, dtype=torch.bfloat16)
    g[0, 0, 1:4, 1:4] = 1.0
    g[0, 0, 1, 1] = 256.0  # the first window that takes the maximum
    for pool in (
        lambda t: FF.max_pool2d(t, 3, 1, 1),
        lambda t: FF.avg_pool2d(t, 3, 1, 1, divisor_override=1),
    ):
        (grad,) = torch.autograd.grad(pool(x), x, g)
        assert grad[0, 0, 2, 2].item() == 264.0


@pytest.mark.parametrize("device", DEVICES)
def test_backward_ops_direct(device):
    """The backward ops called directly give torch's input gradients."""
    x = distinct((2, 3, 9, 8), device, torch.float64)
    out, idx = MAX_OP(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
    g = torch.randn_like(out)
    ref = torch.ops.aten.max_pool2d_with_indices_backward(
        g, x, [3, 3], [2, 2], [1, 1], [1, 1], True, idx
    )
    assert_close_to_reference(MAX_BACKWARD(g, x, idx, [3, 3], [2, 2], [1, 1], [1, 1], True), ref)
    out = AVG_OP(x, [3, 2], [2, 1], [1, 0], False, False, None)
    g = torch.randn_like(out)
    ref = torch.ops.aten.avg_pool2d_backward(g, x, [3, 2], [2, 1], [1, 0], False, False, None)
    assert_close_to_reference(AVG_BACKWARD(g, x, [3, 2], [2, 1], [1, 0], False, False, None), ref)


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_mode(device):
    x = torch.randn(2, 3, 7, 7, device=device, requires_grad=True)
    with torch.no_grad():
        assert not FF.max_pool2d(x, 2).requires_grad and not FF.avg_pool2d(x, 2).requires_grad


# ---------------------------------------------------------------------------------------------
# The op contract (op_contract.py): opcheck, compile, gradcheck, no double backward, inputs
# unchanged, empty and non-contiguous inputs, bad dtypes; then compile with dynamic shapes
# ---------------------------------------------------------------------------------------------


def _pool(name, *args, **kwargs):
    """A Sample function: FF.<name> (or F.<name>, for the reference) with these arguments."""
    return dict(pool=name, args=args, **kwargs)


class TestPoolingContract(OpContract):
    def fn(self, x, *, pool, args=(), **kwargs):
        return getattr(FF, pool)(x, *args, **kwargs)

    def reference(self, x, *, pool, args=(), **kwargs):
        return getattr(F, pool)(x, *args, **kwargs)

    def opcheck_samples(self, device, dtype):
        samples = []
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = distinct((2, 3, 7, 6), device, dtype, fmt).requires_grad_()
            with torch.no_grad():
                out, idx = MAX_OP(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
                avg = AVG_OP(x, [3, 3], [2, 2], [1, 1], True, False, None)
            samples += [
                Sample([x, [3, 3], [2, 2], [1, 1], [1, 1], True], op=MAX_OP),
                Sample([x[0], [2, 3], [], [0, 1], [1, 1], False], op=MAX_OP),
                Sample([x, [3, 3], [2, 2], [1, 1], True, False, None], op=AVG_OP),
                Sample([x[0], [2, 2], [1, 1], [0, 0], False, True, 3], op=AVG_OP),
                Sample(
                    [torch.randn_like(out), x.detach(), idx, [3, 3], [2, 2], [1, 1], [1, 1], True],
                    op=MAX_BACKWARD,
                ),
                Sample(
                    [torch.randn_like(avg), x.detach(), [3, 3], [2, 2], [1, 1], True, False, None],
                    op=AVG_BACKWARD,
                ),
            ]
            for i, s in enumerate(samples[-6:]):
                s.name = f"{fmt}-{i}"
        return samples

    def compile_samples(self, device):
        x = torch.randn(2, 3, 9, 8, device=device, requires_grad=True)
        x1 = torch.randn(2, 3, 9, device=device, requires_grad=True)
        x_cl = x.detach().contiguous(memory_format=torch.channels_last)
        return [
            Sample([x], fn=lambda x: FF.max_pool2d(x, 3, 2, 1, ceil_mode=True) * 2),
            Sample([x], fn=lambda x: FF.max_pool2d(x, 2, return_indices=True)),
            Sample([x], fn=lambda x: FF.avg_pool2d(x, 3, 2, 1, count_include_pad=False) + 1),
            Sample([x1], fn=lambda x: FF.max_pool1d(x, 3, 2) + FF.avg_pool1d(x, 3, 2)),
            Sample([x_cl], fn=lambda x: FF.avg_pool2d(x, 2), name="channels_last"),
        ]

    def gradcheck_samples(self, device):
        samples = []
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = distinct((2, 2, 6, 5), device, torch.float64, fmt).requires_grad_()
            samples += [
                Sample([x], _pool("max_pool2d", 3, 2, 1, 1, True), name=f"max-{fmt}"),
                Sample([x], _pool("max_pool2d", 2, 1, 1, 2), name=f"max_dilated-{fmt}"),
                Sample([x], _pool("avg_pool2d", 3, 2, 1, True, False), name=f"avg-{fmt}"),
                Sample(
                    [x],
                    _pool("avg_pool2d", (2, 3), 1, (1, 1), False, True, 4),
                    name=f"avg_divisor-{fmt}",
                ),
            ]
        x1 = distinct((2, 7), device, torch.float64).requires_grad_()
        return samples + [
            Sample([x1], _pool("max_pool1d", 3, 2, 1), name="max1d"),
            Sample([x1], _pool("avg_pool1d", 3, 2, 1, True), name="avg1d"),
        ]

    def double_backward_samples(self, device):
        x = distinct((1, 2, 5, 5), device, torch.float64).requires_grad_()
        return [
            Sample([x], _pool("max_pool2d", 2, 1), backward_name="max_pool2d"),
            Sample([x], _pool("avg_pool2d", 2, 1), backward_name="avg_pool2d"),
            Sample([x], _pool("max_pool2d", 2), backward_name="max_pool2d"),
        ]

    def unchanged_samples(self, device, dtype):
        x = torch.randn(2, 3, 7, 7, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn(2, 3, 4, 4, device=device, dtype=dtype)
        return [
            Sample([x], _pool(name, 3, 2, 1), grad_output=g, name=name)
            for name in ("max_pool2d", "avg_pool2d")
        ]

    def empty_samples(self, device):
        x = torch.randn(0, 3, 6, 6, device=device, requires_grad=True)
        return [Sample([x], _pool(name, 2), name=name) for name in ("max_pool2d", "avg_pool2d")]

    def noncontiguous_samples(self, device, dtype):
        if dtype != torch.float32:
            return []
        x = distinct((2, 3, 8, 8), device, dtype)
        g = torch.randn(4, 4, 2, 3, device=device).permute(2, 3, 0, 1)  # a permuted grad_output
        return [
            Sample([inp.requires_grad_()], _pool(name, 2), grad_output=g, name=f"{name}-{i}")
            for i, inp in enumerate((x, x.contiguous(memory_format=torch.channels_last)))
            for name in ("max_pool2d", "avg_pool2d")
        ]

    def bad_dtype_calls(self, device):
        x = torch.randn(2, 3, 6, 6, device=device).long()
        return [
            (lambda: FF.max_pool2d(x, 2), "input", "float"),
            (lambda: FF.avg_pool2d(x, 2), "input", "float"),
        ]


@pytest.mark.parametrize("device", DEVICES)
def test_compile_dynamic_shapes(device):
    f = torch.compile(
        lambda x: FF.max_pool2d(x, 3, 2, 1) + FF.avg_pool2d(x, 3, 2, 1),
        fullgraph=True,
        backend="aot_eager",
        dynamic=True,
    )
    for shape in [(2, 3, 9, 8), (1, 2, 12, 7), (3, 1, 5, 5)]:
        x = torch.randn(shape, device=device)
        torch.testing.assert_close(f(x), F.max_pool2d(x, 3, 2, 1) + F.avg_pool2d(x, 3, 2, 1))


# ---------------------------------------------------------------------------------------------
# Modules and convert
# ---------------------------------------------------------------------------------------------

MODULE_PAIRS = [
    (
        fnn.MaxPool2d,
        nn.MaxPool2d,
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        (2, 3, 9, 8),
    ),
    (fnn.MaxPool1d, nn.MaxPool1d, dict(kernel_size=3, stride=1, dilation=2), (2, 3, 9)),
    (
        fnn.AvgPool2d,
        nn.AvgPool2d,
        dict(kernel_size=(3, 2), padding=1, count_include_pad=False, divisor_override=None),
        (2, 3, 9, 8),
    ),
    (fnn.AvgPool2d, nn.AvgPool2d, dict(kernel_size=2, divisor_override=3), (3, 9, 8)),
    (
        fnn.AvgPool1d,
        nn.AvgPool1d,
        dict(kernel_size=4, stride=2, padding=2, ceil_mode=True),
        (2, 3, 9),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "ours, theirs, kwargs, shape",
    MODULE_PAIRS,
    ids=[f"{p[0].__name__}-{i}" for i, p in enumerate(MODULE_PAIRS)],
)
def test_modules(device, ours, theirs, kwargs, shape):
    m, t = ours(**kwargs), theirs(**kwargs)
    assert isinstance(m, theirs) and repr(m) == repr(t)
    x = distinct(shape, device, torch.float32).requires_grad_()
    compare_with_torch(m, t, [x], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_module_return_indices(device):
    x = distinct((2, 3, 8, 8), device, torch.float32)
    for ours, theirs, inp in (
        (fnn.MaxPool2d, nn.MaxPool2d, x),
        (fnn.MaxPool1d, nn.MaxPool1d, x[0]),
    ):
        out, idx = ours(2, return_indices=True)(inp)
        ref, ref_idx = theirs(2, return_indices=True)(inp)
        assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
def test_convert_and_compile(device):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.Flatten(1),
        nn.Unflatten(1, (4, 4)),
        nn.MaxPool1d(2),
        nn.AvgPool1d(2),
    ).to(device)
    x = torch.randn(2, 3, 8, 8, device=device)
    expected = model(x)
    report = fnn.convert(model)
    assert [kind for _, kind, _ in report.swapped] == [
        "Conv2d",
        "MaxPool2d",
        "AvgPool2d",
        "MaxPool1d",
        "AvgPool1d",
    ]
    assert isinstance(model[1], fnn.MaxPool2d) and isinstance(model[3], fnn.AvgPool2d)
    assert isinstance(model[6], fnn.MaxPool1d) and isinstance(model[7], fnn.AvgPool1d)
    assert model[3].ceil_mode
    torch.testing.assert_close(model(x), expected)
    check_compile_module(model, x.requires_grad_())


# ---------------------------------------------------------------------------------------------
# Export and autocast
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_export(device):
    model = (
        nn.Sequential(
            fnn.MaxPool2d(3, 2, 1, ceil_mode=True),
            nn.ReLU(),
            fnn.AvgPool2d(2, count_include_pad=False, padding=1),
            nn.Flatten(2),
            fnn.MaxPool1d(2),
            fnn.AvgPool1d(3, 1, 1),
        )
        .to(device)
        .eval()
    )
    x = torch.randn(2, 3, 11, 9, device=device)
    ep = torch.export.export(model, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.fastdl.max_pool2d_forward.default) == 2
    assert targets.count(torch.ops.fastdl.avg_pool2d_forward.default) == 2
    x2 = torch.randn(2, 3, 11, 9, device=device)
    torch.testing.assert_close(ep.module()(x2), model(x2))
    ref = nn.Sequential(
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.ReLU(),
        nn.AvgPool2d(2, count_include_pad=False, padding=1),
        nn.Flatten(2),
        nn.MaxPool1d(2),
        nn.AvgPool1d(3, 1, 1),
    )
    torch.testing.assert_close(ep.module()(x2), ref(x2))


def test_export_return_indices():
    model = fnn.MaxPool2d(2, return_indices=True).eval()
    x = torch.randn(2, 3, 6, 5)
    ep = torch.export.export(model, (x,))
    out, idx = ep.module()(x)
    ref_out, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_autocast_cpu_half_input(dtype, channels_last):
    """torch's CPU autocast has no rule for pooling: a half input (an autocast conv's output)
    is pooled in its dtype, a float32 one stays float32. fastdl's half kernels run as they
    are (the same result as outside autocast), and match torch's."""
    x = torch.randn(2, 3, 9, 8).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    fns = [
        (lambda f: lambda t: f.max_pool2d(t, 3, 2, 1)),
        (lambda f: lambda t: f.max_pool1d(t[0], 3, 2)),
        (lambda f: lambda t: f.avg_pool2d(t, 3, 2, 1, count_include_pad=False)),
        (lambda f: lambda t: f.avg_pool1d(t[0], 2)),
    ]
    outside = [fn(FF)(x) for fn in fns]
    with torch.autocast("cpu", dtype=dtype):
        outs = [fn(FF)(x) for fn in fns]
        refs = [fn(F)(x) for fn in fns]
        for fn in fns:
            assert (
                fn(FF)(x.detach().float()).dtype == fn(F)(x.detach().float()).dtype == torch.float32
            )
    for ours, theirs, plain in zip(outs, refs, outside):
        assert ours.dtype == theirs.dtype == dtype
        assert torch.equal(ours, plain)
        torch.testing.assert_close(ours, theirs)  # one rounding of a float32 value each
        (g_ours,) = torch.autograd.grad(ours.float().sum(), x)
        (g_theirs,) = torch.autograd.grad(theirs.float().sum(), x)
        assert g_ours.dtype == dtype
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("planes,ceil_mode", [(2, False), (1, True), (3, True)])
def test_max_pool_window_of_only_padding(device, planes, ceil_mode):
    """A window that holds only padding (the dilation steps over the whole input) gives -inf
    and sends its gradient nowhere. (The differential fuzzer found torch's index for it past
    the plane, its CPU backward adding that gradient to the next plane's element, and, for
    the last plane, writing past the gradient: a segmentation fault.)"""
    x = (torch.arange(planes, dtype=torch.float32, device=device) + 3).view(planes, 1, 1)
    x.requires_grad_()  # (N, C=1, L=1)
    out = FF.max_pool1d(x, 2, stride=2, padding=1, dilation=2, ceil_mode=ceil_mode)
    assert out.shape == (planes, 1, 1) and (out == float("-inf")).all()
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad, torch.zeros_like(grad))
