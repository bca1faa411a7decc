"""Conv1d and Conv2d backed by fastdl's kernels.

Each subclasses its torch.nn twin, so constructor arguments, parameters, init and
``extra_repr`` are torch's own; ``forward`` runs fastdl's op with torch's ``_conv_forward``
rules (a non-``'zeros'`` padding_mode pads the input with ``F.pad`` first, then convolves with
no padding).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as torch_F
from torch import Tensor, nn

from .. import functional
from ._base import FastdlModule


class Conv1d(FastdlModule, nn.Conv1d):
    """Drop-in :class:`torch.nn.Conv1d` running :func:`fastdl.functional.conv1d`."""

    torch_type = nn.Conv1d

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            return functional.conv1d(
                torch_F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode),
                weight,
                bias,
                self.stride,
                0,
                self.dilation,
                self.groups,
            )
        return functional.conv1d(
            input, weight, bias, self.stride, self.padding, self.dilation, self.groups
        )

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.weight, self.bias)


class Conv2d(FastdlModule, nn.Conv2d):
    """Drop-in :class:`torch.nn.Conv2d` running :func:`fastdl.functional.conv2d`."""

    torch_type = nn.Conv2d

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            return functional.conv2d(
                torch_F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode),
                weight,
                bias,
                self.stride,
                0,
                self.dilation,
                self.groups,
            )
        return functional.conv2d(
            input, weight, bias, self.stride, self.padding, self.dilation, self.groups
        )

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.weight, self.bias)
