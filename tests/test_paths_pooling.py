"""Every code path of the pooling CPU kernels (pooling/cpu/pooling.cpp), with shapes on both
sides of each threshold, in float32 and float64, with 1 thread and with several.

Channels-last pooling runs over channels: four vectors at a time while ``c + 4 L <= C``
(``L`` = vector width), then one vector, then a scalar tail, in the max forward
(``vector_block`` with 4 and 1 vectors) and in the average forward and backward
(``weighted_channel_sum``). NCHW runs one plane per task (no vector path). Rows of output
(or, in the average backward, of input) are split over threads past ``grain``.

Not reached: the max forward's scalar fallback for planes of at least 2^24 pixels (where the
argmax no longer fits a float's mantissa); it is the same code as the scalar channel tail.
"""

import pytest
import torch
import torch.nn.functional as F

import fastdl.functional as FF
from helpers import compare_with_torch
from thresholds import DTYPES, around, threads, vec_width  # noqa: F401  (threads: a fixture)


def _channels(L):
    """Channel counts around L and 4 L, and 5 L + 3 (four vectors, one vector, a tail)."""
    return sorted(set(around(L) + around(4 * L) + [5 * L + 3]))


def _distinct(shape, dtype):
    """Distinct values in random order: no ties, so the argmax (and its gradient) is unique."""
    n = torch.Size(shape).numel()
    return ((torch.randperm(n, dtype=torch.float64) - n / 2) / n * 4).reshape(shape).to(dtype)


def _layouts(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# (kernel, stride, padding, ceil_mode): overlapping windows with padding, and windows with
# gaps between them (input positions no window covers get a zero gradient).
WINDOWS = [(3, 2, 1, True), (2, 3, 0, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", WINDOWS, ids=["overlap", "gaps"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_max_pool_channels(dtype, window, channels_last, threads):
    k, s, p, ceil = window
    for C in _channels(vec_width(dtype)):
        x = _layouts(_distinct((2, C, 5, 6), dtype), channels_last)
        compare_with_torch(
            lambda x: FF.max_pool2d(x, k, s, p, 1, ceil, return_indices=True),
            lambda x: F.max_pool2d(x, k, s, p, 1, ceil, return_indices=True),
            [x.requires_grad_()],
            dtype,
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", WINDOWS, ids=["overlap", "gaps"])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["with_pad", "without_pad"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_avg_pool_channels(dtype, window, count_include_pad, channels_last, threads):
    k, s, p, ceil = window
    for C in _channels(vec_width(dtype)):
        x = _layouts(torch.randn(2, C, 5, 6, dtype=dtype), channels_last)
        compare_with_torch(
            lambda x: FF.avg_pool2d(x, k, s, p, ceil, count_include_pad),
            lambda x: F.avg_pool2d(x, k, s, p, ceil, count_include_pad),
            [x.requires_grad_()],
            dtype,
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_rows_split_over_threads(dtype, threads):
    # Enough output rows (batch * OH) and input rows (batch * H) per call to pass the grain of
    # a task, so with several threads the rows (and the gathers of the backward) are split.
    C = 4 * vec_width(dtype) + 1
    x = torch.randn(6, C, 9, 9, dtype=dtype).contiguous(memory_format=torch.channels_last)
    compare_with_torch(
        lambda x: FF.avg_pool2d(x, 3, 2, 1, False, True, 5),
        lambda x: F.avg_pool2d(x, 3, 2, 1, False, True, 5),
        [x.requires_grad_()],
        dtype,
    )
    x = _distinct((6, C, 9, 9), dtype).contiguous(memory_format=torch.channels_last)
    compare_with_torch(
        lambda x: FF.max_pool2d(x, 3, 2, 1, 2, False, return_indices=True),
        lambda x: F.max_pool2d(x, 3, 2, 1, 2, False, return_indices=True),
        [x.requires_grad_()],
        dtype,
    )
