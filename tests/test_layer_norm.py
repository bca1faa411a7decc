"""fastdl layer_norm (the op and the functional) against torch.nn.functional.layer_norm (the
modules: test_layer_norm_modules.py; half types and autocast: test_layer_norm_half.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from helpers import (
    devices,
    CUDA_AVAILABLE,
    DEVICE_DTYPES,
    DEVICES,
    HALF_DTYPES,
    assert_close_to_reference,
    assert_raises_naming,
    assert_unchanged,
    check_compile,
    compare_with_torch,
    device_dtypes,
)
from op_contract import OpContract, Sample

FAMILY = "norm"  # the emulator summary counts test cases per op family

OP = torch.ops.fastdl.layer_norm_forward
OP_BACKWARD = torch.ops.fastdl.layer_norm_backward

# (input shape, normalized_shape): 1-3 normalized dims, odd sizes, size 1, rows of one element,
# a row longer than any vector width with a remainder.
SHAPES = [
    ((3, 5), (5,)),
    ((2, 3, 7), (7,)),
    ((2, 3, 7), (3, 7)),
    ((2, 3, 4, 5), (3, 4, 5)),
    ((5,), (5,)),
    ((1, 1), (1,)),
    ((4, 1), (1,)),
    ((1, 2, 3), (2, 3)),
    ((3, 67), (67,)),
    ((2, 515), (515,)),
]
AFFINE = ["weight_bias", "weight", "bias", "none"]


def _params(ns, device, dtype, affine, param_dtype=None):
    param_dtype = param_dtype or dtype
    w = (
        torch.randn(ns, device=device, dtype=param_dtype).requires_grad_()
        if affine in ("weight_bias", "weight")
        else None
    )
    b = (
        torch.randn(ns, device=device, dtype=param_dtype).requires_grad_()
        if affine in ("weight_bias", "bias")
        else None
    )
    return w, b


def _fns(ns, eps=1e-5):
    ours = lambda x, w, b: FF.layer_norm(x, ns, w, b, eps)  # noqa: E731
    ref = lambda x, w, b: F.layer_norm(x, ns, w, b, eps)  # noqa: E731
    return ours, ref


# ---------------------------------------------------------------------------------------------
# Forward and gradients against torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape, ns", SHAPES, ids=[f"{s}-{n}" for s, n in SHAPES])
@pytest.mark.parametrize("affine", AFFINE)
def test_forward_backward(device, dtype, shape, ns, affine):
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    w, b = _params(ns, device, dtype, affine)
    out, ref, _, _ = compare_with_torch(*_fns(ns), [x, w, b], dtype)
    assert out.dtype == dtype and out.is_contiguous()


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("eps", [1e-5, 1e-2, 0.0])
def test_eps(device, dtype, eps):
    x = torch.randn(4, 9, device=device, dtype=dtype).requires_grad_()
    w, b = _params((9,), device, dtype, "weight_bias")
    compare_with_torch(*_fns((9,), eps), [x, w, b], dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_expanded_input(device, dtype):
    """A stride-0 (broadcast) input: every row is the same."""
    base = torch.randn(1, 6, device=device, dtype=dtype).requires_grad_()
    w, b = _params((6,), device, dtype, "weight_bias")
    compare_with_torch(
        lambda x, w, b: FF.layer_norm(x.expand(4, 6), (6,), w, b),
        lambda x, w, b: F.layer_norm(x.expand(4, 6), (6,), w, b),
        [base, w, b],
        dtype,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_large_offset_is_stable(device):
    """Rows with a large mean and small spread (Welford / two-pass, not E[x^2] - E[x]^2):
    float32 error vs a float64 reference at most twice torch's float32 error."""
    x = 1000.0 + 0.01 * torch.randn(8, 257, device=device, dtype=torch.float64)
    ref = F.layer_norm(x, (257,))
    ours = FF.layer_norm(x.float(), (257,)).double()
    theirs = F.layer_norm(x.float(), (257,)).double()
    err, torch_err = (ours - ref).abs().max().item(), (theirs - ref).abs().max().item()
    assert err <= 2 * torch_err + 1e-4, (err, torch_err)


@pytest.mark.parametrize("device, dtype", device_dtypes(only=(torch.float32, torch.float64)))
@pytest.mark.parametrize("value", [1.5, 1000.0, -12345.0])
def test_constant_rows_give_bias(device, dtype, value):
    """A constant row has x - mean == 0 exactly, so the output is exactly the bias (torch gives
    exactly 0 without affine). Catches computing y as x * rstd - mean * rstd, whose rounding
    error grows with |mean| * rstd (here rstd = 1/sqrt(eps) ~ 316)."""
    x = torch.full((3, 8), value, device=device, dtype=dtype)
    b = torch.randn(8, device=device, dtype=dtype)
    torch.testing.assert_close(F.layer_norm(x, (8,)), torch.zeros_like(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(FF.layer_norm(x, (8,)), torch.zeros_like(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(FF.layer_norm(x, (8,), None, b), b.expand_as(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "shape, ns", [((3, 5), (5,)), ((2, 3, 4), (3, 4)), ((1, 2, 3, 4), (2, 3, 4))]
)
def test_statistics_match_aten(device, dtype, shape, ns):
    """The op's mean and rstd outputs are aten.native_layer_norm's (shape (*, 1, ..., 1))."""
    x = torch.randn(shape, device=device, dtype=dtype)
    out, mean, rstd = OP(x, list(ns), None, None, 1e-5)
    ref_out, ref_mean, ref_rstd = torch.ops.aten.native_layer_norm(x, list(ns), None, None, 1e-5)
    stats_dtype = torch.float32 if dtype in HALF_DTYPES else dtype
    assert mean.shape == ref_mean.shape and rstd.shape == ref_rstd.shape
    assert mean.dtype == stats_dtype and rstd.dtype == stats_dtype
    tol = dict(rtol=1e-3, atol=1e-3) if dtype in HALF_DTYPES else {}
    if ref_mean.dtype != stats_dtype:  # aten on the CPU rounds half statistics to the input dtype
        eps = torch.finfo(ref_mean.dtype).eps
        tol = dict(rtol=2 * eps, atol=2 * eps)
    torch.testing.assert_close(mean, ref_mean.to(stats_dtype), **tol)
    torch.testing.assert_close(rstd, ref_rstd.to(stats_dtype), **tol)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
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
def test_backward_op_output_mask(device, dtype, mask):
    """The backward op computes exactly the gradients output_mask asks for."""
    x = torch.randn(3, 6, device=device, dtype=dtype)
    w = torch.randn(6, device=device, dtype=dtype)
    g = torch.randn(3, 6, device=device, dtype=dtype)
    _, mean, rstd = OP(x, [6], w, None, 1e-5)
    gi, gw, gb = OP_BACKWARD(g, x, [6], mean, rstd, w, list(mask))
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, torch.zeros_like(w)))
    F.layer_norm(xr, (6,), wr, br).backward(g)
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
    x = torch.randn(3, 5, device=device, dtype=dtype)
    w, b = _params((5,), device, dtype, "weight_bias")
    b.requires_grad_(False)
    compare_with_torch(*_fns((5,)), [x, w, b], dtype)
    x.requires_grad_()
    w.requires_grad_(False)
    compare_with_torch(*_fns((5,)), [x, w, b], dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_mode(device):
    x = torch.randn(3, 5, device=device, requires_grad=True)
    with torch.no_grad():
        y = FF.layer_norm(x, (5,))
    assert not y.requires_grad
    torch.testing.assert_close(y, F.layer_norm(x.detach(), (5,)))


# ---------------------------------------------------------------------------------------------
# The op contract (op_contract.py): opcheck, compile, gradcheck, no double backward, inputs
# unchanged, empty and non-contiguous inputs, bad dtypes; then dynamic shapes, inductor, export
# ---------------------------------------------------------------------------------------------


class TestLayerNormContract(OpContract):
    backward_name = "layer_norm"

    def fn(self, x, w, b, *, ns, eps=1e-5):
        return FF.layer_norm(x, ns, w, b, eps)

    def reference(self, x, w, b, *, ns, eps=1e-5):
        return F.layer_norm(x, ns, w, b, eps)

    def opcheck_samples(self, device, dtype):
        samples = []
        for affine in AFFINE:
            x = torch.randn(3, 2, 5, device=device, dtype=dtype, requires_grad=True)
            w, b = _params((2, 5), device, dtype, affine)
            samples.append(Sample([x, [2, 5], w, b, 1e-5], op=OP, name=f"forward-{affine}"))
        x, w = (torch.randn(s, device=device, dtype=dtype) for s in ((3, 5), (5,)))
        _, mean, rstd = OP(x, [5], w, None, 1e-5)
        g = torch.randn(3, 5, device=device, dtype=dtype)
        for mask in [(True, True, True), (True, False, False), (False, True, True)]:
            samples.append(
                Sample(
                    [g, x, [5], mean, rstd, w, list(mask)], op=OP_BACKWARD, name=f"backward-{mask}"
                )
            )
        if dtype == torch.float32:
            x = torch.randn(7, 4, device=device).t().requires_grad_()
            w = torch.randn(7, device=device, requires_grad=True)
            samples.append(Sample([x, [7], w, None, 1e-5], op=OP, name="noncontiguous"))
        if device == "cpu" and dtype in HALF_DTYPES:
            x = torch.randn(3, 67, dtype=dtype, requires_grad=True)
            w, b = _params((67,), "cpu", dtype, "weight_bias")
            samples.append(Sample([x, (67,), w, b, 1e-5], op=OP, name="half-67"))
        return samples

    def compile_samples(self, device):
        x = torch.randn(4, 3, 5, device=device, requires_grad=True)
        w, b = _params((3, 5), device, torch.float32, "weight_bias")
        model = nn.Sequential(
            nn.Linear(5, 6), fnn.LayerNorm(6), nn.ReLU(), fnn.LayerNorm(6, bias=False)
        ).to(device)
        return [
            Sample([x, w, b], dict(ns=(3, 5)), name="functional"),
            Sample(
                [torch.randn(2, 5, device=device)],
                name="in_an_expression",
                fn=lambda x: FF.layer_norm(x * 2, 5) + 1,
            ),
            Sample([torch.randn(3, 5, device=device, requires_grad=True)], fn=model, name="module"),
        ]

    def gradcheck_samples(self, device):
        samples = []
        for affine in AFFINE:
            x = torch.randn(2, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
            w, b = _params((3, 4), device, torch.float64, affine)
            samples.append(Sample([x, w, b], dict(ns=(3, 4)), name=affine))
        x = torch.randn(5, 3, device=device, dtype=torch.float64).t().requires_grad_()
        w = torch.randn(10, device=device, dtype=torch.float64)[::2].requires_grad_()
        b = torch.randn(5, device=device, dtype=torch.float64, requires_grad=True)
        return samples + [Sample([x, w, b], dict(ns=(5,)), name="noncontiguous")]

    def double_backward_samples(self, device):
        x = torch.randn(2, 5, device=device, dtype=torch.float64, requires_grad=True)
        w, b = _params((5,), device, torch.float64, "weight_bias")
        return [
            Sample([x, w, b], dict(ns=(5,)), name="weight_bias"),
            Sample([x, None, None], dict(ns=(5,)), name="none"),
        ]

    def unchanged_samples(self, device, dtype):
        x = torch.randn(3, 7, device=device, dtype=dtype).t().requires_grad_()
        w, b = _params((3,), device, dtype, "weight_bias")
        g = torch.randn(7, 3, device=device, dtype=dtype)

        def ops():
            out, mean, rstd = OP(x.detach(), [3], w.detach(), b.detach(), 1e-5)
            OP_BACKWARD(g, x.detach(), [3], mean, rstd, w.detach(), [True, True, True])

        return [Sample([x, w, b], dict(ns=(3,)), grad_output=g, extra=ops)]

    def empty_samples(self, device):
        samples = []
        for shape, ns in [((0, 4), (4,)), ((2, 0, 3), (3,)), ((3, 0), (0,))]:
            x = torch.randn(shape, device=device, requires_grad=True)
            w = torch.randn(ns, device=device, requires_grad=True)
            samples.append(Sample([x, w, None], dict(ns=ns), name=str(shape)))
        return samples

    def noncontiguous_samples(self, device, dtype):
        mk = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
        cases = [  # (name, input, normalized_shape, weight, grad_output): strided views
            ("transposed", mk(7, 4).t(), (7,), mk(7), None),
            ("sliced_cols", mk(3, 10)[:, ::2], (5,), mk(5), None),
            ("sliced_rows", mk(6, 5)[::2], (5,), mk(5), None),
            ("permuted_4d", mk(2, 5, 3, 4).permute(0, 2, 3, 1), (4, 5), mk(4, 5), None),
            ("strided_weight", mk(3, 5), (5,), mk(10)[::2], None),
            ("strided_grad", mk(3, 5), (5,), mk(5), mk(5, 3).t()),
            ("offset_view", mk(4, 6)[1:, 1:], (5,), mk(5), None),
        ]
        return [
            Sample(
                [x.requires_grad_(), w.requires_grad_(), mk(*ns).requires_grad_()],
                dict(ns=ns),
                name=name,
                grad_output=g,
            )
            for name, x, ns, w, g in cases
        ]

    def bad_dtype_calls(self, device):
        x = torch.randn(2, 4, device=device)
        calls = [
            (lambda x=x.to(dt): FF.layer_norm(x, (4,)), "input", "float32")
            for dt in (torch.int32, torch.int64, torch.bool, torch.complex64)
        ]
        w64 = torch.ones(4, device=device, dtype=torch.float64)
        b64 = torch.ones(4, device=device, dtype=torch.int64)
        return calls + [
            (lambda: FF.layer_norm(x, (4,), w64), "weight", "Double"),
            (lambda: FF.layer_norm(x, (4,), None, b64), "bias"),
        ]


@pytest.mark.parametrize("device", DEVICES)
def test_compile_dynamic_shapes(device):
    f = torch.compile(
        lambda x: FF.layer_norm(x, (x.shape[-1],)),
        fullgraph=True,
        backend="aot_eager",
        dynamic=True,
    )
    for shape in [(3, 5), (4, 7), (2, 9)]:
        x = torch.randn(shape, device=device)
        torch.testing.assert_close(f(x), F.layer_norm(x, (shape[-1],)))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compile_inductor(device):
    x = torch.randn(4, 6, device=device, requires_grad=True)
    w, b = _params((6,), device, torch.float32, "weight_bias")
    check_compile(
        lambda x, w, b: torch.relu(FF.layer_norm(x, (6,), w, b)), x, w, b, backend="inductor"
    )


@pytest.mark.parametrize("device", DEVICES)
def test_export(device):
    model = (
        nn.Sequential(
            nn.Linear(5, 6), fnn.LayerNorm(6), nn.Tanh(), fnn.LayerNorm(6, elementwise_affine=False)
        )
        .to(device)
        .eval()
    )
    x = torch.randn(3, 5, device=device)
    ep = torch.export.export(model, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.fastdl.layer_norm_forward.default) == 2
    x2 = torch.randn(3, 5, device=device)
    torch.testing.assert_close(ep.module()(x2), model(x2))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bad_normalized_shape(device):
    x = torch.randn(2, 3, 4, device=device)
    assert_raises_naming(
        RuntimeError, lambda: FF.layer_norm(x, (3,)), "normalized_shape", "[3]", "[2, 3, 4]"
    )
    assert_raises_naming(RuntimeError, lambda: FF.layer_norm(x, (4, 3)), "normalized_shape")
    assert_raises_naming(RuntimeError, lambda: FF.layer_norm(x, ()), "normalized_shape")
    assert_raises_naming(RuntimeError, lambda: FF.layer_norm(x, (-4,)), "normalized_shape")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_rank(device):
    x = torch.randn(4, device=device)
    assert_raises_naming(RuntimeError, lambda: FF.layer_norm(x, (2, 4)), "normalized_shape", "[4]")
    assert_raises_naming(
        RuntimeError,
        lambda: FF.layer_norm(torch.tensor(1.0, device=device), (1,)),
        "normalized_shape",
    )


@pytest.mark.parametrize("device", DEVICES)
def test_bad_weight_bias_shape(device):
    x = torch.randn(2, 3, 4, device=device)
    assert_raises_naming(
        RuntimeError,
        lambda: FF.layer_norm(x, (4,), torch.ones(3, device=device)),
        "weight",
        "[4]",
        "[3]",
    )
    assert_raises_naming(
        RuntimeError,
        lambda: FF.layer_norm(x, (4,), None, torch.ones(3, device=device)),
        "bias",
        "[4]",
        "[3]",
    )
    assert_raises_naming(
        RuntimeError, lambda: FF.layer_norm(x, (3, 4), torch.ones(12, device=device)), "weight"
    )


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
def test_bad_weight_bias_device():
    x = torch.randn(2, 4, device="cuda")
    assert_raises_naming(
        RuntimeError, lambda: FF.layer_norm(x, (4,), torch.ones(4)), "weight", "device"
    )
    assert_raises_naming(
        RuntimeError, lambda: FF.layer_norm(x, (4,), None, torch.ones(4)), "bias", "device"
    )
    assert_raises_naming(
        RuntimeError,
        lambda: FF.layer_norm(x.cpu(), (4,), torch.ones(4, device="cuda")),
        "weight",
        "device",
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps", [float("nan"), float("inf"), float("-inf")])
def test_bad_eps(device, eps):
    x = torch.randn(2, 4, device=device)
    assert_raises_naming(RuntimeError, lambda: FF.layer_norm(x, (4,), eps=eps), "eps")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negative_eps_as_torch(device, dtype):
    """torch accepts eps < 0: 1 / sqrt(var + eps), NaN for the rows whose variance is below
    -eps (here the constant row and the small one), a number for the others; fastdl matches,
    NaN positions and gradients included."""
    x = torch.randn(4, 6, device=device, dtype=dtype)
    x[1] = 2.0  # var 0: NaN
    x[2] *= 1e-3  # var ~1e-6 < 1e-4: NaN
    x.requires_grad_()
    for eps in (-1e-4, -1e-12):
        ours = FF.layer_norm(x, (6,), eps=eps)
        ref = F.layer_norm(x, (6,), eps=eps)
        assert torch.equal(ours.isnan(), ref.isnan())
        torch.testing.assert_close(ours, ref, equal_nan=True)
        g = torch.randn_like(ours)
        (gx,) = torch.autograd.grad(ours, x, g)
        (rx,) = torch.autograd.grad(ref, x, g)
        assert torch.equal(gx.isnan(), rx.isnan())
        # rstd is ~1e3 in the small row: gradients ~1e4, float32 rounding to match
        torch.testing.assert_close(
            gx, rx, equal_nan=True, rtol=1e-4, atol=1e-6 * rx.nan_to_num().abs().max().item()
        )
    assert ref[0].isfinite().all() and ref[1].isnan().all()  # the case is what it claims


@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_bad_input(device):
    x = torch.randn(3, 5, device=device)
    _, mean, rstd = OP(x, [5], None, None, 1e-5)
    g = torch.randn(3, 5, device=device)
    mask = [True, False, False]
    assert_raises_naming(
        RuntimeError, lambda: OP_BACKWARD(g[:2], x, [5], mean, rstd, None, mask), "grad_output"
    )
    assert_raises_naming(
        RuntimeError, lambda: OP_BACKWARD(g.double(), x, [5], mean, rstd, None, mask), "grad_output"
    )
    assert_raises_naming(
        RuntimeError, lambda: OP_BACKWARD(g, x, [5], mean[:2], rstd, None, mask), "mean"
    )
    assert_raises_naming(
        RuntimeError, lambda: OP_BACKWARD(g, x, [4], mean, rstd, None, mask), "normalized_shape"
    )


def test_bad_input_leaves_inputs_unchanged():
    x = torch.randn(2, 4)
    w = torch.ones(3)
    assert_unchanged([x, w], lambda: pytest.raises(RuntimeError, FF.layer_norm, x, (4,), w))


# Row lengths across the CUDA kernels' choices: 8-wide half loads (cols % 8 == 0), 4-wide float
# loads, an odd length (scalar loads), and 64/128/256/512-thread blocks (cols / width up to
# 256, 1024, 4096 and beyond).
WIDE_ROWS = [8, 1032, 4104, 8192, 9000, 16384, 20000]


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("cols", WIDE_ROWS)
def test_row_lengths_across_load_widths_and_block_sizes(device, dtype, cols):
    x = torch.randn(3, cols, device=device, dtype=dtype).requires_grad_()
    w, b = _params((cols,), device, dtype, "weight_bias")
    compare_with_torch(*_fns((cols,)), [x, w, b], dtype)


@pytest.mark.parametrize("device", devices(("cuda_sim",)))
def test_rows_past_the_grid(device):
    """More rows than the grid's x extent (2^31 - 1 on a GPU; 4 on the emulated device): each
    block takes rows blockIdx.x, + gridDim.x, ... in forward and backward."""
    import fastdl.testing

    x = torch.randn(11, 37, device=device).requires_grad_()
    w, b = _params((37,), device, torch.float32, "weight_bias")
    with fastdl.testing.cuda_sim(max_grid=(4, 0, 0)):
        compare_with_torch(*_fns((37,)), [x, w, b], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_rows_whose_squares_overflow(device):
    """Found by the differential fuzzer: a float32 row holding +-1e30 (its squares pass float's
    range) came out as the bias (rstd = 1 / sqrt(inf) = 0), where torch gives NaN; fastdl now
    computes such a row's statistics in double, matching the float64 result."""
    x = torch.randn(3, 7, device=device)
    x[1, 2] = 1e30
    x[2, 0] = -3e25
    w, b = torch.randn(7, device=device), torch.randn(7, device=device)
    out = FF.layer_norm(x, (7,), w, b)
    ref = F.layer_norm(x.double(), (7,), w.double(), b.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[1], b)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_nan_row_statistics_are_nan(device, dtype):
    """A NaN in a row makes its saved mean and rstd NaN on every device and dtype (CUDA's
    variance clamp used max, which drops a NaN: rstd was 1 / sqrt(eps) in float64), its output
    row NaN as torch's; the other rows are finite."""
    x = torch.randn(3, 8, device=device, dtype=dtype)
    x[1, 5] = float("nan")
    out, mean, rstd = torch.ops.fastdl.layer_norm_forward(x, [8], None, None, 1e-5)
    assert mean.isnan().flatten().tolist() == [False, True, False]
    assert rstd.isnan().flatten().tolist() == [False, True, False]
    assert torch.equal(out.isnan(), F.layer_norm(x.double(), (8,)).isnan())
    assert out.isnan().sum() == 8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_of_one_element_with_huge_values(device, dtype):
    """A row of one element is its own mean: the output is the bias and the weight's gradient
    exactly 0, whatever the value. (torch's one-pass variance of 1e30 is not 0: its weight
    gradient is NaN in float32 and ~1e15 in float64; found by the differential fuzzer.)"""
    x = torch.tensor([[1e30], [-1e30], [3.0]], device=device, dtype=dtype, requires_grad=True)
    w = torch.tensor([2.0], device=device, dtype=dtype, requires_grad=True)
    b = torch.tensor([0.5], device=device, dtype=dtype, requires_grad=True)
    y = FF.layer_norm(x, (1,), w, b)
    assert torch.equal(y, torch.full_like(y, 0.5))
    gx, gw, gb = torch.autograd.grad(
        y, (x, w, b), torch.tensor([[1.0], [2.0], [3.0]], device=device, dtype=dtype)
    )
    assert torch.equal(gx, torch.zeros_like(gx)) and torch.equal(gw, torch.zeros_like(gw))
    assert gb.item() == 6.0
