"""Differentiable histogram layers (HistNetQ's pooling layers) on fastdl's fused kernel.

Each layer turns a bag of examples ``x`` (bags, N, F) into one histogram of B bins per
feature, ``(bags, F * B)`` (or ``(bags, F, B)`` with ``flatten=False``), with
:func:`fastdl.functional.histogram`: one pass over ``x``, never materialising the
(bags, N, F, B) tensor of kernel values that the pure-PyTorch layers build.

The four kernels and their initialisation follow HistNetQ (Pérez-Mon, Moreo, del Coz and
González, "Quantification using permutation-invariant networks based on histograms", 2024),
which expects features in [0, 1] (it applies a sigmoid first): B bins with centres
``(k + 0.5) / B``, k = 0..B-1, one (F, B) table of centres and one of widths per layer, so
every feature's bins can move on their own when they are learnable. What ``widths`` means depends on the kernel (see each class).

With ``learnable=False`` the centres and widths are buffers rather than parameters: they are
still in ``state_dict`` and follow ``.to()``, but receive no gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional
from .._args import positive_int

__all__ = ["HardHistogram", "RBFHistogram", "SigmoidHistogram", "SoftHistogram"]


class _Histogram(nn.Module):
    """Shared body of the histogram layers: centres/widths as (F, B) parameters or buffers,
    argument checks, and the forward on :func:`fastdl.functional.histogram`."""

    kernel: str = ""
    #: Whether centres and widths are learnable when ``learnable`` is not given.
    default_learnable: bool = True

    def __init__(
        self,
        n_features: int,
        n_bins: int,
        learnable: Optional[bool] = None,
        flatten: bool = True,
        normalize: bool = True,
        sharpness: float = 1000.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.n_features = positive_int(n_features, "n_features")
        self.n_bins = positive_int(n_bins, "n_bins")
        self.learnable = self.default_learnable if learnable is None else bool(learnable)
        self.flatten = bool(flatten)
        self.normalize = bool(normalize)
        self.sharpness = float(sharpness)
        factory = {"device": device, "dtype": dtype}
        centers = torch.empty(self.n_features, self.n_bins, **factory)
        widths = torch.empty(self.n_features, self.n_bins, **factory)
        if self.learnable:
            self.centers = nn.Parameter(centers)
            self.widths = nn.Parameter(widths)
        else:
            self.register_buffer("centers", centers)
            self.register_buffer("widths", widths)
        self.reset_parameters()

    def initial_widths(self) -> float:
        """The value every entry of ``widths`` starts at (HistNetQ's)."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Centres ``(k + 0.5) / B`` for every feature; widths :meth:`initial_widths`."""
        with torch.no_grad():
            k = torch.arange(self.n_bins, device=self.centers.device, dtype=torch.float64)
            self.centers.copy_(((k + 0.5) / self.n_bins).expand(self.n_features, -1))
            self.widths.fill_(self.initial_widths())

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Histogram of each feature of each bag.

        Args:
            x: ``(bags, N, n_features)``, or ``(N, n_features)`` for one bag.
            mask: optional ``(bags, N)`` bool (``(N,)`` for one bag), True where an element
                is present; absent elements do not count and each bag's histogram is divided
                by its own number of present elements (``normalize=True``).

        Returns:
            ``(bags, n_features * n_bins)`` with ``flatten`` (feature-major: the bins of
            feature 0, then those of feature 1, ...), else ``(bags, n_features, n_bins)``;
            without the leading ``bags`` dimension for a 2-d ``x``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() not in (2, 3):
            raise ValueError(
                f"x must be (bags, N, n_features) or (N, n_features), "
                f"got a {x.dim()}-d tensor of shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.n_features:
            raise ValueError(
                f"x must have n_features={self.n_features} in its last dimension, "
                f"got shape {tuple(x.shape)}"
            )
        out = functional.histogram(
            x, self.centers, self.widths, self.kernel, mask, self.normalize, self.sharpness
        )
        return out.flatten(-2) if self.flatten else out

    def extra_repr(self) -> str:
        s = (
            f"n_features={self.n_features}, n_bins={self.n_bins}, learnable={self.learnable}, "
            f"flatten={self.flatten}"
        )
        if not self.normalize:
            s += ", normalize=False"
        return s


class SigmoidHistogram(_Histogram):
    r"""Sigmoid histogram: a bin counts ``sigmoid(s (d + δ/2)) - sigmoid(s (d - δ/2))``
    of each element, ``d = x - c`` (the difference of two steep sigmoids, a smooth box).

    The kernel HistNetQ calls "sigmoid" (the differentiable ``torch.histc`` approximation it
    cites from the PyTorch forums); HistNetQ keeps its bins fixed. ``widths`` holds the
    bin width δ, initialised to ``1 / n_bins`` (the bins tile [0, 1]); ``sharpness`` is s
    (HistNetQ: 1000). Centres and widths are buffers unless ``learnable=True``.

    Args:
        n_features: F, the number of features (the last dimension of the input).
        n_bins: B, the number of bins of each feature's histogram.
        learnable: make centres and widths parameters (default False, as HistNetQ).
        flatten: return ``(bags, F * B)`` (default) rather than ``(bags, F, B)``.
        normalize: divide by each bag's number of elements (default), or return counts.
        sharpness: s of the sigmoids (default 1000).
    """

    kernel = "sigmoid"
    default_learnable = False

    def __init__(
        self,
        n_features: int,
        n_bins: int,
        learnable: bool = False,
        flatten: bool = True,
        normalize: bool = True,
        sharpness: float = 1000.0,
        device=None,
        dtype=None,
    ) -> None:
        if not sharpness > 0:
            raise ValueError(f"sharpness must be positive, got {sharpness!r}")
        super().__init__(
            n_features, n_bins, learnable, flatten, normalize, sharpness, device, dtype
        )

    def initial_widths(self) -> float:
        return 1.0 / self.n_bins

    def extra_repr(self) -> str:
        return super().extra_repr() + f", sharpness={self.sharpness:g}"


class SoftHistogram(_Histogram):
    r"""Triangular ("soft") histogram: a bin counts ``relu(1 - w |x - c|)`` of each element.

    The learnable histogram of Wang et al., "Learnable histogram: statistical context features
    for deep neural networks" (ECCV 2016), as HistNetQ uses it. ``widths`` holds the slope w
    of the triangle (1 / its half-width), initialised to ``2 * n_bins`` so that each triangle
    spans exactly one bin of [0, 1]. Centres and widths are learnable unless
    ``learnable=False``.

    Args:
        n_features: F, the number of features (the last dimension of the input).
        n_bins: B, the number of bins of each feature's histogram.
        learnable: make centres and widths parameters (default True).
        flatten: return ``(bags, F * B)`` (default) rather than ``(bags, F, B)``.
        normalize: divide by each bag's number of elements (default), or return sums.
    """

    kernel = "soft"

    def __init__(
        self,
        n_features: int,
        n_bins: int,
        learnable: bool = True,
        flatten: bool = True,
        normalize: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(n_features, n_bins, learnable, flatten, normalize, 1000.0, device, dtype)

    def initial_widths(self) -> float:
        return 2.0 * self.n_bins


class RBFHistogram(_Histogram):
    r"""Gaussian (RBF) histogram: a bin counts ``exp(-(w |x - c|)^2)`` of each element.

    The histogram layer of Peeples, Xu and Zare, "Histogram layers for texture analysis"
    (IEEE TAI 2021), HistNetQ's "softrbf". ``widths`` holds w, the inverse of the Gaussian's
    scale (``exp(-d^2 / (2 σ^2))`` with ``σ = 1 / (√2 w)``), initialised to ``2 * n_bins``.
    Centres and widths are learnable unless ``learnable=False``.

    Args:
        n_features: F, the number of features (the last dimension of the input).
        n_bins: B, the number of bins of each feature's histogram.
        learnable: make centres and widths parameters (default True).
        flatten: return ``(bags, F * B)`` (default) rather than ``(bags, F, B)``.
        normalize: divide by each bag's number of elements (default), or return sums.
    """

    kernel = "rbf"

    def __init__(
        self,
        n_features: int,
        n_bins: int,
        learnable: bool = True,
        flatten: bool = True,
        normalize: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(n_features, n_bins, learnable, flatten, normalize, 1000.0, device, dtype)

    def initial_widths(self) -> float:
        return 2.0 * self.n_bins


class HardHistogram(_Histogram):
    r"""Hard-binning histogram: a bin counts the elements with ``|x - c| < b`` (a true count).

    After Yusuf, Igwegbe and Azeez, "Differentiable histogram with hard-binning"
    (arXiv:2012.06311), as HistNetQ implements it. ``widths`` holds the half-width b of each
    bin, initialised to ``1 / (2 n_bins) + 0.001`` (the bins tile [0, 1] with a small
    overlap). The indicator has no useful derivative; the gradient is HistNetQ's surrogate,
    that of ``1.01^(b - |x - c|)`` inside the bin (zero outside), so that ``x``, the centres
    and the half-widths still learn (see :func:`fastdl.functional.histogram`). Centres and
    widths are learnable unless ``learnable=False``.

    Args:
        n_features: F, the number of features (the last dimension of the input).
        n_bins: B, the number of bins of each feature's histogram.
        learnable: make centres and widths parameters (default True).
        flatten: return ``(bags, F * B)`` (default) rather than ``(bags, F, B)``.
        normalize: divide by each bag's number of elements (default), or return counts.
    """

    kernel = "hard"

    def __init__(
        self,
        n_features: int,
        n_bins: int,
        learnable: bool = True,
        flatten: bool = True,
        normalize: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(n_features, n_bins, learnable, flatten, normalize, 1000.0, device, dtype)

    def initial_widths(self) -> float:
        return 1.0 / (2 * self.n_bins) + 0.001
