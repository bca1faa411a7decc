"""Whole models from other libraries, patched: a Hugging Face BERT-style encoder and a timm
ViT, forward in evaluation mode, torch (unpatched) against the same model and weights under
``fastdl.patch()`` (its SDPA and LayerNorm calls, and the ViT's patch-embedding convolution,
run fastdl's kernels; the Linear layers and activations are torch's on both sides).

The models are built in ``make_inputs`` (passed to both sides as the first argument), so
listing or filtering the suite builds none, and a missing transformers or timm makes an
ERROR row of its case only. FLOPs count the matrix products: per layer
``2 T (4 H^2 + 2 H F)`` for the projections and MLP and ``4 T S H`` for attention, with
``T`` tokens per batch, ``S`` the sequence length, ``H`` the width and ``F`` the MLP width.
"""

from __future__ import annotations

import torch

import fastdl
from harness import FWD, Case

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


def _encoder_flops(batch: int, seq: int, width: int, mlp: int, layers: int) -> float:
    tokens = batch * seq
    projections = 2.0 * tokens * (4 * width * width + 2 * width * mlp)
    return layers * (projections + 4.0 * tokens * seq * width)


def bert_case(device: str, dtype: torch.dtype, batch: int, seq: int, width: int, layers: int,
              heads: int) -> Case:
    """A BERT-style encoder (transformers' BertModel from a config, random weights) over
    ``batch`` sequences of ``seq`` tokens, the last eighth of the second one padded (the
    padding mask reaches SDPA as a boolean mask)."""
    mlp = 4 * width

    def make_inputs():
        import transformers

        config = transformers.BertConfig(
            vocab_size=30522, hidden_size=width, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=mlp, max_position_embeddings=seq,
            attn_implementation="sdpa")
        model = transformers.BertModel(config).to(device, dtype).eval()
        ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        mask = torch.ones(batch, seq, dtype=torch.long, device=device)
        mask[min(1, batch - 1), seq - seq // 8:] = 0
        return (model, ids, mask)

    def forward(model, ids, mask):
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    label = f"B{batch} L{seq} H{width} x{layers} heads{heads} padded"
    return Case("hf_bert_forward", label, dtype, device, make_inputs, _patched(forward), forward,
                modes=(FWD,), flops_fwd=_encoder_flops(batch, seq, width, mlp, layers),
                **TOLERANCE[dtype])


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
    return Case("timm_vit_forward", label, dtype, device, make_inputs, _patched(forward), forward,
                modes=(FWD,), flops_fwd=flops, **TOLERANCE[dtype])


# width, layers, patch size of the timm ViTs used here.
_VIT_DIMS = {"vit_tiny_patch16_224": (192, 12, 16), "vit_small_patch16_224": (384, 12, 16),
             "vit_base_patch16_224": (768, 12, 16)}


def cases(device: str, quick: bool) -> list[Case]:
    """CPU fp32: BERT-style encoder B2 L512 H256 x4 layers (4 heads of 64), a timm ViT-Tiny
    forward on 8 images of 224x224 (197 tokens); ``quick``: one sequence of 512 tokens, two
    layers, 2 images. CUDA: bf16 BERT-base size (B8 L512 H768 x12) and ViT-Base B32."""
    if device == "cpu":
        if quick:
            return [bert_case("cpu", torch.float32, 1, 512, 256, 2, 4),
                    vit_case("cpu", torch.float32, "vit_tiny_patch16_224", 2, 224)]
        return [bert_case("cpu", torch.float32, 2, 512, 256, 4, 4),
                vit_case("cpu", torch.float32, "vit_tiny_patch16_224", 8, 224)]
    return [bert_case("cuda", torch.bfloat16, 8, 512, 768, 12, 12),
            vit_case("cuda", torch.bfloat16, "vit_base_patch16_224", 32, 224)]
