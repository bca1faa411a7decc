"""LayerNorm and BatchNorm1d/2d/3d backed by fastdl's kernels.

Each subclasses its torch.nn twin, so constructor arguments, parameter and buffer names,
initialisation, ``extra_repr`` and ``state_dict`` are torch's own, and
``isinstance(m, torch.nn.LayerNorm)`` still holds; only ``forward`` runs fastdl's op.
"""

from __future__ import annotations

from torch import Tensor, nn

from .. import functional
from ._base import FastdlModule


class LayerNorm(FastdlModule, nn.LayerNorm):
    """Drop-in :class:`torch.nn.LayerNorm` running :func:`fastdl.functional.layer_norm`."""

    torch_type = nn.LayerNorm

    def forward(self, input: Tensor) -> Tensor:
        return functional.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class _BatchNorm(FastdlModule):
    """The forward of torch's _BatchNorm (running-average factor, num_batches_tracked,
    train/eval choice of statistics) on fastdl.functional.batch_norm."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            # momentum=None: cumulative moving average over the batches seen.
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return functional.batch_norm(
            input,
            self.running_mean if keep_running else None,
            self.running_var if keep_running else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """Drop-in :class:`torch.nn.BatchNorm1d` ((N, C) or (N, C, L) inputs)."""

    torch_type = nn.BatchNorm1d


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """Drop-in :class:`torch.nn.BatchNorm2d` ((N, C, H, W) inputs, channels-last kept)."""

    torch_type = nn.BatchNorm2d


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Drop-in :class:`torch.nn.BatchNorm3d` ((N, C, D, H, W) inputs, channels-last kept)."""

    torch_type = nn.BatchNorm3d
