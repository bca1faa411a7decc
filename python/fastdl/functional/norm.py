"""Normalization ops: layer_norm and batch_norm, with torch.nn.functional's signatures."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor


def layer_norm(
    input: Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Layer normalization over the trailing ``normalized_shape`` dims of ``input``.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias``, with the biased variance, as
    :func:`torch.nn.functional.layer_norm`. CPU: float32/float64; CUDA: also float16/bfloat16
    (statistics in float32). Differentiable in ``input``, ``weight`` and ``bias``.

    Args:
        input: tensor of shape ``(*, *normalized_shape)``.
        normalized_shape: the trailing shape to normalise over (an int means ``(int,)``).
        weight, bias: optional tensors of shape ``normalized_shape``.
        eps: added to the variance for numerical stability.
    """
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return torch.ops.fastdl.layer_norm_forward(input, list(normalized_shape), weight, bias, eps)[0]


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Batch normalization of an ``(N, C, *)`` input, as :func:`torch.nn.functional.batch_norm`.

    In training, each channel is normalised with the batch's mean and biased variance, and
    ``running_mean``/``running_var`` (when given) are updated in place:
    ``r = (1 - momentum) * r + momentum * batch_stat`` (the unbiased variance for
    ``running_var``). In evaluation the running statistics are used. Channels-last inputs
    keep their layout. CPU: float32/float64; CUDA: also float16/bfloat16 (statistics in
    float32; weight, bias and running stats may be float32 for half inputs).

    Args:
        input: tensor of shape ``(N, C)`` or ``(N, C, *)``.
        running_mean, running_var: optional ``(C,)`` tensors; required when not training.
        weight, bias: optional ``(C,)`` affine parameters.
        training: use batch statistics (and update running ones) instead of running ones.
        momentum: the running-average factor.
        eps: added to the variance for numerical stability.
    """
    return torch.ops.fastdl.batch_norm_forward(
        input, weight, bias, running_mean, running_var, training, momentum, eps
    )[0]
