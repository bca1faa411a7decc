"""fastdl histogram: bad arguments raise a clear error naming the argument, on every device and
kernel, and leave the inputs untouched (the op's values and gradients: test_histogram.py)."""

import math
import re

import pytest
import torch

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from helpers import CUDA_AVAILABLE, DEVICES, HALF_DTYPES, assert_raises_naming, assert_unchanged

FAMILY = "histogram"  # the emulator summary counts test cases per op family

OP = torch.ops.fastdl.histogram_forward
OP_BACKWARD = torch.ops.fastdl.histogram_backward
KERNELS = ("sigmoid", "soft", "rbf", "hard")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

ERRORS = (RuntimeError, ValueError)


def _raises(fn, arg, *words):
    """fn() raises RuntimeError or ValueError naming ``arg`` (as a word) and every one of
    ``words``; and leaves nothing half done (no crash)."""
    info = assert_raises_naming(ERRORS, fn, *words)
    message = str(info.value)
    assert re.search(rf"\b{re.escape(arg)}\b", message), f"error does not name {arg!r}: {message!r}"


def _good(device, dtype=torch.float32, bags=2, n=6, f=3, b=4):
    x = torch.rand(bags, n, f, device=device, dtype=dtype)
    c = ((torch.arange(b, device=device, dtype=dtype) + 0.5) / b).expand(f, b).contiguous()
    w = torch.full((f, b), 2.0 * b, device=device, dtype=dtype)
    return x, c, w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5), ()], ids=["1d", "4d", "0d"])
def test_bad_x_rank(device, shape):
    _, c, w = _good(device, f=5)
    x = torch.rand(shape, device=device)
    _raises(lambda: FF.histogram(x, c, w), "x", str(list(shape)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape",
    [(4, 3), (3, 4, 1), (), (2, 4), (1, 4)],
    ids=["transposed", "3d", "0d", "wrong_F", "one_row"],
)
@pytest.mark.parametrize("which", ["centers", "widths", "both"])
def test_bad_centers_widths_shape(device, shape, which):
    """x has F = 3, B = 4: (F, B) or (B,) only. One of them bad names that one; both bad (so
    they agree with each other) names one of them and the shape."""
    x, c, w = _good(device)
    if which in ("centers", "both"):
        c = torch.full(shape, 0.5, device=device)
    if which in ("widths", "both"):
        w = torch.full(shape, 2.0, device=device)
    if which == "both":
        info = assert_raises_naming(ERRORS, lambda: FF.histogram(x, c, w), str(list(shape)))
        assert re.search(r"\b(centers|widths)\b", str(info.value)), str(info.value)
    else:
        _raises(lambda: FF.histogram(x, c, w), which)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shapes",
    [((3, 4), (4,)), ((4,), (3, 4)), ((3, 4), (3, 5))],
    ids=["per_feature_vs_shared", "shared_vs_per_feature", "different_B"],
)
def test_centers_widths_shapes_differ(device, shapes):
    x, _, _ = _good(device)
    c = torch.full(shapes[0], 0.5, device=device)
    w = torch.full(shapes[1], 2.0, device=device)
    # names widths and what was expected of it (centers' shape) and what came
    _raises(lambda: FF.histogram(x, c, w), "widths", str(list(shapes[0])), str(list(shapes[1])))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("value", [0.0, -1.0, -1e-30], ids=["zero", "negative", "tiny_negative"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_feature", "shared"])
def test_non_positive_widths(device, kernel, value, shared):
    x, c, w = _good(device)
    if shared:
        c, w = c[0].clone(), w[0].clone()
    w.view(-1)[-1] = value
    _raises(lambda: FF.histogram(x, c, w, kernel), "widths")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["triangular", "", "gaussian", "soft "])
def test_unknown_kernel(device, kernel):
    x, c, w = _good(device)
    _raises(lambda: FF.histogram(x, c, w, kernel), "kernel")
    if kernel:
        _raises(lambda: FF.histogram(x, c, w, kernel), "kernel", kernel.strip())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape",
    [(2, 7), (2,), (2, 6, 1), (6,), (1, 6), (3, 6)],
    ids=["N_plus_1", "1d", "3d", "unbatched_shape", "one_bag", "bags_plus_1"],
)
def test_bad_mask_shape(device, shape):
    x, c, w = _good(device)
    mask = torch.ones(shape, dtype=torch.bool, device=device)
    _raises(lambda: FF.histogram(x, c, w, "soft", mask), "mask", str(list(shape)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 6), (6, 1), (5,)])
def test_bad_mask_shape_unbatched(device, shape):
    x, c, w = _good(device)
    mask = torch.ones(shape, dtype=torch.bool, device=device)
    _raises(lambda: FF.histogram(x[0], c, w, "soft", mask), "mask", str(list(shape)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int64])
def test_bad_mask_dtype(device, dtype):
    x, c, w = _good(device)
    mask = torch.ones(2, 6, device=device, dtype=dtype)
    _raises(lambda: FF.histogram(x, c, w, "soft", mask), "mask")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_bad_x_dtype(device, dtype):
    x, c, w = _good(device)
    _raises(lambda: FF.histogram(x.to(dtype), c, w), "x")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["centers", "widths"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_parameter_dtype_mismatch(device, name, dtype):
    x, c, w = _good(device)
    if name == "centers":
        c = c.to(dtype)
    else:
        w = w.to(dtype)
    _raises(lambda: FF.histogram(x, c, w), name)


def test_parameter_dtype_mismatch_float64_x():
    x, c, w = _good("cpu", torch.float64)
    _raises(lambda: FF.histogram(x, c.float(), w), "centers")
    _raises(lambda: FF.histogram(x, c, w.float()), "widths")


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
@pytest.mark.parametrize("name", ["centers", "widths", "mask"])
def test_device_mismatch(name):
    x, c, w = _good("cuda")
    mask = torch.ones(2, 6, dtype=torch.bool, device="cuda")
    args = {"x": x, "centers": c, "widths": w, "mask": mask}
    args[name] = args[name].cpu()
    _raises(
        lambda: FF.histogram(args["x"], args["centers"], args["widths"], "soft", args["mask"]),
        name,
        "device",
    )
    cpu = {k: v.cpu() for k, v in args.items()}
    cpu[name] = cpu[name].cuda()  # x on the CPU, the other on the GPU
    _raises(
        lambda: FF.histogram(cpu["x"], cpu["centers"], cpu["widths"], "soft", cpu["mask"]),
        name,
        "device",
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_x_with_float64_parameters_raises(device, dtype):
    """Half x takes parameters of its dtype or float32 (on every device), nothing else."""
    x, c, w = _good(device, dtype)
    _raises(lambda: FF.histogram(x, c.double(), w), "centers")
    _raises(lambda: FF.histogram(x, c, w.double()), "widths")
    _raises(lambda: FF.histogram(x.float(), c, w), "centers")  # float32 x, half parameters
    other = torch.bfloat16 if dtype == torch.float16 else torch.float16
    _raises(lambda: FF.histogram(x, c, w.to(other)), "widths")


@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_bad_input(device):
    x, c, w = _good(device)
    g = torch.randn(2, 3, 4, device=device)
    mask = [True, True, True]
    _raises(lambda: OP_BACKWARD(g[:, :, :3], x, c, w, "soft", None, True, 1.0, mask), "grad_output")
    _raises(lambda: OP_BACKWARD(g[0], x, c, w, "soft", None, True, 1.0, mask), "grad_output")
    _raises(lambda: OP_BACKWARD(g.double(), x, c, w, "soft", None, True, 1.0, mask), "grad_output")
    _raises(lambda: OP_BACKWARD(g, x, c, w, "triangular", None, True, 1.0, mask), "kernel")
    _raises(lambda: OP_BACKWARD(g, x, c, -w, "soft", None, True, 1.0, mask), "widths")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_leaves_inputs_unchanged(device):
    x, c, w = _good(device)
    bad_w = w.clone()
    bad_w[0, 0] = -1.0
    mask = torch.ones(2, 7, dtype=torch.bool, device=device)
    assert_unchanged(
        [x, c, w, bad_w, mask],
        lambda: (
            pytest.raises(ERRORS, FF.histogram, x, c, bad_w),
            pytest.raises(ERRORS, FF.histogram, x, c, w, "soft", mask),
        ),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sharpness", [0.0, -5.0, math.nan, math.inf])
def test_bad_sharpness(device, sharpness):
    """A sigmoid sharpness that is not finite and positive has no meaning (it would give NaN
    or negative counts): rejected for every kernel, like the other arguments."""
    x = torch.rand(2, 3, 4, device=device)
    c, w = torch.rand(4, 5, device=device), torch.full((4, 5), 0.2, device=device)
    assert_raises_naming(
        ValueError, lambda: FF.histogram(x, c, w, "sigmoid", sharpness=sharpness), "sharpness"
    )
