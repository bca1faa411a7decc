"""The Set Transformer's attention and blocks as pure-PyTorch compositions of their
equations (Lee et al., "Set Transformer", ICML 2019), materialising the (L, S) score matrix:
the references fastdl's fused induced attention and its modules are tested and benchmarked
against. Run them on float64 copies for a high-precision reference."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def induced_attention_reference(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """Reference for :func:`fastdl.functional.induced_attention` (same arguments and result):
    ``softmax(scale * q k^T) v`` with padded keys (mask True) left out, and zeros (with zero
    gradients) for a query row that has no key left."""
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] > 0 else 1.0
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale  # (B, H, L, S)
    if key_padding_mask is not None and key.shape[-2] > 0:
        padded = key_padding_mask[:, None, None, :]
        empty = key_padding_mask.all(dim=-1)[:, None, None, None]  # sets with no key
        # Padded keys get -inf; in an empty set every score is 0 instead (a harmless uniform
        # softmax) and the probabilities are zeroed below, so no NaN appears forward or backward.
        scores = scores.masked_fill(padded & ~empty, float("-inf")).masked_fill(empty, 0.0)
        probs = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def mab_reference(mab, X: Tensor, Y: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """:class:`fastdl.nn.MAB` ``mab`` applied to ``(X, Y)``, written from the equations with
    the module's parameters in ``X``'s dtype (give float64 inputs for a float64 reference).

    ``variant="paper"``::

        Q, K, V = X Wq + bq, Y Wk + bk, Y Wv + bv
        O_h     = softmax(Q_h K_h^T / sqrt(dim_V / heads)) V_h
        H       = LN0(X + concat_h(O_h) W^O + b^O)      (Q instead of X when dim_Q != dim_V)
        MAB     = LN1(H + relu(H Wo + bo))

    ``variant="reference"`` (juho-lee/set_transformer): scale ``1 / sqrt(dim_V)``, no W^O,
    ``H = LN0(Q + concat_h(O_h))``. LN0 and LN1 only when ``ln=True``.
    """
    dtype = X.dtype

    def lin(layer, x):
        return F.linear(x, layer.weight.to(dtype), layer.bias.to(dtype))

    def norm(layer, x):
        return F.layer_norm(
            x, layer.normalized_shape, layer.weight.to(dtype), layer.bias.to(dtype), layer.eps
        )

    heads, dim_V = mab.num_heads, mab.dim_V
    Q, K, V = lin(mab.fc_q, X), lin(mab.fc_k, Y), lin(mab.fc_v, Y)
    scale = 1.0 / math.sqrt(dim_V // heads if mab.variant == "paper" else dim_V)
    O = induced_attention_reference(
        _split_heads(Q, heads),
        _split_heads(K, heads),
        _split_heads(V, heads),
        key_padding_mask,
        scale,
    )
    O = O.transpose(1, 2).reshape(Q.shape)
    if mab.variant == "paper":
        H = (X if X.shape[-1] == dim_V else Q) + lin(mab.fc_mh, O)
    else:
        H = Q + O
    if mab.ln:
        H = norm(mab.ln0, H)
    out = H + torch.relu(lin(mab.fc_o, H))
    return norm(mab.ln1, out) if mab.ln else out


def reference_code_mab(mab, Q: Tensor, K: Tensor) -> Tensor:
    """The MAB forward of the reference code (juho-lee/set_transformer, ``modules.py``),
    restated with torch ops on ``mab``'s parameters (its attributes share that code's names):
    heads split by ``torch.cat(x.split(dim_split, 2), 0)``, softmax of ``Q_ K_^T /
    sqrt(dim_V)``, residual on the projected queries, optional ``ln0``/``ln1``. A MAB with
    ``variant="reference"`` must agree with it, so weights port both ways."""
    dtype = Q.dtype
    Q = F.linear(Q, mab.fc_q.weight.to(dtype), mab.fc_q.bias.to(dtype))
    K, V = (
        F.linear(K, layer.weight.to(dtype), layer.bias.to(dtype)) for layer in (mab.fc_k, mab.fc_v)
    )
    dim_split = mab.dim_V // mab.num_heads
    Q_, K_, V_ = (torch.cat(t.split(dim_split, 2), 0) for t in (Q, K, V))
    A = torch.softmax(Q_.bmm(K_.transpose(1, 2)) / math.sqrt(mab.dim_V), 2)
    O = torch.cat((Q_ + A.bmm(V_)).split(Q.size(0), 0), 2)
    if mab.ln:
        O = F.layer_norm(
            O,
            mab.ln0.normalized_shape,
            mab.ln0.weight.to(dtype),
            mab.ln0.bias.to(dtype),
            mab.ln0.eps,
        )
    O = O + F.relu(F.linear(O, mab.fc_o.weight.to(dtype), mab.fc_o.bias.to(dtype)))
    if mab.ln:
        O = F.layer_norm(
            O,
            mab.ln1.normalized_shape,
            mab.ln1.weight.to(dtype),
            mab.ln1.bias.to(dtype),
            mab.ln1.eps,
        )
    return O


def isab_reference(isab, X: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """ISAB(X) = MAB1(X, H), H = MAB0(I, X): the inducing points attend to the (present)
    elements, the elements to the inducing points."""
    inducing = isab.I.to(X.dtype).expand(X.shape[0], -1, -1)
    H = mab_reference(isab.mab0, inducing, X, key_padding_mask)
    return mab_reference(isab.mab1, X, H)


def pma_reference(pma, X: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """PMA(X) = MAB(S, X) with the learned seeds S."""
    seeds = pma.S.to(X.dtype).expand(X.shape[0], -1, -1)
    return mab_reference(pma.mab, seeds, X, key_padding_mask)


def set_transformer_reference(model, X: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """:class:`fastdl.models.SetTransformer` from the block references: two ISABs, PMA, two
    SABs, a Linear layer. ``mask``: (bags, N) True where an element is present."""
    kpm = None if mask is None else ~mask
    if mask is not None:
        X = X.masked_fill(~mask.unsqueeze(-1), 0)
    h = isab_reference(model.enc[0], X, kpm)
    h = isab_reference(model.enc[1], h, kpm)
    h = pma_reference(model.dec[0], h, kpm)
    h = mab_reference(model.dec[1].mab, h, h)
    h = mab_reference(model.dec[2].mab, h, h)
    lin = model.dec[3]
    return F.linear(h, lin.weight.to(X.dtype), lin.bias.to(X.dtype))
