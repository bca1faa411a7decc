"""Whole models, as users run them, torch against fastdl on the same weights:

- converted by ``fastdl.nn.convert``: torchvision's resnet18, mobilenet_v2 and convnext_tiny
  (random weights, 224x224 images) in evaluation and as a training step (train mode, the
  gradients of every parameter of a squared-output loss), and the two models of examples/
  (the character LSTM language model and the Transformer encoder classifier), training steps;
- patched by ``fastdl.patch()``: a Hugging Face BERT-style encoder and a timm ViT, forward in
  evaluation mode (their SDPA and LayerNorm calls, and the ViT's patch-embedding
  convolution, run fastdl's kernels; the Linear layers and activations are torch's on both
  sides).

A converted model is a deep copy of the torch one made on the first fastdl call (kept per
model, so both sides start from the same weights and buffers).

The models are built in ``make_inputs`` (passed to both sides as the first argument), so
listing or filtering the suite builds none, and a missing transformers or timm makes an
ERROR row of its case only. FLOPs count the matrix products: per layer
``2 T (4 H^2 + 2 H F)`` for the projections and MLP and ``4 T S H`` for attention, with
``T`` tokens per batch, ``S`` the sequence length, ``H`` the width and ``F`` the MLP width.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import weakref

import torch

import fastdl
from harness import FWD, Case

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
_CONVERTED: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = (
    weakref.WeakKeyDictionary()
)

TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}


def _patched(forward):
    """``forward`` run under fastdl.patch()."""

    def run(*args):
        with fastdl.patch():
            return forward(*args)

    return run


def _converted(run):
    """``run(model, *args)`` on fastdl.nn.convert's copy of ``model`` (made once per model)."""

    def fastdl_run(model, *args):
        if model not in _CONVERTED:
            twin = copy.deepcopy(model)
            fastdl.nn.convert(twin)
            _CONVERTED[model] = twin
        return run(_CONVERTED[model], *args)

    return fastdl_run


def _train_step(forward):
    """A training step of ``forward(model, *args)``: the gradients of every parameter of
    mean(output^2), with autograd on even where the harness times under no_grad."""

    def step(model, *args):
        with torch.enable_grad():
            out = forward(model, *args)
            loss = sum(
                o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,))
            )
            params = [p for p in model.parameters() if p.requires_grad]
            return torch.autograd.grad(loss, params)

    return step


def torchvision_case(device: str, name: str, batch: int, image: int, train: bool) -> Case:
    """torchvision's ``name`` (random weights) on ``batch`` images, eval or a training step."""

    def make_inputs():
        import torchvision

        model = getattr(torchvision.models, name)(weights=None).to(device).train(train)
        return (model, torch.randn(batch, 3, image, image, device=device))

    def forward(model, images):
        return model(images)

    run = _train_step(forward) if train else forward
    label = f"B{batch} {image}x{image} {'train step' if train else 'eval'}"
    # Deep float32 networks: differences of a few 1e-4 relative grow through the layers; in
    # train mode, batch norm over 2 images amplifies them further: torch's own float32 weight
    # gradients of mobilenet_v2 are 0.04 off its float64 ones (fastdl's: 0.05), so the check
    # there can only catch gross errors.
    tol = dict(atol=1e-1, rtol=1e-1) if train else dict(atol=1e-3, rtol=1e-3)
    return Case(
        name, label, torch.float32, device, make_inputs, _converted(run), run, modes=(FWD,), **tol
    )


def _example(module: str):
    spec = importlib.util.spec_from_file_location(module, os.path.join(EXAMPLES, f"{module}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def char_lm_case(device: str, batch: int, length: int, hidden: int) -> Case:
    """examples/char_lm.py's model (embedding, 2-layer LSTM, head), a training step."""

    def make_inputs():
        model = _example("char_lm").CharModel(96, hidden=hidden, dropout=0.0).to(device).train()
        return (model, torch.randint(0, 96, (batch, length), device=device))

    run = _train_step(lambda model, tokens: model(tokens)[0])
    return Case(
        "char_lm_step",
        f"B{batch} T{length} H{hidden} lstm x2",
        torch.float32,
        device,
        make_inputs,
        _converted(run),
        run,
        modes=(FWD,),
        atol=1e-4,
        rtol=1e-3,
    )


def transformer_case(device: str, batch: int, length: int) -> Case:
    """examples/transformer_classifier.py's encoder (2 layers, padded sequences), a step."""

    def make_inputs():
        ex = _example("transformer_classifier")
        model = ex.TransformerClassifier(max_len=length).to(device).train()
        tokens, padding, _ = ex.make_batch(batch, length, torch.Generator().manual_seed(0))
        return (model, tokens.to(device), padding.to(device))

    run = _train_step(lambda model, tokens, padding: model(tokens, padding))
    return Case(
        "transformer_step",
        f"B{batch} L{length} d32 x2 padded",
        torch.float32,
        device,
        make_inputs,
        _converted(run),
        run,
        modes=(FWD,),
        atol=1e-4,
        rtol=1e-3,
    )


def _encoder_flops(batch: int, seq: int, width: int, mlp: int, layers: int) -> float:
    tokens = batch * seq
    projections = 2.0 * tokens * (4 * width * width + 2 * width * mlp)
    return layers * (projections + 4.0 * tokens * seq * width)


def bert_case(
    device: str, dtype: torch.dtype, batch: int, seq: int, width: int, layers: int, heads: int
) -> Case:
    """A BERT-style encoder (transformers' BertModel from a config, random weights) over
    ``batch`` sequences of ``seq`` tokens, the last eighth of the second one padded (the
    padding mask reaches SDPA as a boolean mask)."""
    mlp = 4 * width

    def make_inputs():
        import transformers

        config = transformers.BertConfig(
            vocab_size=30522,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=mlp,
            max_position_embeddings=seq,
            attn_implementation="sdpa",
        )
        model = transformers.BertModel(config).to(device, dtype).eval()
        ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        mask = torch.ones(batch, seq, dtype=torch.long, device=device)
        mask[min(1, batch - 1), seq - seq // 8 :] = 0
        return (model, ids, mask)

    def forward(model, ids, mask):
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    label = f"B{batch} L{seq} H{width} x{layers} heads{heads} padded"
    return Case(
        "hf_bert_forward",
        label,
        dtype,
        device,
        make_inputs,
        _patched(forward),
        forward,
        modes=(FWD,),
        flops_fwd=_encoder_flops(batch, seq, width, mlp, layers),
        **TOLERANCE[dtype],
    )


def vit_case(device: str, dtype: torch.dtype, name: str, batch: int, image: int) -> Case:
    """A timm ViT (random weights) on ``batch`` images of ``image`` x ``image`` pixels."""

    def make_inputs():
        import timm

        model = timm.create_model(name, pretrained=False, img_size=image).to(device, dtype).eval()
        images = torch.randn(batch, 3, image, image, device=device, dtype=dtype)
        return (model, images)

    def forward(model, images):
        return model(images)

    width, layers, patch = _VIT_DIMS[name]
    seq = (image // patch) ** 2 + 1
    flops = _encoder_flops(batch, seq, width, 4 * width, layers)
    label = f"{name} B{batch} {image}x{image} ({seq} tokens)"
    return Case(
        "timm_vit_forward",
        label,
        dtype,
        device,
        make_inputs,
        _patched(forward),
        forward,
        modes=(FWD,),
        flops_fwd=flops,
        **TOLERANCE[dtype],
    )


# width, layers, patch size of the timm ViTs used here.
_VIT_DIMS = {
    "vit_tiny_patch16_224": (192, 12, 16),
    "vit_small_patch16_224": (384, 12, 16),
    "vit_base_patch16_224": (768, 12, 16),
}


def cases(device: str, quick: bool) -> list[Case]:
    """CPU fp32: the torchvision models on 2 images of 224x224 (as issue #14 measured them),
    the char LM (B16 T64 H128) and Transformer encoder (B32 L64) steps, the BERT-style
    encoder B2 L512 H256 x4 layers (4 heads of 64) and a timm ViT-Tiny forward on 8 images
    (197 tokens); ``quick``: resnet18 only, smaller LM/encoder batches, one BERT sequence of
    two layers, 2 ViT images. CUDA: bf16 BERT-base size (B8 L512 H768 x12) and ViT-Base B32."""
    if device == "cpu":
        vision = [
            torchvision_case("cpu", name, 2, 224, train)
            for name in ("resnet18", "mobilenet_v2", "convnext_tiny")
            for train in (False, True)
        ]
        if quick:
            return vision[:2] + [
                char_lm_case("cpu", 8, 32, 64),
                transformer_case("cpu", 16, 32),
                bert_case("cpu", torch.float32, 1, 512, 256, 2, 4),
                vit_case("cpu", torch.float32, "vit_tiny_patch16_224", 2, 224),
            ]
        return vision + [
            char_lm_case("cpu", 16, 64, 128),
            transformer_case("cpu", 32, 64),
            bert_case("cpu", torch.float32, 2, 512, 256, 4, 4),
            vit_case("cpu", torch.float32, "vit_tiny_patch16_224", 8, 224),
        ]
    return [
        bert_case("cuda", torch.bfloat16, 8, 512, 768, 12, 12),
        vit_case("cuda", torch.bfloat16, "vit_base_patch16_224", 32, 224),
    ]
