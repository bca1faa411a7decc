"""Permutation-invariant set models: DeepSets, HistNetQ and the Set Transformer.

Both take a batch of bags ``x`` of shape ``(bags, N, in_features)`` (or one bag ``(N,
in_features)``) and an optional ``mask`` ``(bags, N)`` (True where an element is present) for
bags of different sizes padded to a common N. Their output does not depend on the order of the
elements of a bag, nor on what the padded (masked-out) elements hold.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import nn as fnn
from .._args import positive_int

__all__ = ["DeepSets", "HistNetQ", "SetTransformer", "masked_pool", "mlp"]

POOLINGS = ("sum", "mean", "max", "median")
HISTOGRAMS = {
    "sigmoid": fnn.SigmoidHistogram,
    "soft": fnn.SoftHistogram,
    "rbf": fnn.RBFHistogram,
    "hard": fnn.HardHistogram,
}

Sizes = Union[int, Sequence[int]]


def _sizes(value: Sizes, name: str) -> list[int]:
    sizes = [value] if isinstance(value, int) else list(value)
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"{name} must be a positive int or a sequence of them, got {value!r}")
    return sizes


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    dropout: float = 0.0,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """``Linear -> activation -> Dropout`` for each size in ``hidden``, then a last ``Linear``
    to ``out_features`` (no activation after it)."""
    layers: list[nn.Module] = []
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), activation()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = h
    layers.append(nn.Linear(prev, out_features))
    return nn.Sequential(*layers)


def _check_bags(
    x: Tensor, mask: Optional[Tensor], in_features: int
) -> tuple[Tensor, Optional[Tensor], bool]:
    """Validate ``x``/``mask``; return them batched (a 2-d ``x`` becomes one bag) and whether
    ``x`` was unbatched. Masked-out elements of ``x`` are zeroed so that whatever padding holds
    (even NaN) cannot leak into the per-element network."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(
            f"x must be (bags, N, in_features) or (N, in_features), got shape {tuple(x.shape)}"
        )
    if x.shape[-1] != in_features:
        raise ValueError(
            f"x must have in_features={in_features} in its last dimension, "
            f"got shape {tuple(x.shape)}"
        )
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"mask must have shape (bags, N) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
            )
        x = x.masked_fill(~mask.unsqueeze(-1), 0)
    return x, mask, unbatched


def masked_pool(h: Tensor, mask: Optional[Tensor], pooling: str) -> Tensor:
    """Pool ``h`` (bags, N, D) over its elements (dim 1) to (bags, D), counting only those
    where ``mask`` (bags, N) is True.

    ``sum`` and ``mean`` of the present elements (mean divides by each bag's own size);
    ``max``; ``median`` is the lower median of the present elements (torch.median's
    convention: for an even count, the smaller of the two middle values). A bag with no
    present element pools to zeros.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if mask is None:
        if pooling == "sum":
            return h.sum(dim=1)
        if pooling == "mean":
            return h.mean(dim=1)
        if pooling == "max":
            return h.amax(dim=1)
        return h.median(dim=1).values
    m = mask.unsqueeze(-1)  # (bags, N, 1)
    present = m.any(dim=1)  # (bags, 1): bags with at least one element
    if pooling in ("sum", "mean"):
        total = h.masked_fill(~m, 0).sum(dim=1)
        if pooling == "sum":
            return total
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
        return total / count
    if pooling == "max":
        out = h.masked_fill(~m, float("-inf")).amax(dim=1)
    else:
        out = h.masked_fill(~m, float("nan")).nanmedian(dim=1).values
    return out.masked_fill(~present, 0)


class DeepSets(nn.Module):
    r"""DeepSets (Zaheer et al., "Deep Sets", NeurIPS 2017): ``ρ(pool_i φ(x_i))``.

    φ is applied to every element of a bag, the results are pooled over the bag by a
    permutation-invariant ``pooling`` (sum, mean, max or median of the present elements),
    and ρ maps the pooled vector to the output.

    Args:
        in_features: size of each element.
        out_features: size of the output of ρ.
        hidden: size of the hidden layers (an int: two φ layers and one ρ hidden layer of that
            size; a sequence: φ's layer sizes, the last being the latent size, and ρ one hidden
            layer of the latent size).
        pooling: ``"sum"``, ``"mean"`` (default), ``"max"`` or ``"median"``.
        phi: a module mapping ``(..., in_features)`` to ``(..., latent)`` used instead of the
            default MLP; ``latent`` must then be the last size of ``hidden``.
        rho: a module mapping ``(bags, latent)`` to ``(bags, out_features)`` used instead of
            the default MLP.
        dropout: dropout after each hidden layer of the default MLPs.

    Shape:
        ``x``: ``(bags, N, in_features)`` or ``(N, in_features)``; ``mask``: ``(bags, N)``
        (``(N,)``) bool, True where present. Output ``(bags, out_features)``
        (``(out_features,)``). ρ's output is returned as is (no softmax): for prevalences,
        apply ``softmax(-1)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sizes = 64,
        pooling: str = "mean",
        phi: Optional[nn.Module] = None,
        rho: Optional[nn.Module] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        sizes = _sizes(hidden, "hidden")
        if len(sizes) == 1:
            sizes = sizes * 2
        latent = sizes[-1]
        self.phi = phi if phi is not None else mlp(in_features, sizes[:-1], latent, dropout)
        self.rho = rho if rho is not None else mlp(latent, [latent], out_features, dropout)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x, mask, unbatched = _check_bags(x, mask, self.in_features)
        out = self.rho(masked_pool(self.phi(x), mask, self.pooling))
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"pooling={self.pooling!r}"
        )


class HistNetQ(nn.Module):
    r"""HistNetQ (Pérez-Mon, Moreo, del Coz and González, "Quantification using
    permutation-invariant networks based on histograms", 2024): estimates the class
    prevalences of a bag of examples.

    A DeepSets whose pooling is one differentiable histogram per feature::

        z_i = sigmoid(feature_extractor(x_i))            # (bags, N, n_features) in [0, 1]
        h   = histogram(z)                               # (bags, n_features * n_bins)
        p   = softmax(MLP(h))                            # (bags, n_classes), sums to 1

    The histogram is a :mod:`fastdl.nn` layer (:class:`~fastdl.nn.SoftHistogram` etc.) run by
    fastdl's fused kernel, with HistNetQ's initialisation (bins tiling [0, 1]).

    Args:
        in_features: size of each example.
        n_classes: number of classes (size of the output).
        n_bins: bins per feature histogram (HistNetQ: 8).
        histogram: ``"soft"`` (default), ``"sigmoid"``, ``"rbf"`` or ``"hard"``.
        n_features: number of features the extractor outputs (one histogram each).
        feature_extractor: a module mapping ``(..., in_features)`` to ``(..., n_features)``
            used instead of the default MLP (``in_features -> extractor_hidden ->
            n_features`` with LeakyReLU). It sees padded elements as zeros.
        extractor_hidden: hidden sizes of the default extractor (int or sequence; ``()`` for a
            single Linear layer).
        hidden: hidden sizes of the MLP after the histograms (int or sequence; ``()`` for a
            single Linear layer). LeakyReLU and dropout after each, as HistNetQ.
        dropout: dropout in both MLPs.
        learnable: whether bin centres and widths are learned (default: the layer's default,
            False for sigmoid, True for the others).
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        n_bins: int = 8,
        histogram: str = "soft",
        n_features: int = 32,
        feature_extractor: Optional[nn.Module] = None,
        extractor_hidden: Sizes = 64,
        hidden: Sizes = 128,
        dropout: float = 0.0,
        learnable: Optional[bool] = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.n_classes = positive_int(n_classes, "n_classes")
        self.n_features = positive_int(n_features, "n_features")
        if histogram not in HISTOGRAMS:
            raise ValueError(f"histogram must be one of {tuple(HISTOGRAMS)}, got {histogram!r}")
        self.histogram_kind = histogram
        ex_sizes = (
            [] if extractor_hidden in ((), []) else _sizes(extractor_hidden, "extractor_hidden")
        )
        q_sizes = [] if hidden in ((), []) else _sizes(hidden, "hidden")
        self.feature_extractor = (
            feature_extractor
            if feature_extractor is not None
            else mlp(in_features, ex_sizes, n_features, dropout, nn.LeakyReLU)
        )
        kwargs = {} if learnable is None else {"learnable": learnable}
        self.histogram = HISTOGRAMS[histogram](n_features, n_bins, flatten=True, **kwargs)
        self.quantifier = mlp(n_features * n_bins, q_sizes, n_classes, dropout, nn.LeakyReLU)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Class prevalences ``(bags, n_classes)`` (``(n_classes,)`` for a 2-d ``x``), each
        row non-negative and summing to 1."""
        x, mask, unbatched = _check_bags(x, mask, self.in_features)
        z = torch.sigmoid(self.feature_extractor(x))
        h = self.histogram(z, mask)
        out = torch.softmax(self.quantifier(h), dim=-1)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, n_classes={self.n_classes}, "
            f"histogram={self.histogram_kind!r}"
        )


class SetTransformer(nn.Module):
    r"""Set Transformer (Lee et al., ICML 2019): an encoder of two ISABs and a decoder of PMA,
    two SABs and a Linear layer, as the reference code (juho-lee/set_transformer)::

        enc = ISAB(dim_input, dim_hidden) -> ISAB(dim_hidden, dim_hidden)
        dec = PMA(dim_hidden, num_outputs seeds) -> SAB -> SAB -> Linear(dim_hidden, dim_output)

    The attention runs on fastdl's fused induced attention (O(n num_inds) per ISAB, never the
    (n, num_inds) score matrix in memory); layer norms are :class:`fastdl.nn.LayerNorm`.
    Attribute and parameter names are the reference code's (``enc.0.mab0.fc_q.weight``, ...),
    so with ``variant="reference"`` its state dicts load as they are.

    Args:
        dim_input: features of each element.
        num_outputs: seeds of the PMA (outputs per set).
        dim_output: features of each output.
        num_inds: inducing points of each ISAB.
        dim_hidden: width of every block; must divide into ``num_heads``.
        num_heads: attention heads.
        ln: layer norms in every MAB.
        variant: ``"paper"`` (default) or ``"reference"``; see :mod:`fastdl.nn.sets`.

    Shape:
        ``x``: ``(bags, N, dim_input)`` or ``(N, dim_input)``; ``mask``: ``(bags, N)`` bool,
        **True where an element is present** (as DeepSets and HistNetQ). Padded elements are
        zeroed and hidden from every attention, so the output depends neither on them nor on
        the order of the elements. A bag with no element gets the output of an empty set
        (the attention over it is 0). Output ``(bags, num_outputs, dim_output)``.
    """

    def __init__(
        self,
        dim_input: int,
        num_outputs: int,
        dim_output: int,
        num_inds: int = 32,
        dim_hidden: int = 128,
        num_heads: int = 4,
        ln: bool = False,
        variant: str = "paper",
    ) -> None:
        super().__init__()
        self.dim_input = positive_int(dim_input, "dim_input")
        self.num_outputs = positive_int(num_outputs, "num_outputs")
        self.dim_output = positive_int(dim_output, "dim_output")
        self.enc = nn.Sequential(
            fnn.ISAB(dim_input, dim_hidden, num_heads, num_inds, ln=ln, variant=variant),
            fnn.ISAB(dim_hidden, dim_hidden, num_heads, num_inds, ln=ln, variant=variant),
        )
        self.dec = nn.Sequential(
            fnn.PMA(dim_hidden, num_heads, num_outputs, ln=ln, variant=variant),
            fnn.SAB(dim_hidden, dim_hidden, num_heads, ln=ln, variant=variant),
            fnn.SAB(dim_hidden, dim_hidden, num_heads, ln=ln, variant=variant),
            nn.Linear(dim_hidden, dim_output),
        )

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x, mask, unbatched = _check_bags(x, mask, self.dim_input)
        padding = None if mask is None else ~mask
        h = self.enc[1](self.enc[0](x, padding), padding)
        h = self.dec[0](h, padding)
        out = self.dec[3](self.dec[2](self.dec[1](h)))
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"dim_input={self.dim_input}, num_outputs={self.num_outputs}, "
            f"dim_output={self.dim_output}"
        )
