"""Every code path of the histogram CPU kernels (histogram/cpu/histogram.cpp), with shapes on
both sides of each threshold, in float32 and float64, with 1 thread and with several, against
the (bags, N, F, B) composition of fastdl.reference (inputs kept away from the kernels' kinks
by test_histogram's ``_inputs``).

Bins run four vectors at a time while ``k + 4 L <= B`` (``L`` = vector width), then one
vector, then scalar bins, forward and backward, for each of the four kernels; the sigmoid
kernel's vectors share one exp per element unless ``sharpness * width / 2`` passes 40
(float32) or 300 (float64) in a lane. Features are blocked so that a block's accumulators
stay within 16 KiB (``16384 / (B * sizeof(T))`` features) and, with fewer bags than twice
the threads, so that every thread gets a block; centre and width gradients go to per-thread
buffers.
"""

import pytest
import torch

import fastdl.functional as FF
from fastdl.reference import histogram_reference
from helpers import compare_with_torch
from test_histogram import KERNELS, _inputs
from thresholds import DTYPES, around, threads, vec_width  # noqa: F401  (threads: a fixture)

#: A gentle sharpness (one exp per element for the sigmoid kernel) and a sharp one past the
#: one-exp limit in every lane.
SHARPNESS = {
    "gentle": {torch.float32: 20.0, torch.float64: 20.0},
    "sharp": {torch.float32: 1000.0, torch.float64: 30000.0},
}


def _histogram(
    dtype, kernel, bags, n, f, b, sharpness=1000.0, mask=False, shared=False, normalize=True
):
    x, c, w, m = _inputs(kernel, bags, n, f, b, dtype=dtype, mask=mask, shared=shared)
    compare_with_torch(
        lambda x, c, w: FF.histogram(x, c, w, kernel, m, normalize, sharpness),
        lambda x, c, w: histogram_reference(x, c, w, kernel, m, normalize, sharpness),
        [x, c, w],
        dtype,
    )


def _bins(L):
    """Bin counts around L and 4 L, and 5 L + 3."""
    return sorted(set(around(L) + around(4 * L) + [5 * L + 3]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_histogram_bin_vectors(dtype, kernel, threads):
    # Every bin count around L and 4 L: four-vector blocks, single vectors and scalar bins,
    # in the values, the input gradient and the centre/width gradients.
    for i, b in enumerate(_bins(vec_width(dtype))):
        _histogram(dtype, kernel, 2, 7, 3, b, mask=i % 2 == 1, shared=i % 3 == 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sharpness", SHARPNESS)
def test_histogram_sigmoid_one_exp(dtype, sharpness, threads):
    # The sigmoid kernel with one exp per element (gentle) and with two (sharp), in vectors.
    L = vec_width(dtype)
    for b in [L, 4 * L + 1]:
        _histogram(dtype, "sigmoid", 2, 9, 2, b, sharpness=SHARPNESS[sharpness][dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bags", ["one", "many"])
def test_histogram_feature_blocks(dtype, bags, threads):
    # 4 L + 1 bins: 16384 / (B * sizeof(T)) features per block, so 70 features take two
    # blocks (float32: 63 a block); one bag splits its features further for the threads,
    # 2 x threads + 1 bags do not.
    b = 4 * vec_width(dtype) + 1
    n_bags = 1 if bags == "one" else 2 * threads + 1
    _histogram(dtype, "soft", n_bags, 5, 70, b, mask=True, normalize=bags == "one")
