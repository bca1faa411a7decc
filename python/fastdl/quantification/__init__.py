"""Quantification with fastdl's set networks, as QuaPy quantifiers.

Quantification estimates the class prevalences of a *bag* of unlabelled examples. This
package plugs fastdl's HistNetQ, DeepSets and Set Transformer into QuaPy (the field's
toolkit: protocols, error measures, baselines, model selection), so that they are evaluated
and compared as any QuaPy method is::

    import quapy as qp
    from fastdl.quantification import HistNetQuantifier

    model = HistNetQuantifier(steps=2000, bag_size=100).fit(X_train, y_train)
    test = qp.data.LabelledCollection(X_test, y_test)
    qp.evaluation.evaluate(model, qp.protocol.UPP(test, sample_size=100, repeats=500), "mae")

- :class:`HistNetQuantifier`, :class:`DeepSetsQuantifier`, :class:`SetTransformerQuantifier`:
  trained on bags that a QuaPy protocol (UPP, APP, NPP) draws from the labelled training
  data, with HistNetQ's bag-level losses (:mod:`fastdl.quantification.losses`); or on bags
  with known prevalences only (``fit_bags``).
- :func:`load_lequa`: LeQua 2022/2024 vector tasks from a local folder.

Needs QuaPy (``pip install 'fastdl[quantification]'``); ``import fastdl`` alone does not.
"""

from ._base import PROTOCOLS, BagQuantifier
from .lequa import LeQuaData, SamplesFromFolder, load_lequa
from .losses import BAG_LOSSES, bag_loss, mae_loss, mrae_loss, mse_loss
from .methods import DeepSetsQuantifier, HistNetQuantifier, SetTransformerQuantifier

__all__ = [
    "BAG_LOSSES",
    "BagQuantifier",
    "DeepSetsQuantifier",
    "HistNetQuantifier",
    "LeQuaData",
    "PROTOCOLS",
    "SamplesFromFolder",
    "SetTransformerQuantifier",
    "bag_loss",
    "load_lequa",
    "mae_loss",
    "mrae_loss",
    "mse_loss",
]
