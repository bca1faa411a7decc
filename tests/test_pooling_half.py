"""fastdl max/avg pooling in float16/bfloat16 on the CPU: compared and summed in float32, the
output in the input's dtype, judged by torch's own error in that dtype against float64
(compare_with_torch); modules converted with .to(dtype). The float32/float64 op: test_pooling.py."""

import pytest
import torch
import torch.nn.functional as F

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from helpers import (
    HALF_DTYPES,
    compare_with_torch,
)

from test_pooling import (
    AVG_CASES,
    AVG_OPTIONS,
    MAX_CASES,
    MODULE_PAIRS,
    _avg_fns,
    _layouts,
    _max_fns,
    distinct,
)

FAMILY = "pooling"  # the emulator summary counts test cases per op family


# ---------------------------------------------------------------------------------------------
# float16 / bfloat16 on the CPU: compared and summed in float32, the output in the input's
# dtype (judged by torch's own error in that dtype against float64: compare_with_torch)
# ---------------------------------------------------------------------------------------------

# Channels past the vector widths (4 x 16 float lanes, then 16, then a scalar tail), for the
# channels-last kernels; odd planes with overlapping windows for the NCHW ones.
HALF_MAX_CASES = MAX_CASES + [
    ((2, 67, 9, 8), 3, 2, 1, 1, True),
    ((1, 83, 7, 5), 2, 1, 0, 1, False),
    ((2, 64, 6, 6), 3, 1, 1, 2, False),
]
HALF_AVG_CASES = AVG_CASES + [
    ((2, 67, 9, 8), 3, 2, 1, True),
    ((1, 83, 7, 5), 2, 1, 0, False),
    ((2, 64, 6, 6), (3, 2), 1, 1, False),
]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case", HALF_MAX_CASES, ids=[str(i) for i in range(len(HALF_MAX_CASES))])
def test_half_max_pool2d_on_cpu(dtype, case):
    """The maxima are exact and the indices torch's (ties go to the first tap, as torch: the
    rounded values of distinct() can tie); the gradient is summed in float32."""
    shape, k, s, p, d, c = case
    base = distinct(shape, "cpu", dtype)
    for name, x in _layouts(base):
        x = x.detach().requires_grad_()
        (out, idx), (ref, ref_idx), _, _ = compare_with_torch(*_max_fns(k, s, p, d, c), [x], dtype)
        assert out.dtype == dtype and idx.dtype == torch.int64, name
        assert torch.equal(out, ref) and torch.equal(idx, ref_idx), name
        assert out.stride() == ref.stride() and idx.stride() == ref_idx.stride(), name


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case", HALF_AVG_CASES, ids=[str(i) for i in range(len(HALF_AVG_CASES))])
@pytest.mark.parametrize("cip, dov", AVG_OPTIONS, ids=["pad", "nopad", "div5", "nopad-div2"])
def test_half_avg_pool2d_on_cpu(dtype, case, cip, dov):
    shape, k, s, p, c = case
    base = torch.randn(shape, dtype=dtype)
    for name, x in _layouts(base):
        x = x.detach().requires_grad_()
        out, ref, _, _ = compare_with_torch(*_avg_fns(k, s, p, c, cip, dov), [x], dtype)
        assert out.dtype == dtype and out.stride() == ref.stride(), name


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize(
    "shape", [(2, 3, 9), (4, 37), (2, 70, 33)], ids=["batched", "unbatched", "wide"]
)
def test_half_pool1d_on_cpu(dtype, shape):
    x = distinct(shape, "cpu", dtype).requires_grad_()
    for k, s, p, d, c in [(3, 2, 1, 1, False), (3, 1, 1, 2, True), (2, None, 0, 1, True)]:
        (out, idx), (ref, ref_idx), _, _ = compare_with_torch(
            lambda x: FF.max_pool1d(x, k, s, p, d, c, return_indices=True),
            lambda x: F.max_pool1d(x, k, s, p, d, c, return_indices=True),
            [x],
            dtype,
        )
        assert out.dtype == dtype and torch.equal(out, ref) and torch.equal(idx, ref_idx)
    for k, s, p, c, cip in [
        (3, 2, 1, False, True),
        (4, 1, 2, True, False),
        (2, None, 0, True, True),
    ]:
        out, _, _, _ = compare_with_torch(
            lambda x: FF.avg_pool1d(x, k, s, p, c, cip),
            lambda x: F.avg_pool1d(x, k, s, p, c, cip),
            [x],
            dtype,
        )
        assert out.dtype == dtype


def test_half_avg_pool_sums_in_float32():
    """2048 and eight 1s: their mean is 2056/9 = 228.4; a float16 running sum (spacing 2 above
    2048) would drop every 1 and give 2048/9 = 227.6, another float16 value (spacing 0.125)."""
    x = torch.ones(1, 1, 3, 3, dtype=torch.float16)
    x[0, 0, 0, 0] = 2048
    for fmt in (torch.contiguous_format, torch.channels_last):
        out = FF.avg_pool2d(x.contiguous(memory_format=fmt), 3)
        assert out.item() == torch.tensor(2056 / 9, dtype=torch.float16).item()


@pytest.mark.parametrize("to_dtype", ["bfloat16", "half"])
@pytest.mark.parametrize(
    "ours, theirs, kwargs, shape",
    MODULE_PAIRS,
    ids=[f"{p[0].__name__}-{i}" for i, p in enumerate(MODULE_PAIRS)],
)
def test_modules_in_half_on_cpu(to_dtype, ours, theirs, kwargs, shape):
    """fastdl.nn pooling modules after .bfloat16() / .half() as torch's: the output in the
    input's dtype, within a rounding of torch's; gradients to the input."""
    m, t = getattr(ours(**kwargs), to_dtype)(), getattr(theirs(**kwargs), to_dtype)()
    dtype = getattr(torch, "float16" if to_dtype == "half" else to_dtype)
    x = distinct(shape, "cpu", dtype)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yr = m(xo), t(xr)
    assert yo.dtype == yr.dtype == dtype
    torch.testing.assert_close(yo, yr)
    go = torch.randn_like(yr)
    yo.backward(go)
    yr.backward(go)
    assert xo.grad.dtype == dtype
    torch.testing.assert_close(xo.grad, xr.grad, rtol=2e-2, atol=2e-2)
