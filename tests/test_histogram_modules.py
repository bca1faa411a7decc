"""fastdl.nn histogram layers: HistNetQ's initialisation, parameters vs buffers, layout, masks,
state_dict, gradients, bad arguments, and equality with the pure-PyTorch reference."""

import copy

import pytest
import torch

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.nn as fnn
from fastdl.reference import histogram_reference
from helpers import DEVICES, assert_close_to_reference, assert_raises_naming, check_compile_module

FAMILY = "histogram"  # the emulator summary counts test cases per op family

# (class, kernel name, learnable by default, initial widths as a function of B)
LAYERS = [
    (fnn.SigmoidHistogram, "sigmoid", False, lambda B: 1.0 / B),
    (fnn.SoftHistogram, "soft", True, lambda B: 2.0 * B),
    (fnn.RBFHistogram, "rbf", True, lambda B: 2.0 * B),
    (fnn.HardHistogram, "hard", True, lambda B: 1.0 / (2 * B) + 0.001),
]
IDS = [kernel for _, kernel, _, _ in LAYERS]


def _perturb(m, seed=0):
    """Give every (feature, bin) its own centre and width, so a test cannot pass on a layer
    that mixes up rows and columns."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.centers.add_(0.02 * torch.randn(m.centers.shape, generator=g).to(m.centers))
        m.widths.mul_(1 + 0.2 * torch.rand(m.widths.shape, generator=g).to(m.widths))
    return m


def _reference(m, x, mask=None):
    out = histogram_reference(x, m.centers, m.widths, m.kernel, mask, m.normalize, m.sharpness)
    return out.flatten(-2) if m.flatten else out


# ---------------------------------------------------------------------------------------------
# Construction and initialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
@pytest.mark.parametrize("F, B", [(3, 8), (1, 1), (5, 2), (2, 13)])
def test_init_values(cls, kernel, learnable, width, F, B):
    m = cls(F, B)
    assert m.centers.shape == (F, B) and m.widths.shape == (F, B)
    expected_centers = ((torch.arange(B, dtype=torch.float64) + 0.5) / B).expand(F, B)
    torch.testing.assert_close(m.centers.double(), expected_centers, rtol=0, atol=1e-7)
    torch.testing.assert_close(
        m.widths.double(), torch.full((F, B), width(B), dtype=torch.float64), rtol=1e-7, atol=0
    )
    assert m.kernel == kernel and m.learnable == learnable
    assert m.centers.dtype == torch.float32


def test_init_matches_histnetq_numbers():
    # HistNetQ with B = 8: centres 1/16, 3/16, ...; slopes 16; hard half-widths 1/16 + 0.001.
    assert fnn.SoftHistogram(1, 8).centers[0, :3].tolist() == pytest.approx(
        [0.0625, 0.1875, 0.3125]
    )
    assert fnn.SoftHistogram(1, 8).widths[0, 0].item() == 16
    assert fnn.RBFHistogram(1, 8).widths[0, 0].item() == 16
    assert fnn.HardHistogram(1, 8).widths[0, 0].item() == pytest.approx(0.0635)
    assert fnn.SigmoidHistogram(1, 8).widths[0, 0].item() == pytest.approx(0.125)
    assert fnn.SigmoidHistogram(1, 8).sharpness == 1000.0


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
@pytest.mark.parametrize("flag", [None, True, False])
def test_learnable_parameters_or_buffers(cls, kernel, learnable, width, flag):
    m = cls(4, 3) if flag is None else cls(4, 3, learnable=flag)
    is_learnable = learnable if flag is None else flag
    params = dict(m.named_parameters())
    buffers = dict(m.named_buffers())
    if is_learnable:
        assert set(params) == {"centers", "widths"} and not buffers
        assert all(p.requires_grad for p in params.values())
    else:
        assert not params and set(buffers) == {"centers", "widths"}
        assert not m.centers.requires_grad and not m.widths.requires_grad
    assert set(m.state_dict()) == {"centers", "widths"}


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_reset_parameters(cls, kernel, learnable, width):
    m = cls(3, 4)
    fresh = cls(3, 4)
    _perturb(m)
    m.reset_parameters()
    torch.testing.assert_close(m.centers, fresh.centers)
    torch.testing.assert_close(m.widths, fresh.widths)


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_extra_repr(cls, kernel, learnable, width):
    r = repr(cls(7, 5, flatten=False))
    assert cls.__name__ in r and "n_features=7" in r and "n_bins=5" in r and "flatten=False" in r
    assert f"learnable={learnable}" in r
    if kernel == "sigmoid":
        assert "sharpness=1000" in r


def test_exported():
    for name in ("SigmoidHistogram", "SoftHistogram", "RBFHistogram", "HardHistogram"):
        assert name in fnn.__all__ and isinstance(getattr(fnn, name)(2, 2), torch.nn.Module)


# ---------------------------------------------------------------------------------------------
# Forward: shapes, layout, reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_shapes_and_flatten_layout(cls, kernel, learnable, width):
    bags, N, F, B = 3, 11, 4, 5
    x = torch.rand(bags, N, F)
    flat = _perturb(cls(F, B))
    full = copy.deepcopy(flat)
    full.flatten = False
    out_flat, out_full = flat(x), full(x)
    assert out_flat.shape == (bags, F * B) and out_full.shape == (bags, F, B)
    # HistNetQ's layout: feature-major, the B bins of feature 0 first.
    for f in range(F):
        torch.testing.assert_close(out_flat[:, f * B : (f + 1) * B], out_full[:, f])
    torch.testing.assert_close(out_flat, out_full.reshape(bags, F * B))
    # One bag given as (N, F): no bags dimension.
    assert flat(x[1]).shape == (F * B,) and full(x[1]).shape == (F, B)
    torch.testing.assert_close(flat(x[1]), out_flat[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_matches_reference_forward_and_backward(
    device, dtype, cls, kernel, learnable, width, masked
):
    bags, N, F, B = 3, 17, 5, 6
    extra = {"sharpness": 40.0} if kernel == "sigmoid" else {}  # smooth enough for gradients
    m = _perturb(cls(F, B, learnable=True, **extra)).to(device=device, dtype=dtype)
    x = torch.rand(bags, N, F, device=device, dtype=dtype)
    mask = torch.rand(bags, N, device=device) < 0.7 if masked else None
    if masked:
        mask[0, :2] = True
    x_ours = x.clone().requires_grad_()
    out = m(x_ours, mask)
    ref_m = copy.deepcopy(m)
    x_ref = x.clone().requires_grad_()
    ref = _reference(ref_m, x_ref, mask)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out, ref, **tol)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    scale = 1e-3 if dtype == torch.float32 else 1e-8  # gradients are sums over N elements
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=scale, atol=scale)
    torch.testing.assert_close(m.centers.grad, ref_m.centers.grad, rtol=scale, atol=scale)
    torch.testing.assert_close(m.widths.grad, ref_m.widths.grad, rtol=scale, atol=scale)


@pytest.mark.parametrize("to_dtype", ["bfloat16", "half"])
@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_module_in_half_on_cpu(to_dtype, cls, kernel, learnable, width):
    """A layer after .bfloat16() / .half() on the CPU: output and every gradient in that
    dtype, judged against the reference in float64 on the same values, with the reference's
    own error in that dtype as the baseline."""
    torch.manual_seed(0)
    extra = {"sharpness": 40.0} if kernel == "sigmoid" else {}
    m = getattr(_perturb(cls(5, 37, learnable=True, **extra)), to_dtype)()
    dtype = m.centers.dtype
    x = torch.rand(3, 17, 5).to(dtype)
    mask = torch.rand(3, 17) < 0.7
    mask[0, :2] = True
    runs = {}
    for name, fn, cast in (
        ("ours", m, dtype),
        ("half_ref", None, dtype),
        ("ref64", None, torch.float64),
    ):
        mod = copy.deepcopy(m).to(cast)
        xi = x.to(cast, copy=True).requires_grad_()
        out = mod(xi, mask) if fn is not None else _reference(mod, xi, mask)
        runs[name] = (out, xi, mod)
    out = runs["ours"][0]
    assert out.dtype == dtype
    grad = torch.randn(out.shape, dtype=torch.float64)
    grads = {}
    for name, (o, xi, mod) in runs.items():
        o.backward(grad.to(o.dtype))
        grads[name] = [xi.grad, mod.centers.grad, mod.widths.grad]
    assert all(g.dtype == dtype for g in grads["ours"])
    assert_close_to_reference(
        out, runs["ref64"][0], dtype, baseline=runs["half_ref"][0], name="output"
    )
    for i, (g, e, b) in enumerate(zip(grads["ours"], grads["ref64"], grads["half_ref"])):
        assert_close_to_reference(g, e, dtype, baseline=b, name=["x", "centers", "widths"][i])


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_default_sigmoid_sharpness_forward_matches_reference(cls, kernel, learnable, width):
    m = _perturb(cls(4, 8))  # HistNetQ's own settings, sharpness 1000 for sigmoid
    x = torch.rand(2, 50, 4, dtype=torch.float64)
    torch.testing.assert_close(m.double()(x), _reference(m, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_histograms_count_elements(cls, kernel, learnable, width):
    # x at the bin centres: each element lands in exactly its own bin (the hard and sigmoid
    # kernels give 1 there, the soft and RBF kernels 1 at the centre, ~0 at the other centres).
    B = 4
    m = cls(1, B)
    k = torch.tensor([0, 0, 1, 3, 3, 3])
    x = ((k + 0.5) / B).reshape(1, -1, 1)
    out = m(x)
    expected = torch.bincount(k, minlength=B).float() / len(k)
    torch.testing.assert_close(out[0], expected, atol=0.02, rtol=0)
    assert not fnn.SoftHistogram(1, B, normalize=False)(x)[0].allclose(out[0])


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_mask_equals_unpadded_bags(cls, kernel, learnable, width):
    F, B, sizes, N = 3, 5, [7, 1, 12], 12
    m = _perturb(cls(F, B))
    bags = [torch.rand(n, F) for n in sizes]
    x = torch.full((len(sizes), N, F), 1e6)  # garbage padding
    mask = torch.zeros(len(sizes), N, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : len(b)] = b
        mask[i, : len(b)] = True
    out = m(x, mask)
    for i, b in enumerate(bags):
        torch.testing.assert_close(out[i], m(b), rtol=1e-5, atol=1e-6)
    # Permuting elements together with their mask bits changes nothing.
    perm = torch.randperm(N)
    torch.testing.assert_close(m(x[:, perm], mask[:, perm]), out, rtol=1e-5, atol=1e-6)


def test_mask_padding_gets_no_gradient():
    m = fnn.SoftHistogram(2, 4)
    x = torch.rand(2, 6, 2, requires_grad=True)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    m(x, mask).sum().backward()
    assert torch.all(x.grad[0, 4:] == 0) and x.grad[0, :4].abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Gradients, state_dict, devices and dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_gradients_reach_parameters(cls, kernel, learnable, width):
    B = 4
    extra = {"sharpness": 20.0} if kernel == "sigmoid" else {}
    m = cls(2, B, learnable=True, **extra)
    # Elements spread over [0, 1], some inside every bin's support.
    x = torch.linspace(0.01, 0.99, 40).reshape(1, 20, 2).requires_grad_()
    loss = (m(x) * torch.randn(1, 2 * B)).sum()
    loss.backward()
    for p in (m.centers, m.widths, x):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_fixed_bins_get_no_gradient_but_input_does(cls, kernel, learnable, width):
    extra = {"sharpness": 20.0} if kernel == "sigmoid" else {}
    m = cls(2, 4, learnable=False, **extra)
    x = torch.linspace(0.01, 0.99, 40).reshape(1, 20, 2).requires_grad_()
    (m(x) * torch.randn(1, 8)).sum().backward()
    assert m.centers.grad is None and m.widths.grad is None
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_state_dict_round_trip(cls, kernel, learnable, width):
    a = _perturb(cls(3, 4), seed=1)
    b = cls(3, 4)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 9, 3)
    torch.testing.assert_close(b(x), a(x))
    # Parameters and buffers share names: a learnable layer's weights load into a fixed one.
    c = cls(3, 4, learnable=not a.learnable)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c(x), a(x))


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_to_float64(cls, kernel, learnable, width):
    m = cls(3, 4).double()
    assert m.centers.dtype == torch.float64 and m.widths.dtype == torch.float64
    assert m(torch.rand(2, 5, 3, dtype=torch.float64)).dtype == torch.float64
    m2 = cls(3, 4, dtype=torch.float64)
    assert m2.centers.dtype == torch.float64


def test_compile_module():
    m = _perturb(fnn.SoftHistogram(3, 4))
    x = torch.rand(2, 9, 3, requires_grad=True)
    check_compile_module(m, x)


# ---------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_bad_constructor_arguments(cls, kernel, learnable, width):
    assert_raises_naming(ValueError, lambda: cls(3, 0), "n_bins", "0")
    assert_raises_naming(ValueError, lambda: cls(3, -2), "n_bins")
    assert_raises_naming(ValueError, lambda: cls(3, 2.5), "n_bins")
    assert_raises_naming(ValueError, lambda: cls(0, 4), "n_features", "0")
    assert_raises_naming(ValueError, lambda: cls(True, 4), "n_features")


def test_bad_sharpness():
    assert_raises_naming(ValueError, lambda: fnn.SigmoidHistogram(3, 4, sharpness=0.0), "sharpness")


@pytest.mark.parametrize("cls, kernel, learnable, width", LAYERS, ids=IDS)
def test_bad_input(cls, kernel, learnable, width):
    m = cls(3, 4)
    assert_raises_naming(
        ValueError, lambda: m(torch.rand(2, 5, 4)), "x", "n_features=3", "(2, 5, 4)"
    )
    assert_raises_naming(ValueError, lambda: m(torch.rand(5)), "x")
    assert_raises_naming(ValueError, lambda: m(torch.rand(2, 2, 5, 3)), "x")
