"""MaxPool1d/2d and AvgPool1d/2d backed by fastdl's kernels.

Each subclasses its torch.nn twin, so constructor arguments, attributes and ``extra_repr``
are torch's own, and ``isinstance(m, torch.nn.MaxPool2d)`` still holds; only ``forward``
runs fastdl's op.
"""

from __future__ import annotations

from torch import Tensor, nn

from .. import functional
from ._base import FastdlModule


class MaxPool1d(FastdlModule, nn.MaxPool1d):
    """Drop-in :class:`torch.nn.MaxPool1d` running :func:`fastdl.functional.max_pool1d`."""

    torch_type = nn.MaxPool1d

    def forward(self, input: Tensor):
        return functional.max_pool1d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class MaxPool2d(FastdlModule, nn.MaxPool2d):
    """Drop-in :class:`torch.nn.MaxPool2d` running :func:`fastdl.functional.max_pool2d`."""

    torch_type = nn.MaxPool2d

    def forward(self, input: Tensor):
        return functional.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class AvgPool1d(FastdlModule, nn.AvgPool1d):
    """Drop-in :class:`torch.nn.AvgPool1d` running :func:`fastdl.functional.avg_pool1d`."""

    torch_type = nn.AvgPool1d

    def forward(self, input: Tensor) -> Tensor:
        return functional.avg_pool1d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
        )


class AvgPool2d(FastdlModule, nn.AvgPool2d):
    """Drop-in :class:`torch.nn.AvgPool2d` running :func:`fastdl.functional.avg_pool2d`."""

    torch_type = nn.AvgPool2d

    def forward(self, input: Tensor) -> Tensor:
        return functional.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )
