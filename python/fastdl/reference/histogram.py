"""The differentiable histograms as a pure-PyTorch composition that materialises the
(bags, N, F, B) tensor of kernel values, as HistNetQ's layers do."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

#: d/dy of 1.01**y, the surrogate slope of the hard kernel (HistNetQ's 1.01**(b - |d|)).
HARD_SURROGATE_BASE = 1.01


def histogram_reference(
    x: Tensor,
    centers: Tensor,
    widths: Tensor,
    kernel: str = "soft",
    mask: Optional[Tensor] = None,
    normalize: bool = True,
    sharpness: float = 1000.0,
) -> Tensor:
    """Reference for :func:`fastdl.functional.histogram` (same arguments and result)."""
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    d = x.unsqueeze(-1) - centers  # (bags, N, F, B); centers (F, B) or (B,) broadcast
    if kernel == "sigmoid":
        v = torch.sigmoid(sharpness * (d + widths / 2)) - torch.sigmoid(
            sharpness * (d - widths / 2)
        )
    elif kernel == "soft":
        v = torch.relu(1 - widths * d.abs())
    elif kernel == "rbf":
        v = torch.exp(-((widths * d.abs()) ** 2))
    elif kernel == "hard":
        # Forward: the indicator [|d| < b]; backward: the slope of HistNetQ's 1.01**(b - |d|)
        # on the same support (a straight-through surrogate).
        surrogate = torch.where(
            d.abs() < widths, HARD_SURROGATE_BASE ** (widths - d.abs()), torch.zeros_like(d)
        )
        indicator = (d.abs() < widths).to(x.dtype)
        v = indicator + (surrogate - surrogate.detach())
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    if mask is not None:
        # Absent elements contribute nothing, even where a centre or width is NaN (a product
        # with the mask would give NaN * 0 = NaN): they are never read.
        v = torch.where(mask[:, :, None, None], v, torch.zeros((), dtype=v.dtype, device=v.device))
        count = mask.sum(dim=1).to(v.dtype)  # (bags,)
    else:
        count = torch.full((x.shape[0],), float(x.shape[1]), dtype=v.dtype, device=x.device)
    out = v.sum(dim=1)  # (bags, F, B)
    if normalize:
        out = out / count.clamp(min=1)[:, None, None]
    return out[0] if unbatched else out
