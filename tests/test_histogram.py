"""fastdl histogram (op and functional) against fastdl.reference.histogram_reference, the
pure-PyTorch composition that materialises the (bags, N, F, B) tensor of kernel values.

Inputs are built so that no element sits at a kernel's kink (d = x - c == 0 for every kernel;
|d| == 1/w for "soft", |d| == w for "hard"): there the gradient is a matter of convention (and
"hard"'s forward jumps), so a float32 kernel and a float64 reference could legitimately
disagree. The kinks are kept ``MARGIN`` away from every element, in the dtype's own values.
Masks, empty bags, NaN and the hard kernel: test_histogram_masks.py.
"""

import math

import pytest
import torch

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from fastdl.reference import histogram_reference
from helpers import (
    devices,
    DEVICE_DTYPES,
    DEVICES,
    HALF_DTYPES,
    assert_close_to_reference,
    compare_with_torch,
)
from op_contract import OpContract, Sample

FAMILY = "histogram"  # the emulator summary counts test cases per op family

OP = torch.ops.fastdl.histogram_forward
OP_BACKWARD = torch.ops.fastdl.histogram_backward

KERNELS = ("sigmoid", "soft", "rbf", "hard")
MARGIN = 1e-3  # distance (in x units) every element keeps from every kink
SHARPNESS = 1000.0  # the functional's default (HistNetQ's)
HARD_SLOPE = math.log(1.01)  # d/dy 1.01**y = ln(1.01) 1.01**y: the hard surrogate


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _kink_distance(kernel, x, c, w):
    """For each element of x (float64), its distance to the nearest kink over all bins."""
    d = (x.unsqueeze(-1) - c).abs()  # (..., N, F, B)
    dist = d  # d == 0: |d| is not differentiable (all kernels go through |d|)
    if kernel == "soft":
        dist = torch.minimum(dist, (d - 1 / w).abs())  # relu's kink at w|d| == 1
    elif kernel == "hard":
        dist = torch.minimum(dist, (d - w).abs())  # the indicator's jump at |d| == w
    return dist.amin(-1)


def _mask(bags, n):
    """Random presence; with two bags or more the first is empty (all masked) and the last
    full; an unbatched mask (bags None) has at least one element present."""
    m = torch.rand(n if bags is None else (bags, n)) < 0.6
    if bags is None:
        m[0] = True
    elif bags >= 2:
        m[0], m[-1] = False, True
    else:
        m[0, 0] = True
    return m


def _inputs(
    kernel,
    bags,
    n,
    f,
    b,
    device="cpu",
    dtype=torch.float32,
    *,
    shared=False,
    mask=False,
    requires_grad=True,
    low=-0.1,
    high=1.1,
):
    """(x, centers, widths, mask). ``bags=None``: unbatched x (N, F).

    x uniform in [low, high] (HistNetQ feeds sigmoid outputs, in [0, 1]; a little outside too);
    centres near HistNetQ's (k + 0.5)/B, jittered; widths of the kernel's kind for a bin
    half-width in [0.6/B, 1.6/B] (soft/rbf: the slope 1/half-width; hard: the half-width;
    sigmoid: the bin width); (F, B) or, ``shared``, (B,). Every value is rounded to ``dtype``
    first, then x is resampled until no element is within MARGIN of a kink.
    """
    f64 = torch.float64
    cshape = (b,) if shared else (f, b)
    c = (torch.arange(b, dtype=f64) + 0.5) / b + 0.3 * (torch.rand(cshape, dtype=f64) - 0.5) / b
    half = (0.6 + torch.rand(cshape, dtype=f64)) / b
    w = {"soft": 1 / half, "rbf": 1 / half, "hard": half, "sigmoid": 2 * half}[kernel]
    c, w = c.to(dtype), w.to(dtype)
    xshape = (n, f) if bags is None else (bags, n, f)
    x = (low + (high - low) * torch.rand(xshape, dtype=f64)).to(dtype)
    for _ in range(200):
        bad = _kink_distance(kernel, x.double(), c.double(), w.double()) < MARGIN
        if not bad.any():
            break
        x[bad] = (low + (high - low) * torch.rand(int(bad.sum()), dtype=f64)).to(dtype)
    else:
        raise AssertionError("could not place x away from the kinks")
    m = _mask(bags, n).to(device) if mask else None
    x, c, w = (t.to(device).requires_grad_(requires_grad) for t in (x, c, w))
    return x, c, w, m


def _fns(kernel, mask=None, normalize=True, sharpness=SHARPNESS):
    ours = lambda x, c, w: FF.histogram(x, c, w, kernel, mask, normalize, sharpness)  # noqa: E731
    ref = lambda x, c, w: histogram_reference(x, c, w, kernel, mask, normalize, sharpness)  # noqa: E731
    return ours, ref


# ---------------------------------------------------------------------------------------------
# Forward and gradients against the reference
# ---------------------------------------------------------------------------------------------

# bags None: unbatched x (N, F). Odd sizes, B = 1, N = 1, F = 1, one bag, shared (B,)
# centres/widths, masks with an empty bag, sums, and B past any vector width with a remainder.
CASES = {
    "basic": dict(bags=3, n=7, f=5, b=4),
    "mask": dict(bags=4, n=7, f=5, b=4, mask=True),
    "sum": dict(bags=3, n=7, f=5, b=4, normalize=False),
    "mask_sum": dict(bags=4, n=7, f=5, b=4, mask=True, normalize=False),
    "odd": dict(bags=3, n=13, f=11, b=9, mask=True),
    "B1": dict(bags=2, n=6, f=3, b=1),
    "B1_mask": dict(bags=3, n=6, f=3, b=1, mask=True),
    "N1": dict(bags=3, n=1, f=4, b=5),
    "N1_mask": dict(bags=3, n=1, f=4, b=5, mask=True),
    "F1": dict(bags=2, n=9, f=1, b=6, mask=True),
    "bags1": dict(bags=1, n=8, f=3, b=4),
    "shared": dict(bags=3, n=7, f=5, b=4, shared=True),
    "shared_mask_sum": dict(bags=3, n=7, f=5, b=4, shared=True, mask=True, normalize=False),
    "unbatched": dict(bags=None, n=7, f=5, b=4),
    "unbatched_mask": dict(bags=None, n=7, f=5, b=4, mask=True),
    "unbatched_shared_sum": dict(bags=None, n=7, f=5, b=4, shared=True, normalize=False),
    "wide": dict(bags=2, n=37, f=19, b=33, mask=True),
    # more bins than 256 (CUDA: one feature a block, 320 threads) and one feature of 1000
    "bins300": dict(bags=2, n=11, f=3, b=300, mask=True),
    "bins1000": dict(bags=1, n=5, f=1, b=1000),
    "sharpness20": dict(bags=3, n=9, f=4, b=5, mask=True, sharpness=20.0),
}


def _run_case(device, dtype, kernel, cfg, **extra):
    cfg = dict(cfg)
    normalize, sharpness = cfg.pop("normalize", True), cfg.pop("sharpness", SHARPNESS)
    x, c, w, mask = _inputs(kernel, device=device, dtype=dtype, **cfg, **extra)
    return compare_with_torch(*_fns(kernel, mask, normalize, sharpness), [x, c, w], dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward(device, dtype, kernel, case):
    out, ref, _, _ = _run_case(device, dtype, kernel, CASES[case])
    assert out.dtype == dtype and out.device == ref.device and out.is_contiguous()


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_large(device, dtype, kernel):
    """Many elements per bag (several blocks / vector chunks), F and B with remainders."""
    n = 4099 if device == "cuda" else 515
    _run_case(device, dtype, kernel, dict(bags=2, n=n, f=33, b=33, mask=True))


def _strided(t):
    """A non-contiguous copy of t (same values): dims reversed in memory, 1-d every other."""
    if t.dim() == 1:
        out = t.new_empty(2 * t.shape[0])[::2]
    else:
        out = t.new_empty(t.shape[::-1]).permute(*reversed(range(t.dim())))
    with torch.no_grad():
        out.copy_(t)
    return out.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_expanded_inputs(device, dtype, kernel):
    """Stride-0 views: every element of a bag the same, centres/widths broadcast over F."""
    x, c, w, mask = _inputs(kernel, 3, 1, 5, 4, device, dtype, shared=True, mask=True)
    mask = torch.ones(3, 6, dtype=torch.bool, device=device).index_fill_(
        1, torch.tensor([2], device=device), False
    )

    def call(fn):
        return lambda x, c, w: fn(x.expand(3, 6, 5), c.expand(5, 4), w.expand(5, 4), kernel, mask)

    compare_with_torch(call(FF.histogram), call(histogram_reference), [x, c, w], dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("which", ["x", "centers", "widths", "none"])
def test_only_some_inputs_require_grad(device, dtype, kernel, which):
    x, c, w, mask = _inputs(kernel, 3, 6, 4, 5, device, dtype, mask=True, requires_grad=False)
    for name, t in zip(("x", "centers", "widths"), (x, c, w)):
        t.requires_grad_(name == which)
    out, _, _, _ = compare_with_torch(*_fns(kernel, mask), [x, c, w], dtype)
    assert out.requires_grad == (which != "none")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_no_grad_and_inference_mode(device, kernel):
    x, c, w, mask = _inputs(kernel, 3, 6, 4, 5, device, mask=True)
    expected = histogram_reference(x, c, w, kernel, mask).detach()
    with torch.no_grad():
        out = FF.histogram(x, c, w, kernel, mask)
    assert not out.requires_grad
    assert_close_to_reference(out, expected, torch.float32)
    with torch.inference_mode():
        assert_close_to_reference(FF.histogram(x, c, w, kernel, mask), expected, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_defaults_are_soft_normalized(device):
    x, c, w, _ = _inputs("soft", 2, 6, 3, 4, device, torch.float64)
    compare_with_torch(FF.histogram, histogram_reference, [x, c, w], torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["soft", "rbf", "hard"])
def test_sharpness_ignored_by_other_kernels(device, kernel):
    x, c, w, mask = _inputs(kernel, 2, 6, 3, 4, device, torch.float64, mask=True)
    torch.testing.assert_close(
        FF.histogram(x, c, w, kernel, mask, sharpness=3.0),
        FF.histogram(x, c, w, kernel, mask, sharpness=1000.0),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "output_mask",
    [
        (True, True, True),
        (True, False, False),
        (False, True, True),
        (False, False, True),
        (False, False, False),
    ],
)
def test_backward_op_output_mask(device, dtype, kernel, output_mask):
    x, c, w, mask = _inputs(kernel, 3, 6, 4, 5, device, dtype, mask=True, requires_grad=False)
    g = torch.randn(3, 4, 5, device=device, dtype=dtype)
    got = OP_BACKWARD(g, x, c, w, kernel, mask, True, 20.0, list(output_mask))
    assert len(got) == 3

    def ref_grads(dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (x, c, w)]
        histogram_reference(*leaves, kernel, mask, True, 20.0).backward(g.to(dt))
        return [t.grad for t in leaves]

    expected, baseline = ref_grads(torch.float64), ref_grads(dtype)
    for name, gt, e, base, needed in zip(
        ("x", "centers", "widths"), got, expected, baseline, output_mask
    ):
        assert (gt is not None) == needed, (
            f"grad {name}: output_mask {output_mask}, got {gt is not None}"
        )
        if needed:
            assert gt.shape == e.shape and gt.dtype == dtype
            assert_close_to_reference(gt, e, dtype, baseline=base, name=f"grad {name}")


# ---------------------------------------------------------------------------------------------
# The op contract (op_contract.py): opcheck, compile, gradcheck, no double backward, inputs
# unchanged, empty and non-contiguous inputs; then compile with dynamic shapes
# ---------------------------------------------------------------------------------------------

GRADCHECK_CONFIGS = {
    "mask": dict(bags=3, n=4, f=2, b=3, mask=True),
    "sum": dict(bags=2, n=4, f=2, b=3, mask=True, normalize=False),
    "shared": dict(bags=2, n=4, f=3, b=3, shared=True),
    "unbatched": dict(bags=None, n=5, f=2, b=3),
}
OUTPUT_MASKS = [(True, True, True), (True, False, False), (False, True, True)]


class TestHistogramContract(OpContract):
    backward_name = "histogram"

    def fn(self, x, c, w, *, kernel="soft", mask=None, normalize=True, sharpness=SHARPNESS):
        return FF.histogram(x, c, w, kernel, mask, normalize, sharpness)

    def reference(self, x, c, w, *, kernel="soft", mask=None, normalize=True, sharpness=SHARPNESS):
        return histogram_reference(x, c, w, kernel, mask, normalize, sharpness)

    def opcheck_samples(self, device, dtype):
        samples = []
        for kernel in KERNELS:
            x, c, w, mask = _inputs(kernel, 3, 5, 4, 6, device, dtype, mask=True)
            samples.append(Sample([x, c, w, kernel, mask, True, SHARPNESS], op=OP, name=kernel))
            for om in OUTPUT_MASKS:
                x, c, w, mask = _inputs(
                    kernel,
                    3,
                    5,
                    4,
                    6,
                    device,
                    dtype,
                    shared=not om[0],
                    mask=True,
                    requires_grad=False,
                )
                g = torch.randn(3, 4, 6, device=device, dtype=dtype)
                samples.append(
                    Sample(
                        [g, x, c, w, kernel, mask, True, SHARPNESS, list(om)],
                        op=OP_BACKWARD,
                        name=f"{kernel}-backward-{om}",
                    )
                )
            if device == "cpu" and dtype in HALF_DTYPES:  # 19 bins: past a vector, a tail
                x, c, w, mask = _inputs(kernel, 3, 5, 4, 19, "cpu", dtype, mask=True)
                g = torch.randn(3, 4, 19, dtype=dtype)
                samples += [
                    Sample([x, c, w, kernel, mask, True, SHARPNESS], op=OP, name=f"{kernel}-19"),
                    Sample(
                        [x, c.detach().float(), w.detach().float(), kernel, mask, True, SHARPNESS],
                        op=OP,
                        name=f"{kernel}-19-float32_parameters",
                    ),
                    Sample(
                        [
                            g,
                            x.detach(),
                            c.detach(),
                            w.detach(),
                            kernel,
                            mask,
                            True,
                            SHARPNESS,
                            [True, True, True],
                        ],
                        op=OP_BACKWARD,
                        name=f"{kernel}-19-backward",
                    ),
                ]
        if dtype == torch.float32:
            for variant in ["sum_no_mask", "shared", "unbatched", "noncontiguous"]:
                x, c, w, mask = _inputs(
                    "soft",
                    None if variant == "unbatched" else 3,
                    5,
                    4,
                    6,
                    device,
                    shared=variant == "shared",
                    mask=variant != "sum_no_mask",
                )
                if variant == "noncontiguous":
                    x, c, w, mask = (_strided(t) for t in (x, c, w, mask))
                samples.append(
                    Sample(
                        [x, c, w, "soft", mask, variant != "sum_no_mask", SHARPNESS],
                        op=OP,
                        name=variant,
                    )
                )
        return samples

    def compile_samples(self, device):
        samples = []
        for kernel in KERNELS:
            x, c, w, mask = _inputs(kernel, 3, 5, 4, 6, device, mask=True)
            samples.append(Sample([x, c, w], dict(kernel=kernel, mask=mask), name=kernel))
        # HistNetQ's shape of use: sigmoid features, a histogram per feature, flattened, a linear
        # layer; mask and shared bins as graph inputs
        x, c, w, mask = _inputs("soft", 3, 5, 4, 6, device, shared=True, mask=True)
        lin = torch.randn(4 * 6, 2, device=device, requires_grad=True)

        def model(x, c, w, lin, mask):
            return FF.histogram(torch.sigmoid(x), c, w, "soft", mask, True).flatten(1) @ lin

        return samples + [Sample([x, c, w, lin, mask], fn=model, name="in_a_model")]

    def gradcheck_samples(self, device):
        """float64 gradcheck of the smooth kernels ("sigmoid" with a small sharpness, so finite
        differences resolve it), away from the kinks by construction (see _inputs). "hard" has
        its own test (test_hard_gradient_is_a_surrogate): its gradient is a surrogate."""
        samples = []
        for kernel, sharpness in [("sigmoid", 5.0), ("soft", SHARPNESS), ("rbf", SHARPNESS)]:
            for config, cfg in GRADCHECK_CONFIGS.items():
                cfg = dict(cfg)
                normalize = cfg.pop("normalize", True)
                x, c, w, mask = _inputs(kernel, device=device, dtype=torch.float64, **cfg)
                kwargs = dict(kernel=kernel, mask=mask, normalize=normalize, sharpness=sharpness)
                samples.append(Sample([x, c, w], kwargs, name=f"{kernel}-{config}"))
        return samples

    def double_backward_samples(self, device):
        samples = []
        for kernel in KERNELS:
            x, c, w, mask = _inputs(kernel, 2, 4, 2, 3, device, torch.float64, mask=True)
            samples.append(
                Sample([x, c, w], dict(kernel=kernel, mask=mask, sharpness=5.0), name=kernel)
            )
        x, c, w, _ = _inputs("soft", 2, 4, 2, 3, device, torch.float64)
        return samples + [Sample([x, c, w], name="defaults")]

    def unchanged_samples(self, device, dtype):
        samples = []
        for kernel in KERNELS:
            x, c, w, mask = _inputs(kernel, 3, 7, 4, 5, device, dtype, mask=True)
            x = _strided(x)
            g = torch.randn(3, 4, 5, device=device, dtype=dtype)

            def backward_op(x=x, c=c, w=w, mask=mask, g=g, kernel=kernel):
                OP_BACKWARD(
                    g, x.detach(), c.detach(), w.detach(), kernel, mask, True, SHARPNESS, [True] * 3
                )

            samples.append(
                Sample(
                    [x, c, w],
                    dict(kernel=kernel, mask=mask),
                    grad_output=g,
                    extra=backward_op,
                    name=kernel,
                )
            )
        return samples

    def empty_samples(self, device):
        """Empty bags (N = 0: zeros, like the reference), no bags, no features."""
        samples = []
        for kernel in KERNELS:
            for shape in [(2, 0, 3), (0, 4, 3), (2, 4, 0), (0, 3)]:
                x = torch.rand(shape, device=device, dtype=torch.float64, requires_grad=True)
                f = shape[-1]
                c = ((torch.arange(4, device=device, dtype=torch.float64) + 0.5) / 4).expand(f, 4)
                w = torch.full(
                    (f, 4),
                    0.2 if kernel in ("hard", "sigmoid") else 5.0,
                    device=device,
                    dtype=torch.float64,
                    requires_grad=True,
                )
                samples.append(
                    Sample(
                        [x, c.clone().requires_grad_(), w],
                        dict(kernel=kernel),
                        name=f"{kernel}-{shape}",
                    )
                )
        return samples

    def check_more(self, check, sample, out, ref, args, ref_args):
        if check == "empty" and args[0].shape[-2] == 0:
            assert torch.equal(out, torch.zeros_like(out))

    def noncontiguous_samples(self, device, dtype):
        """Transposed x, centres, widths, mask and grad_output."""
        samples = []
        for kernel in KERNELS:
            for shared in (False, True):
                x, c, w, mask = _inputs(kernel, 3, 7, 5, 4, device, dtype, shared=shared, mask=True)
                x, c, w, mask = (_strided(t) for t in (x, c, w, mask))
                g = _strided(torch.randn(3, 5, 4, device=device, dtype=dtype))
                assert not any(t.is_contiguous() for t in (x, c, w, mask, g))
                samples.append(
                    Sample(
                        [x, c, w],
                        dict(kernel=kernel, mask=mask),
                        grad_output=g,
                        name=f"{kernel}-shared{shared}",
                    )
                )
        return samples


@pytest.mark.parametrize("device", DEVICES)
def test_compile_dynamic_shapes(device):
    f = torch.compile(
        lambda x, c, w: FF.histogram(x, c, w, "rbf"),
        fullgraph=True,
        backend="aot_eager",
        dynamic=True,
    )
    for bags, n, feat in [(2, 5, 3), (3, 7, 4), (4, 9, 2)]:
        x, c, w, _ = _inputs("rbf", bags, n, feat, 5, device, requires_grad=False)
        torch.testing.assert_close(f(x, c, w), histogram_reference(x, c, w, "rbf"))


@pytest.mark.parametrize("device", devices(("cuda_sim",)))
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shared", [False, True])
def test_bags_past_the_grid(device, kernel, shared):
    """More bags than the grid's y extent (65535 on a GPU; 3 on the emulated device here): the
    forward and parameter-gradient kernels' loops over bags, and the sums over bags."""
    import fastdl.testing

    with fastdl.testing.cuda_sim(max_grid=(0, 3, 3)):
        _run_case(
            device, torch.float32, kernel, dict(bags=8, n=5, f=3, b=4, mask=True), shared=shared
        )
