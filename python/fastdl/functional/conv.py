"""Convolutions: conv1d and conv2d, with torch.nn.functional's signatures.

conv1d runs the 2-d op on an ``(N, C, 1, L)`` view. ``padding='same'`` with an even total
padding runs the op with symmetric padding; an odd total (an even kernel with odd dilation)
puts the extra zero on the right/bottom, as torch, by zero-padding the input first.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as torch_F
from torch import Tensor

_size_any = Union[int, Sequence[int]]


def _tuple(value: _size_any, n: int, name: str, fn: str) -> list[int]:
    """``value`` as a list of ``n`` ints (an int or a 1-tuple is repeated), as torch."""
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) == 1:
        return [int(value[0])] * n
    if len(value) != n:
        raise ValueError(f"fastdl.{fn}: {name} must be a single int or a tuple of {n} ints, got {value}")
    return [int(v) for v in value]


def _resolve_padding(input: Tensor, weight: Tensor, padding: Union[str, _size_any], stride: list[int],
                     dilation: list[int], n: int, fn: str) -> tuple[Tensor, list[int]]:
    """The (possibly zero-padded) input and the symmetric padding the op runs with."""
    if not isinstance(padding, str):
        return input, _tuple(padding, n, "padding", fn)
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
    stride: _size_any = 1,
    padding: Union[str, _size_any] = 0,
    dilation: _size_any = 1,
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
    stride_ = _tuple(stride, 2, "stride", "conv2d")
    dilation_ = _tuple(dilation, 2, "dilation", "conv2d")
    if isinstance(padding, str) and weight.dim() != 4:
        raise RuntimeError(f"fastdl.conv2d: weight must be a 4-d (out_channels, in_channels / groups, kH, kW) "
                           f"tensor, got shape {list(weight.shape)}")
    input, padding_ = _resolve_padding(input, weight, padding, stride_, dilation_, 2, "conv2d")
    return torch.ops.fastdl.conv2d_forward(input, weight, bias, stride_, padding_, dilation_, groups)


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: _size_any = 1,
    padding: Union[str, _size_any] = 0,
    dilation: _size_any = 1,
    groups: int = 1,
) -> Tensor:
    r"""1-d convolution over an ``(N, C_in, L)`` or ``(C_in, L)`` input, as
    :func:`torch.nn.functional.conv1d` (arguments as :func:`conv2d`, one int each; weight
    ``(C_out, C_in / groups, k)``). Runs the 2-d op on an ``(N, C_in, 1, L)`` view."""
    if input.dim() not in (2, 3):
        raise RuntimeError(f"fastdl.conv1d: expected a 2-d (unbatched) or 3-d (batched) input, but got input "
                           f"of size: {list(input.shape)}")
    if weight.dim() != 3:
        raise RuntimeError(f"fastdl.conv1d: weight must be a 3-d (out_channels, in_channels / groups, k) "
                           f"tensor, got shape {list(weight.shape)}")
    stride_ = [1] + _tuple(stride, 1, "stride", "conv1d")
    dilation_ = [1] + _tuple(dilation, 1, "dilation", "conv1d")
    padding_ = padding if isinstance(padding, str) else [0] + _tuple(padding, 1, "padding", "conv1d")
    return conv2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, stride_, padding_, dilation_, groups).squeeze(-2)
