"""MultiheadAttention backed by fastdl's fused attention kernel.

Subclasses :class:`torch.nn.MultiheadAttention`, so the constructor, parameter names
(``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``, ``bias_k``,
``bias_v``), initialisation and ``state_dict`` are torch's own. ``forward`` follows
``torch.nn.functional.multi_head_attention_forward`` step by step (input projections, bias_kv,
zero attention, mask merging) and runs the attention itself in
``torch.ops.fastdl.sdpa_forward``. With ``need_weights=True`` the probabilities come from
``torch.ops.fastdl.sdpa_weights`` next to the fused output (same dropout mask), so the output
never leaves the fused path.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as torch_F
from torch import Tensor, nn

from ._base import FastdlModule


def _pad_column(mask: Optional[Tensor]) -> Optional[Tensor]:
    """A mask with one more key column (attending to it), as torch pads for bias_kv/zero_attn."""
    return None if mask is None else torch_F.pad(mask, (0, 1))


class MultiheadAttention(FastdlModule, nn.MultiheadAttention):
    """Drop-in :class:`torch.nn.MultiheadAttention` running fastdl's fused attention.

    Same arguments, returns and errors as torch's ``forward(query, key, value,
    key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True,
    is_causal=False)``. Pass ``need_weights=False`` for the fastest path.
    """

    torch_type = nn.MultiheadAttention

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        is_batched = torch_F._mha_shape_check(
            query, key, value, key_padding_mask, attn_mask, self.num_heads
        )
        if self.batch_first and is_batched:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if not is_batched:
            query, key, value = (x.unsqueeze(1) for x in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        key_padding_mask, attn_mask, is_causal = _canonical_masks(
            query, key_padding_mask, attn_mask, is_causal, need_weights
        )

        tgt_len, bsz, embed_dim = query.shape
        if embed_dim != self.embed_dim:
            raise AssertionError(
                f"was expecting embedding dimension of {self.embed_dim}, but got {embed_dim}"
            )
        _check_mask_shapes(key_padding_mask, attn_mask, bsz, self.num_heads, tgt_len, key.shape[0])
        q, k, v, attn_mask, key_padding_mask = self._heads(
            query, key, value, attn_mask, key_padding_mask
        )
        mask = _sdpa_mask(attn_mask, key_padding_mask, q.shape[:3], k.shape[2])
        out, weights = self._attend(q, k, v, mask, is_causal, need_weights, average_attn_weights)
        if weights is not None and not is_batched:
            weights = weights.squeeze(0)

        # (N, heads, L, head_dim) -> (L, N, E), output projection.
        out = out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, embed_dim)
        out = torch_F.linear(out, self.out_proj.weight, self.out_proj.bias).view(
            tgt_len, bsz, embed_dim
        )
        if not is_batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _heads(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Optional[Tensor],
        key_padding_mask: Optional[Tensor],
    ):
        """The input projections (dense GEMMs), bias_kv and zero_attn's extra key, as
        (N, heads, L|S, head_dim) views (the kernel takes the strides as they are), and the masks
        padded to match."""
        bsz, heads, head_dim = query.shape[1], self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (
            (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        )
        q = torch_F.linear(query, w_q, b_q)
        k = torch_F.linear(key, w_k, b_k)
        v = torch_F.linear(value, w_v, b_v)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask, key_padding_mask = _pad_column(attn_mask), _pad_column(key_padding_mask)
        q, k, v = (t.view(t.shape[0], bsz, heads, head_dim).permute(1, 2, 0, 3) for t in (q, k, v))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz, heads, 1, head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(bsz, heads, 1, head_dim)], dim=2)
            attn_mask, key_padding_mask = _pad_column(attn_mask), _pad_column(key_padding_mask)
        return q, k, v, attn_mask, key_padding_mask

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Optional[Tensor],
        is_causal: bool,
        need_weights: bool,
        average_attn_weights: bool,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """The fused attention (N, heads, L, head_dim), and the weights when asked for."""
        dropout_p = self.dropout if self.training else 0.0
        seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64) if dropout_p > 0 else None
        causal = is_causal and mask is None
        out, lse = torch.ops.fastdl.sdpa_forward(q, k, v, mask, dropout_p, causal, None, seed)
        if not need_weights:
            return out, None
        weights = torch.ops.fastdl.sdpa_weights(q, k, mask, dropout_p, causal, None, seed, lse)
        return out, weights.mean(dim=1) if average_attn_weights else weights


def _canonical_masks(
    query: Tensor,
    key_padding_mask: Optional[Tensor],
    attn_mask: Optional[Tensor],
    is_causal: bool,
    need_weights: bool,
):
    """torch's mask conventions: both masks as float (or bool) of the query's dtype, and whether
    the fused causal path replaces attn_mask (is_causal is only a hint that attn_mask is causal;
    the fused path is taken when nothing else needs the explicit mask)."""
    key_padding_mask = torch_F._canonical_mask(
        mask=key_padding_mask,
        mask_name="key_padding_mask",
        other_type=torch_F._none_or_dtype(attn_mask),
        other_name="attn_mask",
        target_type=query.dtype,
    )
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. You may use the "
            "Transformer module method `generate_square_subsequent_mask` to create "
            "this mask."
        )
    if is_causal and key_padding_mask is None and not need_weights:
        return key_padding_mask, None, is_causal
    attn_mask = torch_F._canonical_mask(
        mask=attn_mask,
        mask_name="attn_mask",
        other_type=None,
        other_name="",
        target_type=query.dtype,
        check_other=False,
    )
    return key_padding_mask, attn_mask, is_causal and key_padding_mask is None


def _check_mask_shapes(
    key_padding_mask: Optional[Tensor],
    attn_mask: Optional[Tensor],
    bsz: int,
    heads: int,
    tgt_len: int,
    src_len: int,
) -> None:
    """torch's shape errors for the two masks."""
    batch_heads = bsz * heads
    if key_padding_mask is not None and key_padding_mask.shape != (bsz, src_len):
        raise AssertionError(
            f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
            f"{tuple(key_padding_mask.shape)}"
        )
    if attn_mask is not None and attn_mask.dim() == 2:
        if attn_mask.shape != (tgt_len, src_len):
            raise RuntimeError(
                f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, but should be "
                f"{(tgt_len, src_len)}."
            )
    elif attn_mask is not None and attn_mask.shape != (batch_heads, tgt_len, src_len):
        raise RuntimeError(
            f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, but should be "
            f"{(batch_heads, tgt_len, src_len)}."
        )


def _sdpa_mask(
    attn_mask: Optional[Tensor],
    key_padding_mask: Optional[Tensor],
    query_shape: torch.Size,
    src_len: int,
) -> Optional[Tensor]:
    """attn_mask (L, S) or (N * heads, L, S) plus key_padding_mask (N, S) as one additive (or
    bool) mask broadcast to (N, heads, L, S), or None."""
    bsz, heads, tgt_len = query_shape
    mask = None
    if attn_mask is not None:
        mask = (
            attn_mask.view(1, 1, tgt_len, src_len)
            if attn_mask.dim() == 2
            else attn_mask.view(bsz, heads, tgt_len, src_len)
        )
    if key_padding_mask is not None:
        padding = key_padding_mask.view(bsz, 1, 1, src_len)
        mask = padding if mask is None else mask + padding
    return None if mask is None else mask.expand(bsz, heads, tgt_len, src_len)
