"""Real models from torchvision and timm, random weights, through fastdl.nn.convert and/or
fastdl.patch: evaluation outputs and training gradients equal torch's, and convert's report
lists what it swapped.

float32 is judged against a float64 reference (fastdl's error at most twice torch's own plus
1e-5 of the largest value, see model_helpers). Training through batch norm is compared in
float64: with small batches each layer's normalisation divides by a batch variance that
rounding perturbs, the error grows layer by layer (and flips ReLU6 clamps), and torch's own
float32 gradients are off by up to 10% there, so float32 says nothing about fastdl.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import fastdl
import fastdl.nn as fnn
from fastdl.nn.convert import CONVERSIONS
from model_helpers import FastdlOps, compare_model

pytestmark = pytest.mark.slow


def _torchvision(name, **kw):
    models = pytest.importorskip("torchvision").models
    return lambda: getattr(models, name)(**kw)


def _timm(name, **kw):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, pretrained=False, **kw)


def _images(n, hw):
    return lambda: (torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(0)),)


def convert(model):
    fnn.convert(model)
    return model, model


def patch(model):
    def run(*args):
        with fastdl.patch():
            return model(*args)

    return run, model


def convert_and_patch(model):
    """Convert the layers convert knows, patch the functions the rest call (e.g. LayerNorm
    subclasses)."""
    return patch(convert(model)[0])


# (id, model factory, inputs, route, dtype, train, fastdl forward ops that must run). Models
# without batch norm or dropout compute the same forward in both modes, so their training case
# checks the evaluation output too; the models with batch norm get both.
CASES = [
    (
        "resnet18-convert-eval",
        _torchvision("resnet18"),
        _images(2, 32),
        convert,
        torch.float32,
        False,
        {"conv2d", "batch_norm", "max_pool2d"},
    ),
    (
        "resnet18-convert-train",
        _torchvision("resnet18"),
        _images(4, 64),
        convert,
        torch.float64,
        True,
        {"conv2d", "batch_norm", "max_pool2d"},
    ),
    (
        "resnet18-patch-eval",
        _torchvision("resnet18"),
        _images(2, 32),
        patch,
        torch.float32,
        False,
        {"conv2d", "batch_norm", "max_pool2d"},
    ),
    (
        "mobilenet_v2-convert-eval",
        _torchvision("mobilenet_v2", dropout=0.0),
        _images(2, 32),
        convert,
        torch.float32,
        False,
        {"conv2d", "batch_norm"},
    ),
    (
        "mobilenet_v2-patch-train",
        _torchvision("mobilenet_v2", dropout=0.0),
        _images(4, 64),
        patch,
        torch.float64,
        True,
        {"conv2d", "batch_norm"},
    ),
    # ConvNeXt's LayerNorm2d subclasses are not converted: the patch takes their F.layer_norm.
    (
        "convnext_tiny-convert+patch-train",
        _torchvision("convnext_tiny", stochastic_depth_prob=0.0),
        _images(2, 32),
        convert_and_patch,
        torch.float32,
        True,
        {"conv2d", "layer_norm"},
    ),
    # nn.MultiheadAttention converted: fastdl's fused attention inside fastdl.nn's module.
    (
        "vit_b_16-convert-train",
        _torchvision("vit_b_16", image_size=32),
        _images(2, 32),
        convert,
        torch.float32,
        True,
        {"conv2d", "layer_norm", "sdpa"},
    ),
    # Patched, in evaluation without autograd: torch's fused MHA inference path (no F.sdpa).
    (
        "vit_b_16-patch-eval",
        _torchvision("vit_b_16", image_size=32),
        _images(2, 32),
        patch,
        torch.float32,
        False,
        {"conv2d", "layer_norm"},
    ),
    # timm ConvNeXt: depthwise 7x7 convolutions and LayerNorm (timm's subclasses: patched).
    (
        "timm-convnext_atto-convert+patch-train",
        _timm("convnext_atto"),
        _images(2, 32),
        convert_and_patch,
        torch.float32,
        True,
        {"conv2d", "layer_norm"},
    ),
    # timm ViT: F.scaled_dot_product_attention and timm's LayerNorm, through the patch alone.
    (
        "timm-vit_tiny-patch-train",
        _timm("vit_tiny_patch16_224", img_size=32),
        _images(2, 32),
        patch,
        torch.float32,
        True,
        {"conv2d", "layer_norm", "sdpa"},
    ),
]


@pytest.mark.parametrize(
    "make_model, make_inputs, route, dtype, train, ops",
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_matches_torch(make_model, make_inputs, route, dtype, train, ops):
    """Output (eval) or output, every parameter and input gradient and the running statistics
    (train) of the model through fastdl equal torch's; fastdl's kernels ran, with no call
    falling back to torch."""
    torch.manual_seed(0)
    model = make_model()
    fastdl.reset_patch_stats()
    with FastdlOps() as recorded:
        compare_model(model, route, make_inputs, dtype, train=train)
    ran = {n.removesuffix("_forward") for n in recorded.names() if n.endswith("_forward")}
    assert ran == ops
    assert fastdl.patch_stats().fallbacks == 0, str(fastdl.patch_stats())


def _swapped_counts(report):
    return Counter(kind for _, kind, _ in report.swapped)


@pytest.mark.parametrize(
    "make_model, swapped, skipped",
    [
        pytest.param(
            _torchvision("resnet18"),
            {"Conv2d": 20, "BatchNorm2d": 20, "MaxPool2d": 1},
            {},
            id="resnet18",
        ),
        pytest.param(
            _torchvision("mobilenet_v2"), {"Conv2d": 52, "BatchNorm2d": 52}, {}, id="mobilenet_v2"
        ),
        pytest.param(
            _torchvision("convnext_tiny"),
            {"Conv2d": 22, "LayerNorm": 18},
            {"LayerNorm2d": 5},
            id="convnext_tiny",
        ),
        pytest.param(
            _torchvision("vit_b_16"),
            {"Conv2d": 1, "LayerNorm": 25, "MultiheadAttention": 12},
            {},
            id="vit_b_16",
        ),
        pytest.param(
            _timm("convnext_atto"), {"Conv2d": 40}, {"LayerNorm2d": 17}, id="timm-convnext_atto"
        ),
    ],
)
def test_convert_report(make_model, swapped, skipped):
    """convert swaps exactly the layers of the types it knows (in place, keeping the
    parameter objects), names each, and lists the subclasses it leaves alone."""
    torch.manual_seed(0)
    model = make_model()
    params = {name: p for name, p in model.named_parameters()}
    known = {name for name, m in model.named_modules() if type(m) in CONVERSIONS}
    report = fnn.convert(model)
    assert _swapped_counts(report) == Counter(swapped)
    assert {name for name, _, _ in report.swapped} == known
    for name, kind, new in report.swapped:
        module = model.get_submodule(name)
        assert type(module).__name__ == new and type(module).__module__.startswith("fastdl.nn")
        assert new == kind  # fastdl.nn's twin has the torch class's name
    assert Counter(kind for _, kind, _ in report.skipped) == Counter(skipped)
    assert all("subclass of" in why for _, _, why in report.skipped)
    assert all(p is params[name] for name, p in model.named_parameters())
    text = str(report)
    assert f"swapped {sum(swapped.values())} layer(s)" in text
    assert all(name in text for name, _, _ in report.swapped + report.skipped)
