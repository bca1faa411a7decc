"""The Set Transformer's blocks (Lee et al., "Set Transformer: A Framework for
Attention-based Permutation-Invariant Neural Networks", ICML 2019) on fastdl's fused induced
attention (:func:`fastdl.functional.induced_attention`) and :class:`fastdl.nn.LayerNorm`.

- :class:`MAB` (multihead attention block), :class:`SAB` (set attention block, O(n^2)),
  :class:`ISAB` (induced set attention block: m learned inducing points, O(n m)),
  :class:`PMA` (pooling by multihead attention with k learned seeds).

Constructors, attribute and parameter names follow the reference code
(github.com/juho-lee/set_transformer, ``modules.py``), so its users feel at home and its
weights load with ``variant="reference"``.

Two variants (``variant=``):

- ``"paper"`` (default), the paper's equations::

      H   = LN(X + Multihead(X, Y, Y)),  Multihead = concat_h(softmax(Q_h K_h^T / sqrt(d_h)) V_h) W^O
      MAB = LN(H + rFF(H)),              rFF(H) = relu(H Wo + bo)

  with ``d_h = dim_V / num_heads``; when ``dim_Q != dim_V`` the residual is on the projected
  queries ``X Wq`` (the only sum that is defined). W^O is the extra Linear ``fc_mh``.
- ``"reference"``, the reference code: scale ``1 / sqrt(dim_V)``, no W^O, residual on the
  projected queries ``H = LN(X Wq + concat_h(...))``; the same rFF.

Layer norms (``ln0`` after the attention, ``ln1`` after the rFF) only with ``ln=True``, the
reference code's default being ``False`` in both variants.

Masks: ``key_padding_mask`` ``(batch, n_keys)`` bool, **True where the key (set element) is
padding**, as :class:`torch.nn.MultiheadAttention`. A set whose elements are all padding
attends to nothing: its attention output is 0 (documented, never NaN).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

import fastdl.functional
from .._args import positive_int
from .norm import LayerNorm

__all__ = ["ISAB", "MAB", "PMA", "SAB", "VARIANTS"]

VARIANTS = ("paper", "reference")


def _batched(x: Tensor, features: int, name: str) -> tuple[Tensor, bool]:
    """``x`` as (batch, n, features) and whether it came unbatched (n, features)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if x.dim() not in (2, 3) or x.shape[-1] != features:
        raise ValueError(
            f"{name} must have shape (batch, n, {features}) or (n, {features}), "
            f"got {tuple(x.shape)}"
        )
    return (x.unsqueeze(0), True) if x.dim() == 2 else (x, False)


def _check_mask(mask: Optional[Tensor], keys: Tensor, unbatched: bool) -> Optional[Tensor]:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(
            "key_padding_mask must be a bool tensor (True = padded element), got "
            f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}"
        )
    if unbatched:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(keys.shape[:2]):
        raise ValueError(
            f"key_padding_mask must have shape (batch, n_keys) = {tuple(keys.shape[:2])}, "
            f"got {tuple(mask.shape) if not unbatched else tuple(mask.shape[1:])}"
        )
    return mask


class MAB(nn.Module):
    r"""Multihead attention block ``MAB(X, Y)``: the rows of ``X`` attend to the rows of ``Y``.

    Args:
        dim_Q: features of ``X`` (the queries).
        dim_K: features of ``Y`` (keys and values).
        dim_V: features of the attention and of the output; must divide into ``num_heads``.
        num_heads: attention heads.
        ln: apply the layer norms ``ln0`` and ``ln1``.
        variant: ``"paper"`` or ``"reference"`` (see the module docstring).

    Shape:
        ``X`` ``(batch, n, dim_Q)``, ``Y`` ``(batch, m, dim_K)`` (or both without batch),
        ``key_padding_mask`` ``(batch, m)``; output ``(batch, n, dim_V)``.
    """

    def __init__(
        self,
        dim_Q: int,
        dim_K: int,
        dim_V: int,
        num_heads: int,
        ln: bool = False,
        variant: str = "paper",
    ) -> None:
        super().__init__()
        self.dim_Q = positive_int(dim_Q, "dim_Q")
        self.dim_K = positive_int(dim_K, "dim_K")
        self.dim_V = positive_int(dim_V, "dim_V")
        self.num_heads = positive_int(num_heads, "num_heads")
        if dim_V % num_heads:
            raise ValueError(f"dim_V ({dim_V}) must be divisible by num_heads ({num_heads})")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.ln = bool(ln)
        self.fc_q = nn.Linear(dim_Q, dim_V)
        self.fc_k = nn.Linear(dim_K, dim_V)
        self.fc_v = nn.Linear(dim_K, dim_V)
        if variant == "paper":
            self.fc_mh = nn.Linear(dim_V, dim_V)  # W^O of Multihead
        if self.ln:
            self.ln0 = LayerNorm(dim_V)
            self.ln1 = LayerNorm(dim_V)
        self.fc_o = nn.Linear(dim_V, dim_V)

    @property
    def scale(self) -> float:
        """The attention's score factor: 1/sqrt(dim_V / num_heads) (paper) or 1/sqrt(dim_V)."""
        return 1.0 / math.sqrt(
            self.dim_V // self.num_heads if self.variant == "paper" else self.dim_V
        )

    def _heads(self, x: Tensor) -> Tensor:  # (B, n, dim_V) -> (B, heads, n, dim_V / heads)
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.dim_V // self.num_heads).transpose(1, 2)

    def forward(self, X: Tensor, Y: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        X, unbatched = _batched(X, self.dim_Q, "X")
        Y, unbatched_y = _batched(Y, self.dim_K, "Y")
        if unbatched != unbatched_y or X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"X and Y must have the same batch size, got shapes {tuple(X.shape)} "
                f"and {tuple(Y.shape)}"
            )
        mask = _check_mask(key_padding_mask, Y, unbatched)
        Q, K, V = self.fc_q(X), self.fc_k(Y), self.fc_v(Y)
        O = fastdl.functional.induced_attention(
            self._heads(Q), self._heads(K), self._heads(V), mask, self.scale
        )
        O = O.transpose(1, 2).reshape(Q.shape)
        if self.variant == "paper":
            H = (X if self.dim_Q == self.dim_V else Q) + self.fc_mh(O)
        else:
            H = Q + O
        if self.ln:
            H = self.ln0(H)
        out = H + F.relu(self.fc_o(H))
        if self.ln:
            out = self.ln1(out)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"dim_Q={self.dim_Q}, dim_K={self.dim_K}, dim_V={self.dim_V}, num_heads={self.num_heads}, "
            f"ln={self.ln}, variant={self.variant!r}"
        )


class SAB(nn.Module):
    """Set attention block ``SAB(X) = MAB(X, X)``: every element attends to every element
    (O(n^2)); permutation equivariant. ``key_padding_mask`` ``(batch, n)``: True = padding."""

    def __init__(
        self, dim_in: int, dim_out: int, num_heads: int, ln: bool = False, variant: str = "paper"
    ) -> None:
        super().__init__()
        self.mab = MAB(dim_in, dim_in, dim_out, num_heads, ln=ln, variant=variant)

    def forward(self, X: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        return self.mab(X, X, key_padding_mask)


def _xavier_parameter(rows: int, dim: int) -> nn.Parameter:
    p = nn.Parameter(torch.empty(1, rows, dim))
    nn.init.xavier_uniform_(p)
    return p


class ISAB(nn.Module):
    """Induced set attention block: ``H = MAB0(I, X)``, ``ISAB(X) = MAB1(X, H)`` with
    ``num_inds`` learned inducing points ``I`` (parameter ``(1, num_inds, dim_out)``, Xavier
    uniform as the reference code). O(n m) instead of SAB's O(n^2); permutation equivariant.
    ``key_padding_mask`` ``(batch, n)`` (True = padding) hides padded elements from the
    inducing points; the padded rows' own outputs are computed but meaningless."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        num_heads: int,
        num_inds: int,
        ln: bool = False,
        variant: str = "paper",
    ) -> None:
        super().__init__()
        self.num_inds = positive_int(num_inds, "num_inds")
        self.I = _xavier_parameter(num_inds, dim_out)
        self.mab0 = MAB(dim_out, dim_in, dim_out, num_heads, ln=ln, variant=variant)
        self.mab1 = MAB(dim_in, dim_out, dim_out, num_heads, ln=ln, variant=variant)

    def forward(self, X: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        unbatched = isinstance(X, Tensor) and X.dim() == 2
        if unbatched:
            X = X.unsqueeze(0)
            if isinstance(key_padding_mask, Tensor):
                key_padding_mask = key_padding_mask.unsqueeze(0)
        H = self.mab0(self.I.expand(X.shape[0], -1, -1), X, key_padding_mask)
        out = self.mab1(X, H)
        return out[0] if unbatched else out


class PMA(nn.Module):
    """Pooling by multihead attention: ``PMA(X) = MAB(S, X)`` with ``num_seeds`` learned seeds
    ``S`` (parameter ``(1, num_seeds, dim)``); permutation invariant. Output ``(batch,
    num_seeds, dim)``. ``key_padding_mask`` ``(batch, n)``: True = padding."""

    def __init__(
        self, dim: int, num_heads: int, num_seeds: int, ln: bool = False, variant: str = "paper"
    ) -> None:
        super().__init__()
        self.num_seeds = positive_int(num_seeds, "num_seeds")
        self.S = _xavier_parameter(num_seeds, dim)
        self.mab = MAB(dim, dim, dim, num_heads, ln=ln, variant=variant)

    def forward(self, X: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        unbatched = X.dim() == 2
        batch = 1 if unbatched else X.shape[0]
        seeds = self.S.expand(batch, -1, -1)
        return self.mab(seeds[0] if unbatched else seeds, X, key_padding_mask)
