"""fastdl LSTM/GRU cells, dropout between layers and the PeepholeLSTM (against torch.nn and the
float64 reference from the equations; the layers: test_rnn.py)."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from fastdl.reference import peephole_lstm
from helpers import (
    compare_with_torch,
)

from test_rnn import B, DEVICE_DTYPES, H, I, T, _flat, _lstm_args, _pair

FAMILY = "rnn"  # the emulator summary counts test cases per op family


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch(device, dtype, kind, bias):
    ref = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(I, H, bias=bias).to(device, dtype)
    ours = (fnn.LSTMCell if kind == "lstm" else fnn.GRUCell)(I, H, bias=bias).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    names = [n for n, _ in ref.named_parameters()]

    def fn(module):
        def run(x, h, c, *params):
            out = functional_call(
                module, dict(zip(names, params)), (x, (h, c) if kind == "lstm" else h)
            )
            return torch.cat([o.flatten() for o in (out if kind == "lstm" else (out,))])

        return run

    mk = lambda *s: torch.randn(*s, device=device, dtype=dtype).requires_grad_()  # noqa: E731
    args = [mk(B, I), mk(B, H), mk(B, H)] + [
        p.detach().clone().requires_grad_() for p in ref.parameters()
    ]
    compare_with_torch(fn(ours), fn(ref), args, dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cell_unbatched_and_default_state(kind):
    ref = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(I, H)
    ours = (fnn.LSTMCell if kind == "lstm" else fnn.GRUCell).from_torch(copy.deepcopy(ref))
    x = torch.randn(I)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours(x.expand(2, I)), ref(x.expand(2, I)))


# ---------------------------------------------------------------------------------------------
# Dropout between layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_dropout_train_and_eval(kind):
    ours, ref = _pair(kind, "cpu", torch.float32, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(T, B, I)
    ours.eval(), ref.eval()
    e1, e2 = _flat(ours(x)), _flat(ours(x))
    assert torch.equal(e1, e2)  # eval is deterministic
    torch.testing.assert_close(e1, _flat(ref(x)))  # and is torch's eval
    ours.train(), ref.train()
    t1, t2 = _flat(ours(x)), _flat(ours(x))
    assert not torch.allclose(t1, t2) and not torch.allclose(t1, e1)  # train drops at random
    torch.manual_seed(0)
    ours_train = _flat(ours(x))
    torch.manual_seed(0)
    torch.testing.assert_close(ours_train, _flat(ref(x)))  # same masks as torch from the same seed


# ---------------------------------------------------------------------------------------------
# PeepholeLSTM against the float64 reference from the equations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_peephole_functional_matches_reference(device, dtype, reverse):
    a = _lstm_args(device, dtype, peephole=True)
    del a["weight_hr"]
    keys = list(a)
    ours = lambda *v: torch.cat(
        [t.flatten() for t in FF.lstm(**dict(zip(keys, v)), reverse=reverse)]
    )  # noqa: E731
    ref = lambda *v: torch.cat(
        [t.flatten() for t in peephole_lstm(**dict(zip(keys, v)), reverse=reverse)]
    )  # noqa: E731
    compare_with_torch(ours, ref, list(a.values()), dtype)


def test_peephole_module():
    m = fnn.PeepholeLSTM(I, H, num_layers=2, bidirectional=True).double()
    names = [n for n, _ in m.named_parameters()]
    assert "weight_peephole_l1_reverse" in names and m.weight_peephole_l0.shape == (3, H)
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, (hn, cn) = m(x)
    # The reference, layer by layer and direction by direction.
    layer_in, hs, cs = x, [], []
    for layer in range(2):
        outs = []
        for d, sfx in enumerate(("", "_reverse")):
            p = lambda n: getattr(m, f"{n}_l{layer}{sfx}")  # noqa: E731
            o, h, c = peephole_lstm(
                layer_in,
                torch.zeros(B, H, dtype=torch.float64),
                torch.zeros(B, H, dtype=torch.float64),
                p("weight_ih"),
                p("weight_hh"),
                p("bias_ih"),
                p("bias_hh"),
                p("weight_peephole"),
                reverse=d == 1,
            )
            outs.append(o), hs.append(h), cs.append(c)
        layer_in = torch.cat(outs, 2)
    torch.testing.assert_close(out, layer_in)
    torch.testing.assert_close(hn, torch.stack(hs))
    torch.testing.assert_close(cn, torch.stack(cs))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
