"""Differential fuzzing of the recurrent modules (LSTM, GRU, their cells, PeepholeLSTM)."""

import copy

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastdl.nn as fnn
from fastdl.reference.rnn import peephole_lstm
from fuzzlib import Case, Problem, check, module_pair, tensor


def _packed_output(out):
    """A PackedSequence's data (and its batch sizes, exactly) or the tensor."""
    if isinstance(out, nn.utils.rnn.PackedSequence):
        return (out.data, out.batch_sizes, out.sorted_indices, out.unsorted_indices)
    return out


def test_rnn(case_index, fuzz_long):
    case = Case("rnn", case_index, fuzz_long)
    kind = case.choice("module", ["LSTM", "GRU"])
    input_size, hidden = case.randint("input_size", 1, 5), case.randint("hidden_size", 1, 5)
    layers = case.randint("num_layers", 1, 2)
    bidirectional, batch_first, bias = (
        case.flag("bidirectional"),
        case.flag("batch_first"),
        case.flag("bias", 0.8),
    )
    proj = case.choice("proj_size", [0, 0, 1, 2]) if kind == "LSTM" else 0
    proj = proj if proj < hidden else 0
    batched = case.flag("batched", 0.85)
    T, N = case.size("seq_len", 7, large=60), case.size("batch", 4)
    packed = batched and N > 0 and T > 0 and case.flag("packed", 0.3)
    torch.manual_seed(case.seed)
    ref = (
        getattr(nn, kind)(
            input_size,
            hidden,
            layers,
            bias=bias,
            batch_first=batch_first,
            bidirectional=bidirectional,
            proj_size=proj,
        )
        if kind == "LSTM"
        else nn.GRU(
            input_size,
            hidden,
            layers,
            bias=bias,
            batch_first=batch_first,
            bidirectional=bidirectional,
        )
    )
    shape = ([N, T] if batch_first else [T, N]) if batched else [T]
    t = {"x": tensor(case, "x", shape + [input_size])}
    dirs = 2 if bidirectional else 1
    with_state = case.flag("initial_state", 0.5)
    state_shape = [layers * dirs] + ([N] if batched else [])
    if with_state:
        t["h0"] = tensor(case, "h0", state_shape + [proj or hidden], expand=False)
        if kind == "LSTM":
            t["c0"] = tensor(case, "c0", state_shape + [hidden], expand=False)
    if packed:
        lengths = torch.randint(1, T + 1, (N,), generator=case.gen)
        lengths[case.rng.randrange(N)] = T
        enforce_sorted = case.flag("enforce_sorted", 0.3)
        if enforce_sorted:
            lengths = lengths.sort(descending=True).values
        case.drawn["lengths"] = lengths.tolist()

    def run(side, dtype, v):
        m, params = module_pair(ref, getattr(fnn, kind), dtype, side)
        x = v["x"]
        if packed:
            x = pack_padded_sequence(
                x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted
            )
        state = None
        if with_state:
            state = (v["h0"], v["c0"]) if kind == "LSTM" else v["h0"]
        out, final = m(x, state)
        return (_packed_output(out), final), params

    check(case, Problem(t, run, grad=[k for k in t]))


def test_rnn_cell(case_index, fuzz_long):
    case = Case("rnn_cell", case_index, fuzz_long)
    kind = case.choice("module", ["LSTMCell", "GRUCell"])
    input_size, hidden = case.randint("input_size", 1, 6), case.randint("hidden_size", 1, 6)
    bias, batched = case.flag("bias", 0.8), case.flag("batched", 0.85)
    N = case.size("batch", 5)
    torch.manual_seed(case.seed)
    ref = getattr(nn, kind)(input_size, hidden, bias=bias)
    lead = [N] if batched else []
    t = {"x": tensor(case, "x", lead + [input_size])}
    with_state = case.flag("initial_state", 0.6)
    if with_state:
        t["h"] = tensor(case, "h", lead + [hidden])
        if kind == "LSTMCell":
            t["c"] = tensor(case, "c", lead + [hidden])

    def run(side, dtype, v):
        m, params = module_pair(ref, getattr(fnn, kind), dtype, side)
        state = None
        if with_state:
            state = (v["h"], v["c"]) if kind == "LSTMCell" else v["h"]
        return m(v["x"], state), params

    check(case, Problem(t, run, grad=list(t)))


def test_peephole_lstm(case_index, fuzz_long):
    case = Case("peephole_lstm", case_index, fuzz_long)
    input_size, hidden = case.randint("input_size", 1, 5), case.randint("hidden_size", 1, 5)
    bias = case.flag("bias", 0.8)
    T, N = case.size("seq_len", 7, large=60), case.size("batch", 4)
    torch.manual_seed(case.seed)
    ref = fnn.PeepholeLSTM(input_size, hidden, bias=bias)
    t = {
        "x": tensor(case, "x", [T, N, input_size]),
        "h0": tensor(case, "h0", [N, hidden]),
        "c0": tensor(case, "c0", [N, hidden]),
    }

    def run(side, dtype, v):
        m = copy.deepcopy(ref).to(dtype)
        params = dict(m.named_parameters())
        if side == "fastdl":
            out, (h, c) = m(v["x"], (v["h0"].unsqueeze(0), v["c0"].unsqueeze(0)))
            return (out, h[0], c[0]), params
        p = {
            name: getattr(m, f"{name}_l0") if bias or "bias" not in name else None
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_peephole")
        }
        return peephole_lstm(
            v["x"],
            v["h0"],
            v["c0"],
            p["weight_ih"],
            p["weight_hh"],
            p["bias_ih"],
            p["bias_hh"],
            p["weight_peephole"],
        ), params

    check(case, Problem(t, run, grad=list(t)))
