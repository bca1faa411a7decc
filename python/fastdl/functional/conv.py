"""Convolutions: conv1d and conv2d, with torch.nn.functional's signatures.

conv1d runs the 2-d op on an ``(N, C, 1, L)`` view. ``padding='same'`` with an even total
padding runs the op with symmetric padding; an odd total (an even kernel with odd dilation)
puts the extra zero on the right/bottom, as torch, by zero-padding the input first.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as torch_F
from torch import Tensor

from .._args import int_tuple, size_any
from torch.library import register_fake

from .._fake import pair, empty_in_layout


def _resolve_padding(
    input: Tensor,
    weight: Tensor,
    padding: Union[str, size_any],
    stride: list[int],
    dilation: list[int],
    n: int,
    fn: str,
) -> tuple[Tensor, list[int]]:
    """The (possibly zero-padded) input and the symmetric padding the op runs with."""
    if not isinstance(padding, str):
        return input, int_tuple(padding, n, "padding", fn)
    if padding == "valid":
        return input, [0] * n
    if padding != "same":
        raise RuntimeError(f"Invalid padding string: '{padding}'")
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    kernel = weight.shape[2:]
    left, extra = [], []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        left.append(total // 2)
        extra.append(total - 2 * (total // 2))
    if any(extra):
        # F.pad's list runs from the last dim: (w_left, w_right, h_top, h_bottom).
        pad = []
        for e in reversed(extra):
            pad += [0, e]
        input = torch_F.pad(input, pad)
    return input, left


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: size_any = 1,
    padding: Union[str, size_any] = 0,
    dilation: size_any = 1,
    groups: int = 1,
) -> Tensor:
    r"""2-d convolution (cross-correlation) over an ``(N, C_in, H, W)`` or ``(C_in, H, W)``
    input, as :func:`torch.nn.functional.conv2d`.

    CPU: float32/float64 (im2col + GEMM, a direct kernel for depthwise); CUDA: also
    float16/bfloat16. The output keeps the input's memory format. Differentiable in
    ``input``, ``weight`` and ``bias`` (double backward is not supported).

    Args:
        input: tensor of shape ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``.
        bias: optional ``(C_out,)``.
        stride: step of the kernel (an int or ``(sH, sW)``).
        padding: implicit zero padding on both sides (an int or ``(pH, pW)``), or ``'valid'``
            (none) or ``'same'`` (output as large as the input; stride 1 only).
        dilation: spacing between kernel elements.
        groups: split the channels into this many independent convolutions
            (``groups = C_in`` is depthwise).
    """
    stride_ = int_tuple(stride, 2, "stride", "conv2d")
    dilation_ = int_tuple(dilation, 2, "dilation", "conv2d")
    if isinstance(padding, str) and weight.dim() != 4:
        raise RuntimeError(
            f"fastdl.conv2d: weight must be a 4-d (out_channels, in_channels / groups, kH, kW) "
            f"tensor, got shape {list(weight.shape)}"
        )
    input, padding_ = _resolve_padding(input, weight, padding, stride_, dilation_, 2, "conv2d")
    return torch.ops.fastdl.conv2d_forward(
        input, weight, bias, stride_, padding_, dilation_, groups
    )


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: size_any = 1,
    padding: Union[str, size_any] = 0,
    dilation: size_any = 1,
    groups: int = 1,
) -> Tensor:
    r"""1-d convolution over an ``(N, C_in, L)`` or ``(C_in, L)`` input, as
    :func:`torch.nn.functional.conv1d` (arguments as :func:`conv2d`, one int each; weight
    ``(C_out, C_in / groups, k)``). Runs the 2-d op on an ``(N, C_in, 1, L)`` view."""
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"fastdl.conv1d: expected a 2-d (unbatched) or 3-d (batched) input, but got input "
            f"of size: {list(input.shape)}"
        )
    if weight.dim() != 3:
        raise RuntimeError(
            f"fastdl.conv1d: weight must be a 3-d (out_channels, in_channels / groups, k) "
            f"tensor, got shape {list(weight.shape)}"
        )
    stride_ = [1] + int_tuple(stride, 1, "stride", "conv1d")
    dilation_ = [1] + int_tuple(dilation, 1, "dilation", "conv1d")
    padding_ = (
        padding if isinstance(padding, str) else [0] + int_tuple(padding, 1, "padding", "conv1d")
    )
    return conv2d(
        input.unsqueeze(-2), weight.unsqueeze(-2), bias, stride_, padding_, dilation_, groups
    ).squeeze(-2)


# ---- fake kernels: shapes and dtypes for torch.compile, torch.export, FakeTensor ----


def _conv_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@register_fake("fastdl::conv2d_forward")
def _conv2d_forward(input, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    torch._check(
        input.dim() in (3, 4),
        lambda: f"fastdl.conv2d: input must be 3-d or 4-d, got {list(input.shape)}",
    )
    torch._check(
        weight.dim() == 4, lambda: f"fastdl.conv2d: weight must be 4-d, got {list(weight.shape)}"
    )
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    dh, dw = pair(dilation)
    oh = _conv_size(input.shape[-2], weight.shape[2], sh, ph, dh)
    ow = _conv_size(input.shape[-1], weight.shape[3], sw, pw, dw)
    shape = list(input.shape[:-3]) + [weight.shape[0], oh, ow]
    return empty_in_layout(input, shape)


@register_fake("fastdl::conv2d_backward")
def _conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    grad_input = empty_in_layout(input, input.shape) if output_mask[0] else None
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias
