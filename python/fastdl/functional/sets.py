"""Induced-point attention: the fused multi-head attention core of the Set Transformer's
blocks (MAB, SAB, ISAB, PMA), for their extreme shapes — a few queries over many keys (ISAB's
inducing points over a set of n elements, PMA's seeds) and many queries over a short key set
(the n elements over the inducing points)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.library import register_fake

from .._fake import stats_dtype


def induced_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    r"""Multi-head attention of already-projected queries over keys and values, fused.

    ``out[b, h, i] = sum_j softmax_j(scale * query[b, h, i] . key[b, h, j]) value[b, h, j]``
    over the keys that ``key_padding_mask`` does not mark.

    Two exact strategies, picked from the shapes: with few queries (``L <= S``) the key axis is
    split into chunks processed in parallel and combined with the log-sum-exp trick
    (flash-decoding); with many queries each block of query rows runs one online softmax over
    the whole (short) key set held in cache / shared memory. The ``(L, S)`` score matrix is
    never stored: the forward keeps only the output and each row's log-sum-exp, and the
    backward recomputes the probabilities from them.

    A query row whose keys are all padded (a set with no element, or ``S = 0``) gets output 0
    and zero gradients (not NaN, unlike a softmax over nothing).

    CPU: float32/float64; CUDA: also float16/bfloat16 (accumulated in float32). Differentiable
    in ``query``, ``key`` and ``value``; no double backward. Under ``torch.autocast`` it runs
    in the autocast dtype on CUDA (as torch's attention) and in float32 on CPU. Any strides
    work; inputs whose last dim is contiguous (e.g. the ``(batch, n, heads, E)`` views that
    splitting heads makes) are read in place.

    Args:
        query: ``(batch, heads, L, E)``.
        key: ``(batch, heads, S, E)``.
        value: ``(batch, heads, S, Ev)``.
        key_padding_mask: optional ``(batch, S)`` bool, **True where the key is padding**
            (ignored), as :class:`torch.nn.MultiheadAttention`'s ``key_padding_mask``.
        scale: factor of the scores; default ``1 / sqrt(E)``.

    Returns:
        ``(batch, heads, L, Ev)``, laid out in memory as ``(batch, L, heads, Ev)`` so that
        ``out.transpose(1, 2).reshape(batch, L, heads * Ev)`` (merging the heads) is free.
    """
    return torch.ops.fastdl.induced_attention_forward(query, key, value, key_padding_mask, scale)[0]


def induced_attention_with_lse(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """:func:`induced_attention` and each query row's log-sum-exp of its scaled scores,
    ``(batch, heads, L)`` (float32 for half inputs; ``-inf`` for a row with no key)."""
    out, lse = torch.ops.fastdl.induced_attention_forward(
        query, key, value, key_padding_mask, scale
    )
    return out, lse


# ---- fake kernels: shapes and dtypes for torch.compile, torch.export, FakeTensor ----


@register_fake("fastdl::induced_attention_forward")
def _induced_attention_forward(query, key, value, key_padding_mask=None, scale=None):
    torch._check(
        query.dim() == 4 and key.dim() == 4 and value.dim() == 4,
        lambda: "fastdl.induced_attention: query, key and value must be 4-d (batch, heads, L|S, E)",
    )
    b, h, l, _ = query.shape
    # The output is laid out as (batch, L, heads, Ev), so merging the heads is free.
    out = query.new_empty((b, l, h, value.shape[3])).transpose(1, 2)
    return out, query.new_empty((b, h, l), dtype=stats_dtype(query))


def _induced_rows_ready(t):
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


@register_fake("fastdl::induced_attention_backward")
def _induced_attention_backward(
    grad_output, query, key, value, key_padding_mask, output, lse, scale, output_mask
):
    return tuple(
        _induced_rows_ready(torch.empty_like(_induced_rows_ready(t))) if need else None
        for t, need in zip((query, key, value), output_mask)
    )
