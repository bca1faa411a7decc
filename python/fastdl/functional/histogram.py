"""Differentiable histograms (HistNetQ's pooling layers), fused: one pass over the input,
never materialising the (bags, N, F, B) tensor of kernel values."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import register_fake

KERNELS = ("sigmoid", "soft", "rbf", "hard")


def histogram(
    x: Tensor,
    centers: Tensor,
    widths: Tensor,
    kernel: str = "soft",
    mask: Optional[Tensor] = None,
    normalize: bool = True,
    sharpness: float = 1000.0,
) -> Tensor:
    r"""One soft histogram per feature of each bag: ``out[b, f, k] = mean_i K(x[b, i, f] - c[f, k])``.

    With ``d = x - c`` and ``w`` the ``widths`` entry of the bin, the kernels are

    - ``"sigmoid"``: ``sigmoid(s (d + w/2)) - sigmoid(s (d - w/2))``; ``w`` is the bin width
      and ``s = sharpness`` (HistNetQ uses fixed centres and s = 1000);
    - ``"soft"`` (triangular, Wang et al.): ``relu(1 - w |d|)``; ``w`` is the slope, 1 / half-width;
    - ``"rbf"`` (Gaussian, Peeples et al.): ``exp(-(w |d|)^2)``;
    - ``"hard"`` (Yusuf et al.): the indicator ``[|d| < w]``, ``w`` the half-width. Its gradient
      is HistNetQ's surrogate: that of ``1.01^(w - |d|)`` where ``|d| < w`` (zero elsewhere),
      so centres and widths still learn.

    Gradients flow to ``x``, ``centers`` and ``widths``. float32, float64, float16 and
    bfloat16 (half types accumulated in float32; half ``x`` takes centres and widths of its
    dtype or float32, and their gradients come in their own dtype).

    Args:
        x: ``(bags, N, F)`` (or ``(N, F)``: one bag, result ``(F, B)``).
        centers: ``(F, B)`` per feature and bin, or ``(B,)`` shared by all features.
        widths: same shape rules as ``centers``; every entry must be positive.
        kernel: one of ``"sigmoid"``, ``"soft"``, ``"rbf"``, ``"hard"``.
        mask: optional ``(bags, N)`` bool, True where an element is present (bags of
            different sizes). Absent elements do not count.
        normalize: divide by the number of present elements of each bag (a mean; a bag with
            none gives zeros), or return the sums (``False``).
        sharpness: ``s`` of the sigmoid kernel (ignored by the others).

    Returns:
        ``(bags, F, B)``.
    """
    return torch.ops.fastdl.histogram_forward(
        x, centers, widths, kernel, mask, normalize, sharpness
    )


# ---- fake kernels: shapes and dtypes for torch.compile, torch.export, FakeTensor ----


@register_fake("fastdl::histogram_forward")
def _histogram_forward(
    x, centers, widths, kernel="soft", mask=None, normalize=True, sharpness=1000.0
):
    bins = centers.shape[-1]
    if x.dim() == 2:
        return x.new_empty((x.shape[1], bins))
    return x.new_empty((x.shape[0], x.shape[2], bins))


@register_fake("fastdl::histogram_backward")
def _histogram_backward(
    grad_output, x, centers, widths, kernel, mask, normalize, sharpness, output_mask
):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None,
        torch.empty_like(centers, memory_format=torch.contiguous_format)
        if output_mask[1]
        else None,
        torch.empty_like(widths, memory_format=torch.contiguous_format) if output_mask[2] else None,
    )
