"""Normalization ops: layer_norm and batch_norm, with torch.nn.functional's signatures."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.library import register_fake

from .._fake import stats_dtype


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


# ---- fake kernels: shapes and dtypes for torch.compile, torch.export, FakeTensor ----


@register_fake("fastdl::layer_norm_forward")
def _layer_norm_forward(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    nd = len(normalized_shape)
    torch._check(
        tuple(input.shape[input.dim() - nd :]) == tuple(normalized_shape),
        lambda: (
            f"fastdl.layer_norm: normalized_shape {list(normalized_shape)} must match the "
            f"trailing dimensions of input, got input of shape {list(input.shape)}"
        ),
    )
    stats_shape = list(input.shape[: input.dim() - nd]) + [1] * nd
    out = torch.empty_like(input, memory_format=torch.contiguous_format)
    dtype = stats_dtype(input)
    return out, input.new_empty(stats_shape, dtype=dtype), input.new_empty(stats_shape, dtype=dtype)


def _bias_grad_dtype(input: torch.Tensor, weight) -> torch.dtype:
    """A norm's bias gradient: the weight's dtype, or the accumulation dtype without a weight
    (csrc/fastdl/norm/norm_params.h)."""
    return weight.dtype if weight is not None else stats_dtype(input)


@register_fake("fastdl::layer_norm_backward")
def _layer_norm_backward(grad_output, input, normalized_shape, mean, rstd, weight, output_mask):
    param = weight if weight is not None else input
    grad_input = (
        torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0] else None
    )
    grad_weight = (
        param.new_empty(normalized_shape) if output_mask[1] and weight is not None else None
    )
    grad_bias = (
        input.new_empty(normalized_shape, dtype=_bias_grad_dtype(input, weight))
        if output_mask[2]
        else None
    )
    return grad_input, grad_weight, grad_bias


def _batch_norm_memory_format(x: torch.Tensor) -> torch.memory_format:
    if (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    ):
        return torch.channels_last
    if (
        x.dim() == 5
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        and not x.is_contiguous()
    ):
        return torch.channels_last_3d
    return torch.contiguous_format


def _batch_norm_empty_1d_channels(*per_channel):
    """C of a 1-d input with no elements, read as (0, C) (as batch_norm.cpp's channels_of)."""
    return next((t.shape[0] for t in per_channel if t is not None and t.dim() == 1), 0)


@register_fake("fastdl::batch_norm_forward")
def _batch_norm_forward(input, weight, bias, running_mean, running_var, training, momentum, eps):
    torch._check(
        input.dim() >= 2 or (input.dim() == 1 and input.numel() == 0),
        lambda: (
            f"fastdl.batch_norm: input must have shape (N, C) or (N, C, *), got {list(input.shape)}"
        ),
    )
    channels = (
        input.shape[1]
        if input.dim() >= 2
        else _batch_norm_empty_1d_channels(weight, bias, running_mean, running_var)
    )
    out = torch.empty_like(input, memory_format=_batch_norm_memory_format(input))
    dtype = stats_dtype(input)
    return out, input.new_empty((channels,), dtype=dtype), input.new_empty((channels,), dtype=dtype)


@register_fake("fastdl::batch_norm_backward")
def _batch_norm_backward(grad_output, input, weight, save_mean, save_invstd, training, output_mask):
    channels = input.shape[1] if input.dim() >= 2 else save_mean.shape[0]
    param = weight if weight is not None else input
    grad_input = (
        torch.empty_like(input, memory_format=_batch_norm_memory_format(input))
        if output_mask[0]
        else None
    )
    grad_weight = param.new_empty((channels,)) if output_mask[1] and weight is not None else None
    grad_bias = (
        input.new_empty((channels,), dtype=_bias_grad_dtype(input, weight))
        if output_mask[2]
        else None
    )
    return grad_input, grad_weight, grad_bias
