"""fastdl LSTM/GRU on bad input: clear errors naming the argument, from the modules, the functional
ops and mismatched devices (the values and gradients: test_rnn.py)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from helpers import (
    CUDA_AVAILABLE,
    assert_raises_naming,
)

from test_rnn import B, H, I, T, _gru_args, _lstm_args

FAMILY = "rnn"  # the emulator summary counts test cases per op family


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_modules():
    lstm = fnn.LSTM(I, H, num_layers=2)
    assert_raises_naming(RuntimeError, lambda: lstm(torch.randn(T, B, I + 1)), "input_size", str(I))
    assert_raises_naming(
        RuntimeError,
        lambda: lstm(torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(2, B, H))),
        "hidden",
    )
    assert_raises_naming(
        RuntimeError,
        lambda: lstm(torch.randn(T, B, I), (torch.randn(2, B, H), torch.randn(2, B + 1, H))),
        "hidden[1]",
        "(2, 3, 6)",
    )
    assert_raises_naming(
        ValueError, lambda: lstm(torch.randn(T, B, I, dtype=torch.float64)), "float"
    )
    assert_raises_naming(ValueError, lambda: lstm(torch.randn(T, B, I, 2)), "2D or 3D")
    gru = fnn.GRU(I, H)
    assert_raises_naming(
        RuntimeError, lambda: gru(torch.randn(T, B, I), torch.randn(1, B + 1, H)), "hidden"
    )
    assert_raises_naming(RuntimeError, lambda: gru(torch.randn(T, B, I), torch.randn(B, H)), "3-D")
    cell = fnn.LSTMCell(I, H)
    assert_raises_naming(RuntimeError, lambda: cell(torch.randn(B, I + 1)), "weight_ih")
    assert_raises_naming(
        RuntimeError,
        lambda: cell(torch.randn(B, I), (torch.randn(B, H + 1), torch.randn(B, H))),
        "hx",
    )
    # Unsorted lengths where torch requires sorted ones: torch's packing refuses them.
    with pytest.raises(RuntimeError, match="sorted"):
        pack_padded_sequence(torch.randn(T, B, I), torch.tensor([2, 5, 3]), enforce_sorted=True)


def test_bad_input_functional():
    a = _lstm_args("cpu", torch.float32)
    a.pop("peephole"), a.pop("weight_hr")
    call = lambda **kw: FF.lstm(**{**a, **kw})  # noqa: E731
    assert_raises_naming(
        RuntimeError, lambda: call(lengths=torch.tensor([6, 1, 1])), "lengths", "seq_len"
    )
    assert_raises_naming(RuntimeError, lambda: call(lengths=torch.tensor([1, 1])), "lengths", "[3]")
    assert_raises_naming(RuntimeError, lambda: call(cx=torch.randn(B, H + 1)), "cx", "shape")
    assert_raises_naming(
        RuntimeError, lambda: call(weight_hh=torch.randn(4 * H, H + 1)), "weight_hh"
    )
    assert_raises_naming(RuntimeError, lambda: call(bias_ih=torch.randn(H)), "bias_ih")
    assert_raises_naming(
        RuntimeError, lambda: call(input=torch.randn(T, B)), "input", "3 dimensions"
    )
    assert_raises_naming(RuntimeError, lambda: call(weight_hr=torch.randn(H, H)), "weight_hr")
    assert_raises_naming(RuntimeError, lambda: call(peephole=torch.randn(4, H)), "peephole")
    g = _gru_args("cpu", torch.float32)
    assert_raises_naming(
        RuntimeError, lambda: FF.gru(**{**g, "weight_ih": torch.randn(4 * H, I)}), "weight_hh"
    )
    assert_raises_naming(RuntimeError, lambda: FF.gru(**{**g, "hx": torch.randn(B + 1, H)}), "hx")


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
def test_mismatched_devices():
    a = _lstm_args("cuda", torch.float32)
    assert_raises_naming(
        RuntimeError, lambda: FF.lstm(**{**a, "hx": a["hx"].cpu()}), "hx", "device"
    )
    assert_raises_naming(
        RuntimeError,
        lambda: FF.lstm(**{**a, "weight_hh": a["weight_hh"].cpu()}),
        "weight_hh",
        "device",
    )
