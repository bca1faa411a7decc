"""fastdl conv1d/conv2d (ops, functional, modules) against torch.nn.functional (the GEMM kernels
under them: test_conv_gemm.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from fastdl.models import LeNet5
from helpers import (
    device_dtypes,
    DEVICES,
    assert_close_to_reference,
    assert_raises_naming,
    compare_with_torch,
)
from op_contract import OpContract, Sample

FAMILY = "conv"  # the emulator summary counts test cases per op family

# Every device with every dtype: the CPU kernels take float16/bfloat16 too (computed in float32).
DEVICE_DTYPES = device_dtypes(cpu_half=True)

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")

OP = torch.ops.fastdl.conv2d_forward
BACKWARD = torch.ops.fastdl.conv2d_backward


def make(shape, device, dtype, requires_grad=True):
    return torch.randn(shape, device=device, dtype=dtype).requires_grad_(requires_grad)


# (input shape, weight shape, stride, padding, dilation, groups): dense, strided, dilated,
# grouped, depthwise (and with a channel multiplier), 1x1, a kernel as large as the (padded)
# input, unbatched, odd sizes and asymmetric geometry.
CASES = [
    ((2, 3, 9, 11), (4, 3, 3, 3), 1, 1, 1, 1),
    ((2, 4, 9, 11), (6, 2, 3, 3), 2, 0, 2, 2),
    ((2, 4, 8, 7), (4, 1, 3, 3), 1, 1, 1, 4),
    ((2, 4, 8, 7), (8, 1, 3, 2), (2, 1), (1, 0), 1, 4),
    ((2, 4, 7, 9), (8, 1, 3, 3), 2, 2, 2, 4),
    ((2, 5, 6, 7), (3, 5, 1, 1), 1, 0, 1, 1),
    ((2, 5, 6, 7), (3, 5, 1, 1), 2, 0, 1, 1),
    ((1, 3, 5, 7), (2, 3, 5, 7), 1, 0, 1, 1),
    ((2, 3, 3, 3), (2, 3, 5, 5), 1, 1, 1, 1),
    ((6, 5, 7), (4, 3, 3, 3), 1, 1, 1, 2),
    ((2, 3, 10, 9), (4, 3, 2, 4), (3, 2), (1, 2), (2, 1), 1),
    ((1, 1, 13, 4), (1, 1, 5, 1), (4, 1), (2, 0), 1, 1),
    ((2, 6, 5, 5), (6, 3, 3, 3), 1, 1, 1, 2),
    # depthwise stride 1 (the vectorised CPU paths): dilation, padding beyond the kernel's
    # extent, a multiplier, rows longer than a vector with a tail
    ((2, 4, 7, 13), (8, 1, 3, 2), 1, (3, 4), (2, 3), 4),
    ((1, 3, 5, 19), (3, 1, 5, 5), 1, 2, 1, 3),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_conv2d_matches_torch(device, dtype, case, bias):
    x_shape, w_shape, stride, padding, dilation, groups = case
    args = [
        make(x_shape, device, dtype),
        make(w_shape, device, dtype),
        make(w_shape[0], device, dtype) if bias else None,
    ]
    compare_with_torch(
        lambda x, w, b: FF.conv2d(x, w, b, stride, padding, dilation, groups),
        lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
        args,
        dtype,
    )


# Padding strings: 'same' with odd and even kernels and dilations (an odd total padding puts the
# extra zero on the right/bottom), 'valid'.
@pytest.mark.parametrize(
    "w_shape, dilation, padding",
    [
        ((4, 3, 3, 3), 1, "same"),
        ((4, 3, 2, 2), 1, "same"),
        ((4, 3, 4, 3), (1, 2), "same"),
        ((4, 3, 2, 4), (3, 1), "same"),
        ((4, 3, 3, 2), 1, "valid"),
    ],
)
@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_conv2d_padding_strings(device, dtype, w_shape, dilation, padding):
    args = [
        make((2, 3, 8, 7), device, dtype),
        make(w_shape, device, dtype),
        make(w_shape[0], device, dtype),
    ]
    out, ref, _, _ = compare_with_torch(
        lambda x, w, b: FF.conv2d(x, w, b, 1, padding, dilation),
        lambda x, w, b: F.conv2d(x, w, b, 1, padding, dilation),
        args,
        dtype,
    )
    if padding == "same":
        assert out.shape[-2:] == args[0].shape[-2:]


CASES_1D = [
    ((2, 3, 11), (4, 3, 3), 1, 1, 1, 1, True),
    ((2, 4, 12), (6, 2, 4), 2, 2, 2, 2, False),
    ((2, 4, 9), (8, 1, 3), 1, 1, 1, 4, True),
    ((3, 10), (2, 3, 3), 1, 0, 1, 1, True),  # unbatched
    ((2, 3, 10), (2, 3, 1), 3, 0, 1, 1, True),
    ((2, 3, 10), (2, 3, 4), 1, "same", 1, 1, True),
    ((2, 3, 10), (2, 3, 4), 1, "same", 3, 1, False),
    ((2, 3, 10), (2, 3, 4), 1, "valid", 1, 1, True),
]


@pytest.mark.parametrize("case", CASES_1D)
@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_conv1d_matches_torch(device, dtype, case):
    x_shape, w_shape, stride, padding, dilation, groups, bias = case
    args = [
        make(x_shape, device, dtype),
        make(w_shape, device, dtype),
        make(w_shape[0], device, dtype) if bias else None,
    ]
    compare_with_torch(
        lambda x, w, b: FF.conv1d(x, w, b, stride, padding, dilation, groups),
        lambda x, w, b: F.conv1d(x, w, b, stride, padding, dilation, groups),
        args,
        dtype,
    )


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_channels_last(device, dtype, groups):
    x = (
        make((2, 4, 7, 6), device, dtype)
        .detach()
        .contiguous(memory_format=torch.channels_last)
        .requires_grad_()
    )
    w = make((8, 4 // groups, 3, 3), device, dtype)
    fn = lambda x, w: FF.conv2d(x, w, None, 1, 1, 1, groups)  # noqa: E731
    ref = lambda x, w: F.conv2d(x, w, None, 1, 1, 1, groups)  # noqa: E731
    out, torch_out, _, _ = compare_with_torch(fn, ref, [x, w], dtype)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last) == torch_out.is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("device", DEVICES)
def test_only_some_gradients(device):
    x, w = (
        make((2, 4, 6, 6), device, torch.float64),
        make((6, 2, 3, 3), device, torch.float64, False),
    )
    b = make(6, device, torch.float64, False)
    FF.conv2d(x, w, b, 1, 1, 1, 2).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    F.conv2d(x2, w, b, 1, 1, 1, 2).sum().backward()
    assert_close_to_reference(x.grad, x2.grad, torch.float64)
    gi, gw, gb = BACKWARD(
        torch.ones(2, 6, 6, 6, device=device, dtype=torch.float64),
        x.detach(),
        w,
        [1, 1],
        [1, 1],
        [1, 1],
        2,
        [False, True, False],
    )
    assert gi is None and gb is None and gw.shape == w.shape


# ---- the op contract (op_contract.py): opcheck, compile, gradcheck, no double backward, inputs
# unchanged, empty and non-contiguous inputs, bad dtypes ----


class TestConvContract(OpContract):
    backward_name = "conv2d"

    def fn(self, x, w, b=None, *, conv=FF.conv2d, **kw):
        return conv(x, w, b, **kw)

    def reference(self, x, w, b=None, *, conv=FF.conv2d, **kw):
        return {FF.conv2d: F.conv2d, FF.conv1d: F.conv1d}[conv](x, w, b, **kw)

    def opcheck_samples(self, device, dtype):
        if dtype != torch.float64:
            return []
        x, w = make((2, 4, 6, 5), device, dtype), make((6, 2, 3, 3), device, dtype)
        b = make(6, device, dtype)
        gy = torch.randn(2, 6, 6, 5, device=device, dtype=dtype)
        x_cl = x.detach().contiguous(memory_format=torch.channels_last)
        return [
            Sample([x, w, b, [2, 1], [1, 0], [1, 2], 2], op=OP, name="strided_grouped"),
            Sample(
                [x, make((4, 1, 3, 3), device, dtype), None, [1, 1], [1, 1], [1, 1], 4],
                op=OP,
                name="depthwise",
            ),
            Sample([x_cl, w, None, [1, 1], [0, 0], [1, 1], 2], op=OP, name="channels_last"),
        ] + [
            Sample(
                [gy, x.detach(), w.detach(), [1, 1], [1, 1], [1, 1], 2, mask],
                op=BACKWARD,
                name=f"backward-{mask}",
            )
            for mask in ([True, True, True], [True, False, False], [False, True, True])
        ]

    def compile_samples(self, device):
        f32 = torch.float32
        module = fnn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect", groups=4).to(device)
        return [
            Sample(
                [
                    make((2, 4, 8, 8), device, f32),
                    make((6, 2, 3, 2), device, f32),
                    make(6, device, f32),
                ],
                dict(stride=1, padding="same", dilation=1, groups=2),
                name="conv2d_same",
            ),
            Sample(
                [make((2, 3, 9), device, f32), make((4, 3, 3), device, f32)],
                dict(conv=FF.conv1d, stride=2, padding=1),
                name="conv1d",
            ),
            Sample([make((2, 4, 6, 6), device, f32)], fn=module, name="module"),
        ]

    def gradcheck_samples(self, device):
        f64 = torch.float64
        samples = [
            Sample(
                [make(xs, device, f64), make(ws, device, f64), make(ws[0], device, f64)],
                dict(stride=s, padding=p, dilation=d, groups=g),
                name=str(xs),
            )
            for xs, ws, s, p, d, g in GRADCHECK_CASES
        ]
        return samples + [
            Sample(
                [make((2, 3, 7), device, f64), make((4, 3, 4), device, f64)],
                dict(conv=FF.conv1d, padding="same"),
                name="conv1d_same",
            )
        ]

    def double_backward_samples(self, device):
        return self.gradcheck_samples(device)[: len(GRADCHECK_CASES)]

    def unchanged_samples(self, device, dtype):
        return self.noncontiguous_samples(device, dtype)

    def empty_samples(self, device):
        f64 = torch.float64
        return [
            Sample(
                [
                    make((0, 4, 5, 5), device, f64),
                    make((4, 4 // g, 3, 3), device, f64),
                    make(4, device, f64),
                ],
                dict(stride=1, padding=1, dilation=1, groups=g),
                name=f"groups{g}",
            )
            for g in (1, 4)
        ]

    def noncontiguous_samples(self, device, dtype):
        """Transposed input and weight, and a grad_output that is not contiguous."""
        samples = []
        for groups in (1, 4):
            xt = make((2, 4, 6, 7), device, dtype).detach().transpose(-1, -2).requires_grad_()
            wt = make((8, 4 // groups, 3, 3), device, dtype).detach().transpose(-1, -2)
            wt.requires_grad_()
            g = torch.randn(2, 8, 6, 7, device=device, dtype=dtype).transpose(-1, -2)
            samples.append(
                Sample(
                    [xt, wt],
                    dict(stride=1, padding=1, dilation=1, groups=groups),
                    grad_output=g,
                    name=f"groups{groups}",
                )
            )
        return samples

    def bad_dtype_calls(self, device):
        x, w = torch.randn(2, 4, 6, 6, device=device), torch.randn(6, 2, 3, 3, device=device)
        b64 = torch.randn(6, device=device).double()
        return [
            (lambda: FF.conv2d(x, w.double(), groups=2), "weight", "dtype"),
            (lambda: FF.conv2d(x, w, b64, groups=2), "bias", "dtype"),
            (lambda: FF.conv2d(x.int(), w.int(), groups=2), "input", "float32"),
        ]


GRADCHECK_CASES = [
    ((2, 4, 5, 6), (4, 2, 3, 2), (2, 1), 1, (1, 2), 2),
    ((1, 3, 5, 5), (6, 1, 3, 3), 1, 1, 1, 3),
    ((3, 4, 4), (2, 3, 2, 2), 1, 0, 1, 1),
]


# ---- modules ----


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("device", DEVICES)
def test_modules_padding_modes(device, padding_mode):
    for torch_cls, fastdl_cls, shape, kwargs in [
        (nn.Conv2d, fnn.Conv2d, (2, 4, 7, 8), dict(kernel_size=3, padding=(1, 2), stride=(2, 1))),
        (nn.Conv2d, fnn.Conv2d, (2, 4, 7, 8), dict(kernel_size=(2, 4), padding="same", groups=2)),
        (nn.Conv1d, fnn.Conv1d, (2, 4, 9), dict(kernel_size=3, padding=2, dilation=2)),
        (nn.Conv1d, fnn.Conv1d, (4, 9), dict(kernel_size=4, padding="same", groups=4, bias=False)),
    ]:
        torch.manual_seed(0)
        ref = torch_cls(4, 8, padding_mode=padding_mode, **kwargs).to(device, torch.float64)
        ours = fastdl_cls.from_torch(ref)
        assert repr(ours).replace(fastdl_cls.__name__, "") == repr(ref).replace(
            torch_cls.__name__, ""
        )
        x = make(shape, device, torch.float64)
        compare_with_torch(lambda x: ours(x), lambda x: ref(x), [x], torch.float64)


@pytest.mark.parametrize("cls", ["Conv1d", "Conv2d"])
def test_module_construction_and_state_dict(cls):
    torch.manual_seed(0)
    ref = getattr(nn, cls)(6, 4, 3, stride=2, padding=1, groups=2, bias=True)
    torch.manual_seed(0)
    ours = getattr(fnn, cls)(6, 4, 3, stride=2, padding=1, groups=2, bias=True)
    assert isinstance(ours, getattr(nn, cls))
    assert ours.extra_repr() == ref.extra_repr()
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape and torch.equal(p1, p2)  # same init
    other = getattr(nn, cls)(6, 4, 3, stride=2, padding=1, groups=2)
    ours.load_state_dict(other.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn((2, 6, 9) if cls == "Conv1d" else (2, 6, 9, 8))
    torch.testing.assert_close(ours(x), other(x))
    torch.testing.assert_close(ref(x), other(x))


def test_convert_swaps_convolutions():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, (3, 1), groups=4),
        nn.Flatten(2, 3),
        nn.Conv1d(4, 2, 1),
    )
    x = torch.randn(2, 3, 3, 6)
    expected = model(x)
    report = fnn.convert(model)
    assert [t for _, t, _ in report.swapped] == ["Conv2d", "Conv2d", "Conv1d"]
    assert (
        isinstance(model[0], fnn.Conv2d)
        and isinstance(model[2], fnn.Conv2d)
        and isinstance(model[4], fnn.Conv1d)
    )
    torch.testing.assert_close(model(x), expected)


# ---- bad input ----


def test_bad_inputs():
    x, w = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3)
    assert_raises_naming(RuntimeError, lambda: FF.conv2d(x, torch.randn(6, 2, 3)), "weight", "4-d")
    assert_raises_naming(RuntimeError, lambda: FF.conv1d(torch.randn(2, 4, 6), w), "weight", "3-d")
    assert_raises_naming(RuntimeError, lambda: FF.conv2d(torch.randn(6, 6), w), "input", "size")
    assert_raises_naming(
        RuntimeError,
        lambda: FF.conv2d(x, torch.randn(6, 1, 3, 3), groups=4),
        "groups=4",
        "divisible",
    )
    assert_raises_naming(
        RuntimeError, lambda: FF.conv2d(x, torch.randn(6, 3, 3, 3)), "channels", "4"
    )
    assert_raises_naming(
        RuntimeError, lambda: FF.conv2d(x, torch.randn(6, 4, 3, 3), groups=2), "channels"
    )
    assert_raises_naming(
        RuntimeError,
        lambda: FF.conv2d(x, torch.randn(6, 4, 9, 3), padding=1),
        "Kernel size can't be greater than actual input size",
    )
    assert_raises_naming(
        RuntimeError, lambda: FF.conv2d(x, w, groups=2, padding=-1), "negative padding"
    )
    assert_raises_naming(RuntimeError, lambda: FF.conv2d(x, w, groups=2, stride=0), "stride")
    assert_raises_naming(
        RuntimeError, lambda: FF.conv2d(x, w, groups=2, dilation=(1, 0)), "dilation"
    )
    assert_raises_naming(
        RuntimeError, lambda: FF.conv2d(x, w, torch.randn(5), groups=2), "bias", "(6,)"
    )
    assert_raises_naming(
        RuntimeError, lambda: FF.conv2d(x, w, groups=2, stride=2, padding="same"), "same", "strided"
    )
    assert_raises_naming(ValueError, lambda: nn.Conv2d(4, 4, 3, stride=2, padding="same"), "same")
    assert_raises_naming(
        RuntimeError, lambda: FF.conv2d(x, w, groups=2, padding="full"), "padding", "full"
    )
    assert_raises_naming(RuntimeError, lambda: OP(x, w, None, [1, 1], [0, 0], [1, 1], 0), "groups")
    assert_raises_naming(
        RuntimeError,
        lambda: BACKWARD(
            torch.randn(2, 6, 5, 5), x, w, [1, 1], [0, 0], [1, 1], 2, [True, True, True]
        ),
        "grad_output",
        "shape",
    )
    if torch.cuda.is_available():
        assert_raises_naming(
            RuntimeError, lambda: FF.conv2d(x.cuda(), w, groups=2), "weight", "device"
        )


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("groups", [1, 2])
def test_chunked_batch_small_budget(device, dtype, groups, monkeypatch):
    """The CUDA kernels cut the batch so the column buffer stays within its budget: with the
    budget at two images' columns, 5 images run as chunks of 2, 2 and 1 (forward and both
    gradients; the weight gradient accumulates over the chunks)."""
    x, w = make((5, 4, 7, 6), device, dtype), make((6, 4 // groups, 3, 3), device, dtype)
    b = make(6, device, dtype)
    monkeypatch.setenv("FASTDL_CONV_COLUMN_BUDGET", str(2 * 4 * 9 * 7 * 6))
    compare_with_torch(
        lambda x, w, b: FF.conv2d(x, w, b, 1, 1, 1, groups),
        lambda x, w, b: F.conv2d(x, w, b, 1, 1, 1, groups),
        [x, w, b],
        dtype,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_gradient_sums_in_float32(device, dtype):
    """grad_input of a half convolution: W^T @ grad_output stays float32 until col2im has
    summed the taps that read each input element (a 7x7 kernel: 49 taps), then rounds once."""
    x, w = make((2, 16, 12, 12), device, dtype), make((32, 16, 7, 7), device, dtype)
    compare_with_torch(
        lambda x, w: FF.conv2d(x, w, None, 1, 3),
        lambda x, w: F.conv2d(x, w, None, 1, 3),
        [x, w],
        dtype,
    )


def test_chunked_batch():
    """A batch whose column buffer exceeds the CPU budget runs in chunks (2 images, then 1)."""
    x, w, b = (
        make((3, 8, 300, 300), "cpu", torch.float32),
        make((5, 8, 3, 3), "cpu", torch.float32),
        make(5, "cpu", torch.float32),
    )
    y, ref = FF.conv2d(x, w, b, 1, 1), F.conv2d(x, w, b, 1, 1)
    go = torch.randn_like(ref)
    ours, theirs = torch.autograd.grad(y, (x, w, b), go), torch.autograd.grad(ref, (x, w, b), go)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    for name, a, e in zip(("input", "weight", "bias"), ours, theirs):
        torch.testing.assert_close(
            a, e, rtol=1e-4, atol=1e-3 * e.abs().max().item(), msg=lambda m: f"{name}: {m}"
        )


# ---- export, autocast, the GEMM kernels ----


@pytest.mark.parametrize("device", DEVICES)
def test_export(device):
    model = (
        nn.Sequential(
            fnn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            fnn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
        )
        .to(device)
        .eval()
    )
    x = torch.randn(2, 3, 7, 6, device=device)
    ep = torch.export.export(model, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(OP.default) == 2
    x2 = torch.randn(2, 3, 7, 6, device=device)
    torch.testing.assert_close(ep.module()(x2), model(x2))


def test_autocast_cpu():
    """CPU autocast: like torch's, conv2d returns bfloat16 (inputs rounded to bfloat16, float32
    accumulation); the gradients reach the float32 leaves in float32."""
    x, w, b = (
        make((2, 3, 8, 7), "cpu", torch.float32),
        make((5, 3, 3, 3), "cpu", torch.float32),
        make(5, "cpu", torch.float32),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = FF.conv2d(x, w, b, 1, 1)
        theirs = F.conv2d(x, w, b, 1, 1)
        ours1d = FF.conv1d(x[:, :, 0], w[..., 0], b, 1, 1)
    assert ours.dtype == theirs.dtype == ours1d.dtype == torch.bfloat16
    ref = F.conv2d(
        x.detach().bfloat16().double(),
        w.detach().bfloat16().double(),
        b.detach().bfloat16().double(),
        1,
        1,
    )
    assert_close_to_reference(ours, ref, torch.bfloat16, baseline=theirs)
    ours.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32
    grads = torch.autograd.grad(theirs.float().sum(), (x, w, b))
    for a, e in zip((x.grad, w.grad, b.grad), grads):
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2)
    # float64 is left alone by autocast, as torch's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert FF.conv2d(x.double(), w.double()).dtype == torch.float64


def test_autocast_cpu_lenet():
    """A whole LeNet-5 under CPU autocast: bfloat16 logits like the torch twin's (the pooling
    between the convolutions takes their bfloat16 outputs)."""
    torch.manual_seed(0)
    for pooling in ("avg", "max"):
        model = LeNet5(pooling=pooling)
        twin = model.torch_twin()
        x = torch.randn(4, 1, 32, 32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, theirs = model(x), twin(x)
        assert ours.dtype == theirs.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_depthwise_grad_input_with_an_infinite_weight(device):
    """Found by the differential fuzzer: the stride-1 depthwise backward multiplied the zero
    padding of grad_output by the weights, so an infinite weight gave NaN (0 * inf) at input
    positions it never touches; torch's answer is finite there."""
    x = torch.randn(2, 7, 9, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 4, 4, device=device, dtype=torch.float64)
    w[1, 0, 0, 3] = float("-inf")
    w[0, 0, 2, 1] = 1e30
    g = torch.randn(2, 6, 8, device=device, dtype=torch.float64)
    (ours,) = torch.autograd.grad(FF.conv2d(x, w, padding=1, groups=2), x, g)
    (ref,) = torch.autograd.grad(F.conv2d(x, w, padding=1, groups=2), x, g)
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf())
    assert ours[1].isfinite().any() and not ours[0].isnan().any()
    torch.testing.assert_close(ours, ref, equal_nan=True)
