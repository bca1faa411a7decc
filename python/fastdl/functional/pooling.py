"""Pooling ops: max_pool1d/2d and avg_pool1d/2d, with torch.nn.functional's signatures.

The 1-d ops run the 2-d kernels on an ``(N, C, 1, L)`` view of the input.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

_size_any = Union[int, Sequence[int]]


def _tuple(value: Optional[_size_any], n: int, name: str, fn: str) -> list[int]:
    """``value`` as a list of ``n`` ints (an int or a 1-tuple is repeated), as torch."""
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ValueError(f"fastdl.{fn}: {name} must be a single int or a tuple of {n} ints, got {value}")
    return [int(v) for v in value]


def _stride(stride: Optional[_size_any], kernel: list[int], n: int, fn: str) -> list[int]:
    if stride is None or (not isinstance(stride, int) and len(stride) == 0):
        return list(kernel)
    return _tuple(stride, n, "stride", fn)


def max_pool2d(
    input: Tensor,
    kernel_size: _size_any,
    stride: Optional[_size_any] = None,
    padding: _size_any = 0,
    dilation: _size_any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    r"""2-d max pooling over an ``(N, C, H, W)`` or ``(C, H, W)`` input, as
    :func:`torch.nn.functional.max_pool2d`.

    Padding is ``-inf`` (never the maximum); NaN propagates (a window holding a NaN gives NaN).
    The output keeps the input's memory format. CPU: float32/float64; CUDA: also
    float16/bfloat16. Differentiable in ``input`` (the gradient goes to each window's argmax).

    Args:
        input: tensor of shape ``(N, C, H, W)`` or ``(C, H, W)``.
        kernel_size: window size (an int or ``(kH, kW)``).
        stride: window step (default ``kernel_size``).
        padding: implicit ``-inf`` padding on both sides, at most half the kernel size.
        dilation: spacing between window elements.
        ceil_mode: use ceil instead of floor for the output size (the last window must
            start inside the input or the left padding).
        return_indices: also return the flat index of each maximum in its ``H * W`` plane
            (int64), as torch.
    """
    kernel = _tuple(kernel_size, 2, "kernel_size", "max_pool2d")
    output, indices = torch.ops.fastdl.max_pool2d_forward(
        input, kernel, _stride(stride, kernel, 2, "max_pool2d"), _tuple(padding, 2, "padding", "max_pool2d"),
        _tuple(dilation, 2, "dilation", "max_pool2d"), ceil_mode)
    return (output, indices) if return_indices else output


def max_pool1d(
    input: Tensor,
    kernel_size: _size_any,
    stride: Optional[_size_any] = None,
    padding: _size_any = 0,
    dilation: _size_any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    r"""1-d max pooling over an ``(N, C, L)`` or ``(C, L)`` input, as
    :func:`torch.nn.functional.max_pool1d` (arguments as :func:`max_pool2d`, one int each;
    indices index the length dim)."""
    if input.dim() not in (2, 3):
        raise RuntimeError(f"fastdl.max_pool1d: input must be a 2-d (C, L) or 3-d (N, C, L) tensor, "
                           f"got shape {list(input.shape)}")
    kernel = _tuple(kernel_size, 1, "kernel_size", "max_pool1d")
    output, indices = torch.ops.fastdl.max_pool2d_forward(
        input.unsqueeze(-2), [1] + kernel, [1] + _stride(stride, kernel, 1, "max_pool1d"),
        [0] + _tuple(padding, 1, "padding", "max_pool1d"), [1] + _tuple(dilation, 1, "dilation", "max_pool1d"),
        ceil_mode)
    output = output.squeeze(-2)
    return (output, indices.squeeze(-2)) if return_indices else output


def avg_pool2d(
    input: Tensor,
    kernel_size: _size_any,
    stride: Optional[_size_any] = None,
    padding: _size_any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> Tensor:
    r"""2-d average pooling over an ``(N, C, H, W)`` or ``(C, H, W)`` input, as
    :func:`torch.nn.functional.avg_pool2d`.

    Each output is the window's sum divided by ``divisor_override`` if given, else by the
    window's size counting the zero padding (``count_include_pad=True``) or not. The output
    keeps the input's memory format. CPU: float32/float64; CUDA: also float16/bfloat16
    (accumulated in float32). Differentiable in ``input``.

    Args:
        input: tensor of shape ``(N, C, H, W)`` or ``(C, H, W)``.
        kernel_size: window size (an int or ``(kH, kW)``).
        stride: window step (default ``kernel_size``).
        padding: implicit zero padding on both sides, at most half the kernel size.
        ceil_mode: use ceil instead of floor for the output size.
        count_include_pad: count the zero padding in the divisor.
        divisor_override: divide by this instead of the window size.
    """
    kernel = _tuple(kernel_size, 2, "kernel_size", "avg_pool2d")
    return torch.ops.fastdl.avg_pool2d_forward(
        input, kernel, _stride(stride, kernel, 2, "avg_pool2d"), _tuple(padding, 2, "padding", "avg_pool2d"),
        ceil_mode, count_include_pad, divisor_override)


def avg_pool1d(
    input: Tensor,
    kernel_size: _size_any,
    stride: Optional[_size_any] = None,
    padding: _size_any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Tensor:
    r"""1-d average pooling over an ``(N, C, L)`` or ``(C, L)`` input, as
    :func:`torch.nn.functional.avg_pool1d` (arguments as :func:`avg_pool2d`, one int each)."""
    if input.dim() not in (2, 3):
        raise RuntimeError(f"fastdl.avg_pool1d: input must be a 2-d (C, L) or 3-d (N, C, L) tensor, "
                           f"got shape {list(input.shape)}")
    kernel = _tuple(kernel_size, 1, "kernel_size", "avg_pool1d")
    return torch.ops.fastdl.avg_pool2d_forward(
        input.unsqueeze(-2), [1] + kernel, [1] + _stride(stride, kernel, 1, "avg_pool1d"),
        [0] + _tuple(padding, 1, "padding", "avg_pool1d"), ceil_mode, count_include_pad, None).squeeze(-2)
