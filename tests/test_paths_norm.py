"""Every code path of the layer_norm and batch_norm CPU kernels (norm/cpu/*.cpp and the row
reductions of common/cpu/vec.h), with shapes on both sides of each threshold, in float32 and
float64, with 1 thread and with several (see thresholds.py).

layer_norm: rows of ``cols`` values, vectorised in ``L``-lane steps (``L`` = vector width),
the statistics in four-vector blocks (``reduce_sum2``: ``4 L``), with a scalar tail; the exact
second pass of ``mean_var`` when the shift (the row's first value) is far from the mean; the
weight/bias gradients in per-thread buffers once the rows are split over threads (more rows
than ``grain(cols) = 16384 / cols``).

batch_norm: ``[outer, C, inner]``; per channel when ``inner >= kPlanarMinInner`` (16), row by
row (``R = C * inner`` values a row, ``L``-lane steps) otherwise, flushing the float sums into
doubles every ``kFlushRows`` (64) rows and splitting rows over threads past
``4096 / R`` rows.
"""

import pytest
import torch
import torch.nn.functional as F

import fastdl.functional as FF
from helpers import assert_close_to_reference, compare_with_torch
from thresholds import DTYPES, around, threads, vec_width  # noqa: F401  (threads: a fixture)


def _cols(L):
    """Row lengths around the vector width and the four-vector block, and a non-multiple."""
    return sorted(set(around(L) + around(4 * L) + [5 * L + 3]))


def _layer_norm_case(dtype, rows, cols, weight, bias, x=None):
    x = torch.randn(rows, cols, dtype=dtype) if x is None else x
    w = torch.randn(cols, dtype=dtype).requires_grad_() if weight else None
    b = torch.randn(cols, dtype=dtype).requires_grad_() if bias else None
    compare_with_torch(
        lambda x, w, b: FF.layer_norm(x, (cols,), w, b),
        lambda x, w, b: F.layer_norm(x, (cols,), w, b),
        [x.requires_grad_(), w, b],
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", ["weight_bias", "weight", "bias", "none"])
def test_layer_norm_row_lengths(dtype, affine, threads):
    # cols below / at / above L and 4 L, and 5 L + 3: the vector loops (the one fused
    # weight-and-bias loop and the one testing each), four-vector blocks and scalar tails.
    for cols in _cols(vec_width(dtype)):
        _layer_norm_case(dtype, 3, cols, "weight" in affine, "bias" in affine)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_rows_split_over_threads(dtype, threads):
    # More rows than one task's grain (16384 / cols): with several threads each thread sums
    # its rows' weight/bias gradients into its own buffer, then the buffers are added.
    cols = 4 * vec_width(dtype) + 1
    _layer_norm_case(dtype, 2 * (16384 // cols) + 3, cols, True, True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_shift_far_from_mean(dtype, threads):
    # The first value of each row (mean_var's shift) is an outlier, so d^2 > 64 var and the
    # variance is recomputed around the mean (the exact second pass).
    cols = 12 * vec_width(dtype) + 5
    x = torch.randn(4, cols, dtype=dtype)
    x[:, 0] += 100
    _layer_norm_case(dtype, 4, cols, True, True, x=x)


def _batch_norm_case(dtype, x, training, affine=True, channels_last=False):
    C = x.shape[1]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.rand(C, dtype=dtype) + 0.5).requires_grad_() if affine else None
    b = torch.randn(C, dtype=dtype).requires_grad_() if affine else None
    stats = [torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5]
    _, _, ours, theirs = compare_with_torch(
        lambda x, w, b, rm, rv: FF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5),
        lambda x, w, b, rm, rv: F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5),
        [x.requires_grad_(), w, b, *stats],
        dtype,
    )
    for name, i in (("running_mean", 3), ("running_var", 4)):  # updated in place in training
        assert_close_to_reference(ours[i], theirs[i], dtype, name=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_planar_and_row_wise(dtype, training, threads):
    # inner = H * W around kPlanarMinInner (16): 15 runs row by row, 16 and 17 per channel;
    # 4 L + 1 per channel with vector steps and a tail.
    L = vec_width(dtype)
    for inner in [15, 16, 17, 4 * L + 1]:
        _batch_norm_case(dtype, torch.randn(3, 5, inner, dtype=dtype), training)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_rows_around_vector_width(dtype, training, threads):
    # Row-wise path (inner = 1: (N, C) inputs and channels-last): rows of R = C values below,
    # at and above L, 4 L and a non-multiple, vector steps plus a scalar tail.
    for C in _cols(vec_width(dtype)):
        _batch_norm_case(dtype, torch.randn(6, C, dtype=dtype), training)
    _batch_norm_case(
        dtype, torch.randn(2, vec_width(dtype) + 3, 3, 2, dtype=dtype), training, channels_last=True
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_flush_and_thread_split(dtype, threads):
    # Row-wise sums flushed into doubles every kFlushRows = 64 rows: 64, 65 and 130 rows in
    # one task; 2000 rows of R = 3 pass the 4096 / R grain, so several threads each take rows.
    for n in [64, 65, 130, 2000]:
        _batch_norm_case(dtype, torch.randn(n, 3, dtype=dtype) * 2 + 1, True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_without_affine(dtype, threads):
    # No weight or bias: the coefficients take their defaults on both paths.
    _batch_norm_case(dtype, torch.randn(4, 3, 17, dtype=dtype), True, affine=False)
    _batch_norm_case(dtype, torch.randn(9, 7, dtype=dtype), True, affine=False)
