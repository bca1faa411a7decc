"""fastdl.models LeNet5 and ResNetBlock: shapes, the layers they are built from, forward and
every gradient against their torch twins (same weights), BatchNorm running statistics, and a
short LeNet-5 training run on scikit-learn's digits (upscaled to 32x32) where the loss goes
down and follows the torch twin's step by step."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.nn as fnn
from fastdl.models import LeNet5, ResNetBlock
from helpers import CUDA_AVAILABLE, DEVICES, assert_raises_naming

FAMILY = "conv"  # the emulator summary counts test cases per op family

HAS_CONV2D = hasattr(fnn, "Conv2d")
needs_conv2d = pytest.mark.skipif(
    not HAS_CONV2D, reason="fastdl.nn.Conv2d is not in this build of fastdl yet (issue 7)"
)

ACTIVATIONS = ["tanh", "relu"]
POOLINGS = ["avg", "max"]
# (in_channels, out_channels, stride): identity shortcut, then the three projection cases.
BLOCKS = [(8, 8, 1), (8, 8, 2), (4, 8, 1), (4, 8, 2)]
BLOCK_IDS = ["identity", "stride2", "channels", "channels-stride2"]


def _device(device):
    if device == "cuda" and not CUDA_AVAILABLE:
        pytest.skip("no CUDA")
    return torch.device(device)


def _fastdl_types():
    return tuple(getattr(fnn, name) for name in ("Conv2d", "AvgPool2d", "MaxPool2d", "BatchNorm2d"))


def _assert_built_from(model, fast: bool):
    """Every conv/pool/BN layer of ``model`` is fastdl's (``fast``) or torch's own class."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d, nn.BatchNorm2d))
    ]
    assert layers
    for m in layers:
        if fast:
            assert isinstance(m, _fastdl_types()), f"{type(m)} is not a fastdl.nn layer"
        else:
            assert type(m).__module__.startswith("torch.nn"), f"{type(m)} is not torch's"


def _randomize_bn(model, generator=None):
    """Non-trivial BatchNorm affine parameters and running statistics (fresh ones are 1/0)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.5, 0.5, generator=generator)
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)


def _forward_backward(model, x):
    """One forward and backward (with a fixed random output gradient) of ``model`` on ``x``."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    gen = torch.Generator(device=out.device).manual_seed(1)
    out.backward(torch.randn(out.shape, generator=gen, dtype=out.dtype, device=out.device))
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return out.detach(), x.grad.detach(), grads


def _assert_same_run(fast, twin, x, rtol, atol):
    """Same output, input gradient and parameter gradients; same buffers afterwards."""
    fo, fx, fg = _forward_backward(fast, x)
    to, tx, tg = _forward_backward(twin, x)
    torch.testing.assert_close(fo, to, rtol=rtol, atol=atol, msg=lambda m: f"output: {m}")
    torch.testing.assert_close(fx, tx, rtol=rtol, atol=atol, msg=lambda m: f"grad input: {m}")
    assert fg.keys() == tg.keys()
    for name in fg:
        torch.testing.assert_close(
            fg[name], tg[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"grad {n}: {m}"
        )
    fb, tb = dict(fast.named_buffers()), dict(twin.named_buffers())
    assert fb.keys() == tb.keys()
    for name in fb:
        torch.testing.assert_close(
            fb[name], tb[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"buffer {n}: {m}"
        )


# ---------------------------------------------------------------------------------------------
# Construction and arguments (no fastdl conv needed)
# ---------------------------------------------------------------------------------------------


def test_lenet5_torch_backend_is_the_classic_table():
    m = LeNet5(backend="torch")
    assert sum(p.numel() for p in m.parameters()) == 61706
    x = torch.randn(2, 1, 32, 32)
    h = m.features[2](m.features[1](m.features[0](x)))
    assert h.shape == (2, 6, 14, 14)
    assert m.features(x).shape == (2, 16, 5, 5)
    assert m(x).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(in_channels=0), "in_channels"),
        (dict(num_classes=1.5), "num_classes"),
        (dict(activation="sigmoid"), "activation"),
        (dict(pooling="lp"), "pooling"),
        (dict(backend="cudnn"), "backend"),
    ],
)
def test_lenet5_bad_arguments(kwargs, word):
    assert_raises_naming(ValueError, lambda: LeNet5(**kwargs), word)


@pytest.mark.parametrize(
    "args, word",
    [
        ((0, 8), "in_channels"),
        ((8, -1), "out_channels"),
        ((8, 8, 0), "stride"),
        ((8, True), "out_channels"),
    ],
)
def test_resnet_block_bad_arguments(args, word):
    assert_raises_naming(ValueError, lambda: ResNetBlock(*args), word)


def test_missing_fastdl_layer_is_a_clear_error(monkeypatch):
    monkeypatch.delattr(fnn, "Conv2d", raising=False)
    with pytest.raises(NotImplementedError, match="fastdl.nn.Conv2d"):
        LeNet5()
    with pytest.raises(NotImplementedError, match="fastdl.nn.Conv2d"):
        ResNetBlock(4, 4)
    assert LeNet5(backend="torch")(torch.randn(1, 1, 32, 32)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# LeNet5
# ---------------------------------------------------------------------------------------------


@needs_conv2d
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_lenet5_shape_and_layers(activation, pooling):
    m = LeNet5(in_channels=3, num_classes=7, activation=activation, pooling=pooling)
    assert m(torch.randn(5, 3, 32, 32)).shape == (5, 7)
    _assert_built_from(m, fast=True)
    pool_type = fnn.AvgPool2d if pooling == "avg" else fnn.MaxPool2d
    assert sum(isinstance(layer, pool_type) for layer in m.modules()) == 2
    assert sum(isinstance(layer, fnn.Conv2d) for layer in m.modules()) == 2
    assert sum(p.numel() for p in m.parameters()) == sum(
        p.numel() for p in LeNet5(3, 7, activation, pooling, backend="torch").parameters()
    )
    assert "LeNet5" in repr(m) and f"pooling='{pooling}'" in repr(m)


@needs_conv2d
def test_lenet5_rejects_other_image_sizes():
    m = LeNet5()
    for shape in [(2, 1, 28, 28), (2, 3, 32, 32), (1, 32, 32)]:
        assert_raises_naming(ValueError, lambda s=shape: m(torch.randn(*s)), "32, 32")


@needs_conv2d
def test_torch_twin_is_an_independent_copy():
    m = LeNet5(activation="relu", pooling="max").double()
    twin = m.torch_twin()
    _assert_built_from(twin, fast=False)
    assert type(twin) is LeNet5 and twin.backend == "torch"
    sd, tsd = m.state_dict(), twin.state_dict()
    assert sd.keys() == tsd.keys()
    for k in sd:
        assert tsd[k].dtype == torch.float64 and torch.equal(sd[k], tsd[k])
        assert tsd[k].data_ptr() != sd[k].data_ptr()
    with torch.no_grad():
        next(twin.parameters()).add_(1.0)
    assert not torch.equal(next(twin.parameters()), next(m.parameters()))
    # load_state_dict both ways.
    fresh = LeNet5(activation="relu", pooling="max").double()
    fresh.load_state_dict(twin.state_dict())
    assert torch.equal(next(fresh.parameters()), next(twin.parameters()))
    twin.load_state_dict(m.state_dict())
    assert torch.equal(next(twin.parameters()), next(m.parameters()))
    m.eval()
    assert not m.torch_twin().training


@needs_conv2d
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_lenet5_matches_torch_twin(device, activation, pooling):
    dev = _device(device)
    m = LeNet5(in_channels=2, num_classes=10, activation=activation, pooling=pooling)
    m = m.to(device=dev, dtype=torch.float64)
    twin = m.torch_twin()
    x = torch.randn(4, 2, 32, 32, dtype=torch.float64, device=dev)
    _assert_same_run(m, twin, x, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# ResNetBlock
# ---------------------------------------------------------------------------------------------


@needs_conv2d
@pytest.mark.parametrize("cin, cout, stride", BLOCKS, ids=BLOCK_IDS)
def test_resnet_block_shape_and_layers(cin, cout, stride):
    m = ResNetBlock(cin, cout, stride)
    _assert_built_from(m, fast=True)
    assert isinstance(m.shortcut, nn.Identity) == (cin == cout and stride == 1)
    for h, w in [(9, 9), (8, 12)]:
        out = m(torch.randn(2, cin, h, w))
        assert out.shape == (2, cout, -(-h // stride), -(-w // stride))
        assert (out >= 0).all()  # ends with a ReLU
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))


@needs_conv2d
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cin, cout, stride", BLOCKS, ids=BLOCK_IDS)
def test_resnet_block_matches_torch_twin(cin, cout, stride, training, device):
    dev = _device(device)
    m = ResNetBlock(cin, cout, stride).to(device=dev, dtype=torch.float64)
    _randomize_bn(m)
    m.train(training)
    twin = m.torch_twin()
    assert twin.training == training
    x = torch.randn(3, cin, 10, 10, dtype=torch.float64, device=dev)
    before = {k: v.clone() for k, v in m.named_buffers()}
    _assert_same_run(m, twin, x, rtol=1e-9, atol=1e-10)
    # Train mode updates the running statistics (same values as torch's, checked above);
    # eval mode leaves them alone.
    changed = any(
        not torch.equal(before[k], v)
        for k, v in m.named_buffers()
        if not k.endswith("num_batches_tracked")
    )
    assert changed == training


@needs_conv2d
def test_resnet_block_channels_last():
    m = ResNetBlock(4, 8, 2).double()
    _randomize_bn(m)
    twin = m.torch_twin()
    m = m.to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64).to(memory_format=torch.channels_last)
    _assert_same_run(m, twin, x, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Training LeNet-5 on scikit-learn's digits
# ---------------------------------------------------------------------------------------------


def _digits(n=512):
    """``n`` of scikit-learn's 8x8 digits, nearest-upscaled to (n, 1, 32, 32), standardised."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, scale_factor=4, mode="nearest")
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.long)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    return x[idx], y[idx]


def _train(model, x, y, steps=30, batch=64):
    """Adam, fixed minibatch order. Returns (full-set loss before, after, per-step losses)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        initial = F.cross_entropy(model(x), y).item()
    losses = []
    for step in range(steps):
        start = (step * batch) % len(x)
        xb, yb = x[start : start + batch], y[start : start + batch]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(model(x), y).item()
    return initial, final, losses


@needs_conv2d
def test_lenet5_trains_on_digits_like_torch():
    x, y = _digits()
    torch.manual_seed(0)
    model = LeNet5()
    twin = model.torch_twin()
    initial, final, losses = _train(model, x, y)
    t_initial, t_final, t_losses = _train(twin, x, y)
    # The loss goes down clearly (about 2.3 -> well under 1 in 30 steps).
    assert final < 0.7 * initial, (initial, final, losses)
    # Same init and data: the fastdl model follows torch's trajectory (float32 rounding of
    # different kernels accumulates through Adam, hence the loose tolerance).
    assert initial == pytest.approx(t_initial, rel=1e-5)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(t_losses), rtol=2e-3, atol=2e-3)
    assert final == pytest.approx(t_final, rel=1e-2, abs=1e-3)
    for (name, p), tp in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, tp, rtol=1e-2, atol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
