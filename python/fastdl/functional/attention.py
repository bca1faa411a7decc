"""Attention: scaled_dot_product_attention with torch.nn.functional's signature.

The fused op ``torch.ops.fastdl.sdpa_forward`` takes 4-d ``(B, H, L, E)`` tensors; this
wrapper maps torch's shapes onto it: any number of leading dims broadcast against each other
(as torch's math path does), a 2-d input is one head of one batch, and with ``enable_gqa`` the
head dims of key/value may divide the query's.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.library import register_fake

from .._fake import stats_dtype

_NAME = "fastdl.scaled_dot_product_attention"


def _leading_shape(
    query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool
) -> tuple[list[int], int]:
    """The broadcast leading dims of query/key/value (query's heads last when gqa), and key's heads."""
    if enable_gqa and query.dim() >= 3:
        batch = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
        q_heads, k_heads, v_heads = query.shape[-3], key.shape[-3], value.shape[-3]
        if k_heads != v_heads or k_heads == 0 or q_heads % k_heads != 0:
            raise RuntimeError(
                f"{_NAME}: with enable_gqa=True the number of query heads ({q_heads}) must be a "
                f"multiple of the number of key heads ({k_heads}), which must equal the number of "
                f"value heads ({v_heads})"
            )
        return list(batch) + [q_heads], k_heads
    try:
        lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError as exc:
        raise RuntimeError(
            f"{_NAME}: the leading dims of query {list(query.shape)}, key {list(key.shape)} and "
            f"value {list(value.shape)} must broadcast (different head counts need enable_gqa=True)"
        ) from exc
    return list(lead), (lead[-1] if lead else 1)


def _as_4d(t: Tensor, lead: list[int], heads: int) -> Tensor:
    """``t`` expanded to ``lead[:-1] + [heads] + t.shape[-2:]`` and seen as (B, heads, rows, dim)."""
    batch = lead[:-1]
    t = t.expand(*batch, heads, *t.shape[-2:]) if lead else t
    return t.reshape(math.prod(batch), heads, *t.shape[-2:])


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tensor:
    r"""``softmax(query @ key.T * scale + mask) @ value``, fused, as
    :func:`torch.nn.functional.scaled_dot_product_attention`.

    A flash-attention kernel: scores are computed block by block with an online softmax, never
    as an ``L x S`` matrix; backward recomputes them from the saved row log-sum-exp.

    Args:
        query: ``(N, ..., Hq, L, E)``.
        key: ``(N, ..., H, S, E)``.
        value: ``(N, ..., H, S, Ev)``.
        attn_mask: broadcastable to ``(N, ..., Hq, L, S)``; bool (``True`` = take part in
            attention) or of the query's dtype (added to the scores; differentiable).
        dropout_p: probability of dropping an attention weight. The keep mask is a hash of a
            seed drawn from torch's default generator (so ``torch.manual_seed`` reproduces it)
            and of the position, regenerated in backward rather than stored. It differs from
            torch's random stream.
        is_causal: mask keys after each query (top-left aligned when ``L != S``, as torch);
            cannot be combined with ``attn_mask``.
        scale: score scale, default ``1 / sqrt(E)``.
        enable_gqa: allow ``Hq`` to be a multiple of ``H`` (grouped-query attention: query head
            ``h`` attends with key/value head ``h // (Hq // H)``).

    Returns:
        ``(N, ..., Hq, L, Ev)``. Rows whose keys are all masked are zeros (torch's behaviour).
        float32/float64, and float16/bfloat16 (accumulating in float32).
    """
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise RuntimeError(
            f"{_NAME}: expected query, key, and value to all be at least 2 dimensional, but got "
            f"query.dim: {query.dim()} key.dim: {key.dim()} and value.dim: {value.dim()} instead."
        )
    if is_causal and attn_mask is not None:
        raise RuntimeError(f"{_NAME}: explicit attn_mask should not be set when is_causal=True")
    lead, kv_heads = _leading_shape(query, key, value, enable_gqa)
    q_heads = lead[-1] if lead else 1
    dtype, upcast = query.dtype, False
    if _sums_broadcast_half_gradients_on_cpu(
        (query, key, value), lead, (q_heads, kv_heads, kv_heads)
    ):
        # A broadcast input's gradient is a sum over the broadcast dims. The CPU kernels compute
        # half inputs in float32 anyway: entering in float32, the sum is rounded once.
        query, key, value, upcast = query.float(), key.float(), value.float(), True
        if attn_mask is not None and attn_mask.dtype == dtype:
            attn_mask = attn_mask.float()
    q4 = _as_4d(query, lead, q_heads)
    k4 = _as_4d(key, lead, kv_heads)
    v4 = _as_4d(value, lead, kv_heads)
    L, S = query.shape[-2], key.shape[-2]
    mask4 = None
    if attn_mask is not None:
        target = [*lead, L, S]
        try:
            torch.broadcast_shapes(attn_mask.shape, target)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{_NAME}: attn_mask of shape {list(attn_mask.shape)} must be "
                f"broadcastable to {target}"
            ) from exc
        mask4 = attn_mask.expand(target).reshape(q4.shape[0], q_heads, L, S)
    seed = None
    if dropout_p > 0.0:
        seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)
    output = torch.ops.fastdl.sdpa_forward(
        q4, k4, v4, mask4, float(dropout_p), bool(is_causal), scale, seed
    )[0]
    if upcast:
        output = output.to(dtype)
    return output.reshape(*lead, L, value.shape[-1]) if lead else output.reshape(L, value.shape[-1])


def _sums_broadcast_half_gradients_on_cpu(tensors, lead: list[int], heads) -> bool:
    """Whether a float16/bfloat16 CPU input that needs a gradient is broadcast (expanded)."""
    for t, h in zip(tensors, heads):
        if (
            t.device.type == "cpu"
            and t.dtype in (torch.float16, torch.bfloat16)
            and t.requires_grad
            and lead
            and tuple(t.shape) != (*lead[:-1], h, *t.shape[-2:])
        ):
            return True
    return False


# ---- fake kernels: shapes and dtypes for torch.compile, torch.export, FakeTensor ----


@register_fake("fastdl::sdpa_forward")
def _sdpa_forward(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, dropout_seed=None
):
    torch._check(
        query.dim() == 4 and key.dim() == 4 and value.dim() == 4,
        lambda: "fastdl.scaled_dot_product_attention: query, key and value must be 4-d",
    )
    B, Hq, L, _ = query.shape
    output = query.new_empty((B, Hq, L, value.shape[-1]))
    return output, query.new_empty((B, Hq, L), dtype=stats_dtype(query))


@register_fake("fastdl::sdpa_backward")
def _sdpa_backward(
    grad_output,
    query,
    key,
    value,
    attn_mask,
    output,
    logsumexp,
    dropout_p,
    is_causal,
    scale,
    dropout_seed,
    output_mask,
):
    grads = [
        t.new_empty(t.shape) if wanted else None
        for t, wanted in zip((query, key, value), output_mask[:3])
    ]
    B, Hq, L, _ = query.shape
    grad_mask = query.new_empty((B, Hq, L, key.shape[2])) if output_mask[3] else None
    return (*grads, grad_mask)


@register_fake("fastdl::sdpa_weights")
def _sdpa_weights(query, key, attn_mask, dropout_p, is_causal, scale, dropout_seed, logsumexp):
    B, Hq, L, _ = query.shape
    return query.new_empty((B, Hq, L, key.shape[2]))


@register_fake("fastdl::sdpa_weights_backward")
def _sdpa_weights_backward(
    grad_weights,
    query,
    key,
    attn_mask,
    dropout_p,
    is_causal,
    scale,
    dropout_seed,
    logsumexp,
    output_mask,
):
    return (
        query.new_empty(query.shape) if output_mask[0] else None,
        key.new_empty(key.shape) if output_mask[1] else None,
        grad_weights.new_empty(grad_weights.shape) if output_mask[2] else None,
    )
