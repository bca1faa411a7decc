"""Pooling ops: max_pool1d/2d and avg_pool1d/2d, with torch.nn.functional's signatures.

The 1-d ops run the 2-d kernels on an ``(N, C, 1, L)`` view of the input.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._args import int_tuple, size_any
from torch.library import register_fake

from .._fake import pair, empty_in_layout


class _As1d:
    """Errors of the 2-d op that a 1-d pooling runs (on the input unsqueezed at dim -2) say
    which function the user called."""

    def __init__(self, fn: str):
        self.fn = fn

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        two_d = "fastdl." + self.fn.replace("1d", "2d")
        if kind is RuntimeError and str(exc).startswith(two_d):
            raise RuntimeError(
                f"fastdl.{self.fn} (as {two_d[7:]} of the input unsqueezed at dim -2)"
                + str(exc)[len(two_d) :]
            ) from None
        return False


def _stride(stride: Optional[size_any], kernel: list[int], n: int, fn: str) -> list[int]:
    if stride is None or (not isinstance(stride, int) and len(stride) == 0):
        return list(kernel)
    return int_tuple(stride, n, "stride", fn)


def max_pool2d(
    input: Tensor,
    kernel_size: size_any,
    stride: Optional[size_any] = None,
    padding: size_any = 0,
    dilation: size_any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    r"""2-d max pooling over an ``(N, C, H, W)`` or ``(C, H, W)`` input, as
    :func:`torch.nn.functional.max_pool2d`.

    Padding is ``-inf`` (never the maximum); NaN propagates (a window holding a NaN gives NaN).
    The output keeps the input's memory format. float32, float64, float16 and bfloat16 (half
    types compared in float32). Differentiable in ``input`` (the gradient goes to each window's argmax).

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
    kernel = int_tuple(kernel_size, 2, "kernel_size", "max_pool2d")
    output, indices = torch.ops.fastdl.max_pool2d_forward(
        input,
        kernel,
        _stride(stride, kernel, 2, "max_pool2d"),
        int_tuple(padding, 2, "padding", "max_pool2d"),
        int_tuple(dilation, 2, "dilation", "max_pool2d"),
        ceil_mode,
    )
    return (output, indices) if return_indices else output


def max_pool1d(
    input: Tensor,
    kernel_size: size_any,
    stride: Optional[size_any] = None,
    padding: size_any = 0,
    dilation: size_any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    r"""1-d max pooling over an ``(N, C, L)`` or ``(C, L)`` input, as
    :func:`torch.nn.functional.max_pool1d` (arguments as :func:`max_pool2d`, one int each;
    indices index the length dim)."""
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"fastdl.max_pool1d: input must be a 2-d (C, L) or 3-d (N, C, L) tensor, "
            f"got shape {list(input.shape)}"
        )
    kernel = int_tuple(kernel_size, 1, "kernel_size", "max_pool1d")
    with _As1d("max_pool1d"):
        output, indices = torch.ops.fastdl.max_pool2d_forward(
            input.unsqueeze(-2),
            [1] + kernel,
            [1] + _stride(stride, kernel, 1, "max_pool1d"),
            [0] + int_tuple(padding, 1, "padding", "max_pool1d"),
            [1] + int_tuple(dilation, 1, "dilation", "max_pool1d"),
            ceil_mode,
        )
    output = output.squeeze(-2)
    return (output, indices.squeeze(-2)) if return_indices else output


def avg_pool2d(
    input: Tensor,
    kernel_size: size_any,
    stride: Optional[size_any] = None,
    padding: size_any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> Tensor:
    r"""2-d average pooling over an ``(N, C, H, W)`` or ``(C, H, W)`` input, as
    :func:`torch.nn.functional.avg_pool2d`.

    Each output is the window's sum divided by ``divisor_override`` if given, else by the
    window's size counting the zero padding (``count_include_pad=True``) or not. The output
    keeps the input's memory format. float32, float64, float16 and bfloat16 (half types
    accumulated in float32). Differentiable in ``input``.

    Args:
        input: tensor of shape ``(N, C, H, W)`` or ``(C, H, W)``.
        kernel_size: window size (an int or ``(kH, kW)``).
        stride: window step (default ``kernel_size``).
        padding: implicit zero padding on both sides, at most half the kernel size.
        ceil_mode: use ceil instead of floor for the output size.
        count_include_pad: count the zero padding in the divisor.
        divisor_override: divide by this instead of the window size.
    """
    kernel = int_tuple(kernel_size, 2, "kernel_size", "avg_pool2d")
    return torch.ops.fastdl.avg_pool2d_forward(
        input,
        kernel,
        _stride(stride, kernel, 2, "avg_pool2d"),
        int_tuple(padding, 2, "padding", "avg_pool2d"),
        ceil_mode,
        count_include_pad,
        divisor_override,
    )


def avg_pool1d(
    input: Tensor,
    kernel_size: size_any,
    stride: Optional[size_any] = None,
    padding: size_any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Tensor:
    r"""1-d average pooling over an ``(N, C, L)`` or ``(C, L)`` input, as
    :func:`torch.nn.functional.avg_pool1d` (arguments as :func:`avg_pool2d`, one int each)."""
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"fastdl.avg_pool1d: input must be a 2-d (C, L) or 3-d (N, C, L) tensor, "
            f"got shape {list(input.shape)}"
        )
    kernel = int_tuple(kernel_size, 1, "kernel_size", "avg_pool1d")
    with _As1d("avg_pool1d"):
        return torch.ops.fastdl.avg_pool2d_forward(
            input.unsqueeze(-2),
            [1] + kernel,
            [1] + _stride(stride, kernel, 1, "avg_pool1d"),
            [0] + int_tuple(padding, 1, "padding", "avg_pool1d"),
            ceil_mode,
            count_include_pad,
            None,
        ).squeeze(-2)


# ---- fake kernels: shapes and dtypes for torch.compile, torch.export, FakeTensor ----


def _pool_output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling_output_shape (as detail::pool_output_size in pooling.cpp)."""
    out = (
        size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    ) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out = out - 1
    return out


def _pool2d_output(input, kernel_size, stride, padding, dilation, ceil_mode):
    """An empty (output-shaped) tensor of the pooling kernels, in the input's memory format."""
    kh, kw = pair(kernel_size)
    sh, sw = pair(stride) if len(stride) else (kh, kw)
    ph, pw = pair(padding)
    dh, dw = pair(dilation)
    torch._check(
        input.dim() in (3, 4),
        lambda: f"fastdl pooling: input must be 3-d or 4-d, got {list(input.shape)}",
    )
    oh = _pool_output_size(input.shape[-2], kh, sh, ph, dh, ceil_mode)
    ow = _pool_output_size(input.shape[-1], kw, sw, pw, dw, ceil_mode)
    shape = list(input.shape[:-2]) + [oh, ow]
    return empty_in_layout(input, shape)


@register_fake("fastdl::max_pool2d_forward")
def _max_pool2d_forward(
    input, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False
):
    out = _pool2d_output(input, kernel_size, stride, padding, dilation, ceil_mode)
    return out, empty_in_layout(input, out.shape, torch.int64)


@register_fake("fastdl::max_pool2d_backward")
def _max_pool2d_backward(
    grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode
):
    return empty_in_layout(input, input.shape)


@register_fake("fastdl::avg_pool2d_forward")
def _avg_pool2d_forward(
    input,
    kernel_size,
    stride=(),
    padding=(0,),
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    return _pool2d_output(input, kernel_size, stride, padding, (1,), ceil_mode)


@register_fake("fastdl::avg_pool2d_backward")
def _avg_pool2d_backward(
    grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    return empty_in_layout(input, input.shape)
