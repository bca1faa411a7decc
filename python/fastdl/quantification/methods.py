"""HistNetQ, DeepSets and the Set Transformer as QuaPy quantifiers.

Each is a :class:`quapy.method.base.BaseQuantifier` (``fit(X, y)``, ``predict(X)`` /
``quantify(X)``, ``get_params``/``set_params``), so QuaPy's protocols, ``evaluate``,
``evaluation_report`` and ``GridSearchQ`` take it as they take CC or EMQ. The input size and
the number of classes come from the data at ``fit``; every hyperparameter is a keyword
argument. The networks are :mod:`fastdl.models`, on fastdl's kernels.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import nn

from .. import models
from ._base import TRAINING_ARGS_DOC, BagQuantifier, PrevalenceHead, Protocol, _store_params

__all__ = ["DeepSetsQuantifier", "HistNetQuantifier", "SetTransformerQuantifier"]

Sizes = Union[int, Sequence[int]]


class HistNetQuantifier(BagQuantifier):
    """HistNetQ (Pérez-Mon, Moreo, del Coz and González, 2024) as a QuaPy quantifier.

    A feature extractor (an MLP) maps each example to ``n_features`` values, a sigmoid puts
    them in [0, 1], one differentiable histogram of ``n_bins`` per feature pools the bag
    (fastdl's fused histogram kernel) and an MLP with a softmax turns the histograms into
    prevalences (:class:`fastdl.models.HistNetQ`).

    Model:
        n_bins: bins of each feature's histogram (HistNetQ: 8).
        histogram: ``"soft"`` (triangular, default), ``"sigmoid"``, ``"rbf"`` or ``"hard"``.
        n_features: features the extractor outputs (one histogram each).
        extractor_hidden: hidden sizes of the feature extractor (int, sequence, or ``()``).
        hidden: hidden sizes of the MLP after the histograms.
        dropout: dropout in both MLPs.
    """

    def __init__(
        self,
        n_bins: int = 8,
        histogram: str = "soft",
        n_features: int = 32,
        extractor_hidden: Sizes = 64,
        hidden: Sizes = 128,
        dropout: float = 0.0,
        *,
        protocol: Protocol = "upp",
        protocol_params: Optional[dict] = None,
        bag_size: int = 100,
        batch_size: int = 16,
        steps: int = 1000,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        loss: str = "mae",
        standardize: bool = True,
        device: Optional[str] = "cpu",
        seed: Optional[int] = 0,
        progress: bool = True,
    ) -> None:
        _store_params(self, locals())

    def _build_model(self, in_features: int, n_classes: int) -> nn.Module:
        return models.HistNetQ(
            in_features,
            n_classes,
            n_bins=self.n_bins,
            histogram=self.histogram,
            n_features=self.n_features,
            extractor_hidden=self.extractor_hidden,
            hidden=self.hidden,
            dropout=self.dropout,
        )


class DeepSetsQuantifier(BagQuantifier):
    """DeepSets (Zaheer et al., 2017) as a QuaPy quantifier: ``softmax(ρ(pool_i φ(x_i)))``,
    the HistNetQ paper's pooling baseline (:class:`fastdl.models.DeepSets`).

    Model:
        hidden: φ's layer sizes (the last is the latent size; ρ has one hidden layer of it).
        pooling: ``"mean"`` (default), ``"sum"``, ``"max"`` or ``"median"``.
        dropout: dropout after every hidden layer.
    """

    def __init__(
        self,
        hidden: Sizes = (64, 32),
        pooling: str = "mean",
        dropout: float = 0.0,
        *,
        protocol: Protocol = "upp",
        protocol_params: Optional[dict] = None,
        bag_size: int = 100,
        batch_size: int = 16,
        steps: int = 1000,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        loss: str = "mae",
        standardize: bool = True,
        device: Optional[str] = "cpu",
        seed: Optional[int] = 0,
        progress: bool = True,
    ) -> None:
        _store_params(self, locals())

    def _build_model(self, in_features: int, n_classes: int) -> nn.Module:
        return PrevalenceHead(
            models.DeepSets(
                in_features,
                n_classes,
                hidden=self.hidden,
                pooling=self.pooling,
                dropout=self.dropout,
            )
        )


class SetTransformerQuantifier(BagQuantifier):
    """The Set Transformer (Lee et al., 2019) as a QuaPy quantifier: two ISABs with
    ``num_inds`` inducing points, a PMA with one seed, two SABs and a Linear layer, then a
    softmax over classes (the HistNetQ paper's attention baseline;
    :class:`fastdl.models.SetTransformer` on fastdl's fused induced attention). Attention
    trains best at a lower learning rate than the other two (default ``lr=1e-3``).

    Model:
        dim_hidden: width of every attention block (a multiple of ``num_heads``).
        num_heads: attention heads.
        num_inds: inducing points of each ISAB.
        ln: layer norms in every block.
    """

    def __init__(
        self,
        dim_hidden: int = 64,
        num_heads: int = 4,
        num_inds: int = 16,
        ln: bool = True,
        *,
        protocol: Protocol = "upp",
        protocol_params: Optional[dict] = None,
        bag_size: int = 100,
        batch_size: int = 16,
        steps: int = 1000,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        loss: str = "mae",
        standardize: bool = True,
        device: Optional[str] = "cpu",
        seed: Optional[int] = 0,
        progress: bool = True,
    ) -> None:
        _store_params(self, locals())

    def _build_model(self, in_features: int, n_classes: int) -> nn.Module:
        return PrevalenceHead(
            models.SetTransformer(
                in_features,
                1,
                n_classes,
                num_inds=self.num_inds,
                dim_hidden=self.dim_hidden,
                num_heads=self.num_heads,
                ln=self.ln,
            )
        )


for _cls in (HistNetQuantifier, DeepSetsQuantifier, SetTransformerQuantifier):
    _cls.__doc__ += TRAINING_ARGS_DOC
