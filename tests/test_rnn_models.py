"""fastdl.nn.convert on models with torch recurrent layers, and the char-LM example."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import fastdl.nn as fnn

FAMILY = "rnn"  # the emulator summary counts test cases per op family

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "char_lm.py"


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(16, 6)
        self.lstm_cell = nn.LSTMCell(6, 7)
        self.gru_cell = nn.GRUCell(7, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        out, _ = self.gru(out.transpose(0, 1))
        h, c = self.lstm_cell(out[-1])
        return self.head(self.gru_cell(h))


def test_convert_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = Tagger().double()
    converted = copy.deepcopy(model)
    report = fnn.convert(converted)
    assert sorted(t for _, _, t in report.swapped) == ["GRU", "GRUCell", "LSTM", "LSTMCell"]
    assert isinstance(converted.lstm, fnn.LSTM) and isinstance(converted.lstm, nn.LSTM)
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    out, ref = converted(x), model(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    out.backward(g), ref.backward(g)
    for (name, p), (_, q) in zip(converted.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}: {m}")


def _example():
    spec = importlib.util.spec_from_file_location("char_lm_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_lm_example_trains(cell):
    result = _example().run(steps=30, cell=cell, hidden=48, batch=8, length=24, lr=1e-2)
    assert [t for _, _, t in result["report"].swapped] == [cell.upper()]
    losses = result["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
