"""Bag-level losses: how far a batch of estimated prevalences is from the true ones.

HistNetQ (Pérez-Mon et al.) trains on whole bags of examples labelled only by their class
prevalences, with the quantification error measures themselves as the loss: the absolute
error (AE, L1), the squared error (MSE) or the relative absolute error (RAE) smoothed as in
LeQua and QuaPy, ``eps = 1 / (2 * bag_size)``. Every loss takes ``(bags, n_classes)``
tensors and returns the mean over bags and classes (a scalar), so it is also QuaPy's
``mae``/``mse``/``mrae`` of the batch.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor

__all__ = ["BAG_LOSSES", "bag_loss", "mae_loss", "mrae_loss", "mse_loss", "smooth"]


def _check_pair(p_hat: Tensor, p: Tensor) -> None:
    if p_hat.shape != p.shape or p_hat.dim() != 2:
        raise ValueError(
            f"p_hat and p must both be (bags, n_classes), got shapes "
            f"{tuple(p_hat.shape)} and {tuple(p.shape)}"
        )


def smooth(p: Tensor, eps: float) -> Tensor:
    """LeQua's additive smoothing ``(p + eps) / (1 + eps * n_classes)`` of prevalences
    ``(..., n_classes)``; keeps them on the simplex and away from 0."""
    return (p + eps) / (1.0 + eps * p.shape[-1])


def mae_loss(p_hat: Tensor, p: Tensor, eps: Optional[float] = None) -> Tensor:
    """Mean absolute error (QuaPy's ``mae``); ``eps`` is ignored."""
    _check_pair(p_hat, p)
    return (p_hat - p).abs().mean()


def mse_loss(p_hat: Tensor, p: Tensor, eps: Optional[float] = None) -> Tensor:
    """Mean squared error (QuaPy's ``mse``); ``eps`` is ignored."""
    _check_pair(p_hat, p)
    return (p_hat - p).square().mean()


def mrae_loss(p_hat: Tensor, p: Tensor, eps: Optional[float] = None) -> Tensor:
    """Mean relative absolute error (QuaPy's ``mrae``) of prevalences smoothed by ``eps``,
    which must be positive: LeQua and QuaPy use ``1 / (2 * bag_size)``."""
    _check_pair(p_hat, p)
    if eps is None or not eps > 0:
        raise ValueError(f"mrae_loss needs eps > 0 (1 / (2 * bag_size)), got eps={eps!r}")
    ps, qs = smooth(p, eps), smooth(p_hat, eps)
    return ((qs - ps).abs() / ps).mean()


#: The losses by the name a quantifier's ``loss`` argument takes.
BAG_LOSSES: dict[str, Callable[..., Tensor]] = {
    "mae": mae_loss,
    "mse": mse_loss,
    "mrae": mrae_loss,
}


def bag_loss(name: str) -> Callable[..., Tensor]:
    """The loss called ``name`` (``"mae"``, ``"mse"`` or ``"mrae"``)."""
    if name not in BAG_LOSSES:
        raise ValueError(f"loss must be one of {tuple(BAG_LOSSES)}, got {name!r}")
    return BAG_LOSSES[name]
