"""fastdl pooling on bad input: clear errors naming the argument, from the forward and the
backward ops, and from the 1-d functions (which run the 2-d op). Values: test_pooling.py."""

import pytest
import torch

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from helpers import (
    DEVICES,
    assert_raises_naming,
)

from test_pooling import AVG_BACKWARD, MAX_BACKWARD, MAX_OP

FAMILY = "pooling"  # the emulator summary counts test cases per op family


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments(device):
    x = torch.randn(2, 3, 6, 6, device=device)
    for fn in (FF.max_pool2d, FF.avg_pool2d):
        assert_raises_naming(RuntimeError, lambda: fn(x, 0), "kernel_size", "greater than zero")
        assert_raises_naming(RuntimeError, lambda: fn(x, 2, 0), "stride", "greater than zero")
        assert_raises_naming(RuntimeError, lambda: fn(x, 2, 1, -1), "padding", "non-negative")
        assert_raises_naming(
            RuntimeError,
            lambda: fn(x, 3, 1, 2),
            "pad should be at most half of effective kernel size",
        )
        assert_raises_naming(RuntimeError, lambda: fn(x, 7), "output size is too small")
        assert_raises_naming(ValueError, lambda: fn(x, (2, 2, 2)), "kernel_size")
        assert_raises_naming(
            RuntimeError, lambda: fn(torch.randn(6, 6, device=device), 2), "input", "[6, 6]"
        )
        assert_raises_naming(
            RuntimeError, lambda: fn(torch.randn(1, 2, 3, 6, 6, device=device), 2), "input"
        )
        assert_raises_naming(
            RuntimeError, lambda: fn(torch.randn(2, 0, 6, 6, device=device), 2), "input"
        )
    assert_raises_naming(
        RuntimeError, lambda: FF.max_pool2d(x, 2, dilation=0), "dilation", "greater than zero"
    )
    assert_raises_naming(
        RuntimeError, lambda: FF.avg_pool2d(x, 2, divisor_override=0), "divisor_override"
    )
    assert_raises_naming(RuntimeError, lambda: FF.max_pool1d(x, 2), "max_pool1d", "input")
    assert_raises_naming(RuntimeError, lambda: FF.avg_pool1d(x[0, 0, 0], 2), "avg_pool1d", "input")
    assert_raises_naming(
        RuntimeError, lambda: MAX_OP(x, [2, 2, 2], [], [0], [1], False), "kernel_size"
    )


@pytest.mark.parametrize("device", DEVICES)
def test_bad_backward_arguments(device):
    x = torch.randn(2, 3, 6, 6, device=device)
    out, idx = MAX_OP(x, [2, 2], [], [0, 0], [1, 1], False)
    g = torch.randn_like(out)
    assert_raises_naming(
        RuntimeError,
        lambda: MAX_BACKWARD(g[:, :, :2], x, idx, [2, 2], [2, 2], [0, 0], [1, 1], False),
        "grad_output",
        "[2, 3, 3, 3]",
    )
    assert_raises_naming(
        RuntimeError,
        lambda: MAX_BACKWARD(g, x, idx.int(), [2, 2], [2, 2], [0, 0], [1, 1], False),
        "indices",
        "int64",
    )
    assert_raises_naming(
        RuntimeError,
        lambda: AVG_BACKWARD(g.double(), x, [2, 2], [2, 2], [0, 0], False, True, None),
        "grad_output",
        "dtype",
    )


@pytest.mark.parametrize("fn", ["max_pool1d", "avg_pool1d"])
def test_1d_errors_name_the_1d_function(fn):
    """The 1-d poolings run the 2-d op; its errors say which function was called."""
    with pytest.raises(
        RuntimeError,
        match=rf"^fastdl\.{fn} \(as .*2d of the input unsqueezed.*output size is too small",
    ):
        getattr(FF, fn)(torch.randn(1, 1, 1), 3)
