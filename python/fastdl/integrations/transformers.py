"""fastdl's fused attention as a Hugging Face transformers attention implementation.

    import fastdl.integrations.transformers as fastdl_hf
    fastdl_hf.register()                                        # once; returns "fastdl"
    model = AutoModel.from_config(cfg, attn_implementation="fastdl")
    model.set_attn_implementation("fastdl")                     # or switch an existing model

transformers' models (those that call ``ALL_ATTENTION_FUNCTIONS``: BERT, Llama, ViT and
most recent ones, transformers 4.48 and later) then run :func:`attention_forward` in every
attention layer: the model's mask (boolean, True = attend, made by transformers' SDPA mask
function, or an additive float mask), causal attention, grouped-query attention (no repeat of
the key/value heads), attention dropout in training and the model's scaling go to
``fastdl.functional.scaled_dot_product_attention``. Calls fastdl cannot run (a dtype or device
it has no kernel for) fall back to torch's SDPA, counted as :func:`fastdl.patch_stats` shows.

transformers is imported only by :func:`register`; fastdl does not depend on it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..patch import routed

__all__ = ["NAME", "attention_forward", "register"]

#: The ``attn_implementation`` name :func:`register` uses by default.
NAME = "fastdl"

_warned_weights = False


def attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """One attention layer's core, in transformers' attention-function convention.

    Args:
        module: the attention layer (its ``is_causal`` is the default for ``is_causal``).
        query: ``(batch, heads, q_len, head_dim)``.
        key, value: ``(batch, kv_heads, kv_len, head_dim)``; ``heads`` a multiple of
            ``kv_heads`` (grouped-query attention).
        attention_mask: None, a boolean mask (True = attend) or an additive float mask,
            broadcastable to ``(batch, heads, q_len, kv_len)``; a longer last dim (a static
            cache's) is cut to ``kv_len``.
        dropout: attention dropout probability (models pass 0 in evaluation).
        scaling: score scale, default ``1 / sqrt(head_dim)``.
        is_causal: causal attention when no mask is given (a mask already holds causality).
        kwargs: ``position_bias`` (an additive bias, T5-style) is added to the mask;
            ``softcap`` is not supported; ``output_attentions`` cannot be honoured (no
            attention matrix is formed) and gives None weights, as transformers' SDPA.

    Returns:
        ``(output, None)``: output ``(batch, q_len, heads, head_dim)``, contiguous.
    """
    global _warned_weights
    if kwargs.get("softcap") is not None:
        raise ValueError(
            "fastdl attention: softcap is not supported; use attn_implementation="
            "'eager' or 'flex_attention' for models with logit soft-capping"
        )
    if kwargs.get("output_attentions") and not _warned_weights:
        _warned_weights = True
        import warnings

        warnings.warn(
            "fastdl attention returns no attention weights (output_attentions=True "
            "gives None); use attn_implementation='eager' to get them",
            stacklevel=2,
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    mask = attention_mask
    if mask is not None and mask.shape[-1] > kv_len:
        mask = mask[..., :kv_len]
    if mask is not None and mask.dtype != torch.bool and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)  # additive masks made in another precision
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # A mask holds causality already; one query (decoding) attends to every cached key.
    causal = bool(causal) and mask is None and q_len > 1
    if causal and kv_len > q_len:
        # Prefill into an empty static cache: the keys past q_len are unwritten, and causal
        # attention is top-left aligned, so keep the first q_len keys.
        key, value, kv_len = key[:, :, :q_len], value[:, :, :q_len], q_len
    bias = kwargs.get("position_bias")
    if bias is not None:
        # An additive bias joins the mask: a float mask is added, masked-out places of a
        # boolean (or causal) one get the dtype's minimum (finite: no NaN in masked rows).
        bias = bias[..., :kv_len]
        if causal:
            mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        if mask is None:
            mask = bias
        elif mask.dtype == torch.bool:
            mask = bias.masked_fill(~mask, torch.finfo(bias.dtype).min)
        else:
            mask = bias + mask
        mask, causal = mask.to(query.dtype), False
    output = routed("scaled_dot_product_attention")(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=float(dropout),
        is_causal=causal,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def register(name: str = NAME) -> str:
    """Register :func:`attention_forward` with transformers as ``attn_implementation=name``
    (``AttentionInterface``), with transformers' SDPA mask function for it where transformers
    has a mask registry (``AttentionMaskInterface``, 4.53 and later). Idempotent.

    Returns:
        ``name``, to pass as ``attn_implementation``.

    Raises:
        ImportError: transformers is not installed or older than 4.48 (no AttentionInterface).
    """
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "fastdl.integrations.transformers.register needs transformers "
            "(pip install 'fastdl[transformers]')"
        ) from exc
    interface = getattr(transformers, "AttentionInterface", None)
    if interface is None:
        raise ImportError(
            f"fastdl.integrations.transformers.register needs transformers 4.48 or "
            f"later (AttentionInterface), found {transformers.__version__}"
        )
    interface.register(name, attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        pass  # before 4.53 the models build SDPA-style or additive masks themselves
    else:
        # fastdl takes the masks SDPA takes: boolean (True = attend), or None for causal.
        AttentionMaskInterface.register(name, sdpa_mask)
    return name
