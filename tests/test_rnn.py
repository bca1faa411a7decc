"""fastdl LSTM/GRU (ops, functional, modules) against torch.nn (cells, dropout and the PeepholeLSTM:
test_rnn_cells.py; bad input: test_rnn_errors.py)."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
import fastdl.nn as fnn
from helpers import (
    devices,
    CUDA_AVAILABLE,
    device_dtypes,
    DEVICES,
    assert_close_to_reference,
    check_compile_module,
    compare_with_torch,
)
from op_contract import OpContract, Sample

FAMILY = "rnn"  # the emulator summary counts test cases per op family

# Every device with every dtype: the CPU kernels take float16/bfloat16 too (computed in float32).
DEVICE_DTYPES = device_dtypes(cpu_half=True)

T, B, I, H = 5, 3, 4, 6


def _pair(kind, device, dtype, **kwargs):
    """(fastdl module, torch module) with the same weights (the torch one initialised)."""
    torch_type = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
    ours_type = {"lstm": fnn.LSTM, "gru": fnn.GRU}[kind]
    ref = torch_type(I, H, **kwargs).to(device, dtype)
    ours = ours_type(I, H, **kwargs).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _flat(out):
    """Every tensor of a module's (output, hidden) flattened into one, so one random output
    gradient reaches the output and the final states alike."""
    output, hidden = out
    if isinstance(output, nn.utils.rnn.PackedSequence):
        output = output.data
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    return torch.cat([output.flatten()] + [h.flatten() for h in hidden])


def _module_fn(module):
    """f(x, h0, [c0,] *params) -> flat outputs, running ``module`` with the given parameters."""
    names = [n for n, _ in module.named_parameters()]
    lstm = isinstance(module, nn.LSTM)

    def fn(x, *rest):
        states, params = (rest[:2], rest[2:]) if lstm else (rest[:1], rest[1:])
        hx = tuple(states) if lstm else states[0]
        return _flat(functional_call(module, dict(zip(names, params)), (x, hx)))

    return fn


def _module_args(kind, module, device, dtype, batch_first=False, batch=B, steps=T):
    dirs = 2 if module.bidirectional else 1
    state = module.proj_size if kind == "lstm" and module.proj_size else H
    x = torch.randn(
        (batch, steps, I) if batch_first else (steps, batch, I), device=device, dtype=dtype
    )
    h0 = torch.randn(module.num_layers * dirs, batch, state, device=device, dtype=dtype)
    args = [x.requires_grad_(), h0.requires_grad_()]
    if kind == "lstm":
        args.append(
            torch.randn(
                module.num_layers * dirs, batch, H, device=device, dtype=dtype
            ).requires_grad_()
        )
    return args + [p.detach().clone().requires_grad_() for p in module.parameters()]


CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(num_layers=3, bidirectional=True),
    dict(bidirectional=True, batch_first=True),
    dict(num_layers=2, batch_first=True, bias=False),
]
LSTM_ONLY = [dict(proj_size=3), dict(num_layers=2, bidirectional=True, proj_size=4)]


# ---------------------------------------------------------------------------------------------
# Modules against torch: outputs, final states and every gradient
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "kind, config",
    [("lstm", c) for c in CONFIGS + LSTM_ONLY] + [("gru", c) for c in CONFIGS],
    ids=lambda v: (
        v if isinstance(v, str) else "-".join(f"{k}{int(x)}" for k, x in v.items()) or "default"
    ),
)
def test_module_matches_torch(device, dtype, kind, config):
    ours, ref = _pair(kind, device, dtype, **config)
    args = _module_args(kind, ref, device, dtype, batch_first=config.get("batch_first", False))
    compare_with_torch(_module_fn(ours), _module_fn(ref), args, dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize(
    "config",
    [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=3, bidirectional=True)],
    ids=["one", "2layer-bidir", "proj-bidir"],
)
def test_packed_sequence_matches_torch(device, dtype, kind, enforce_sorted, config):
    if kind == "gru" and "proj_size" in config:
        pytest.skip("proj_size is LSTM only")
    ours, ref = _pair(kind, device, dtype, **config)
    lengths = torch.tensor([5, 5, 3, 1] if enforce_sorted else [3, 5, 1, 4])
    args = _module_args(kind, ref, device, dtype, batch=4)

    def wrap(module):
        inner = _module_fn(module)

        def fn(x, *rest):
            packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
            return inner(packed, *rest)

        return fn

    compare_with_torch(wrap(ours), wrap(ref), args, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_packed_output_structure(device, kind):
    ours, ref = _pair(kind, device, torch.float32, bidirectional=True)
    x = torch.randn(6, 4, I, device=device)
    packed = pack_padded_sequence(x, torch.tensor([2, 6, 4, 1]), enforce_sorted=False)
    (out, _), (ref_out, _) = ours(packed), ref(packed)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    assert torch.equal(out.sorted_indices, ref_out.sorted_indices)
    torch.testing.assert_close(out.data, ref_out.data)
    padded, lens = pad_packed_sequence(out)
    assert lens.tolist() == [2, 6, 4, 1] and (padded[2:, 0] == 0).all()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unbatched_and_default_state(kind):
    ours, ref = _pair(kind, "cpu", torch.float32, num_layers=2)
    x = torch.randn(T, I)
    (o1, h1), (o2, h2) = ours(x), ref(x)
    torch.testing.assert_close(o1, o2)
    for a, b in zip(h1 if kind == "lstm" else (h1,), h2 if kind == "lstm" else (h2,)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)
    hx = (torch.randn(2, H), torch.randn(2, H)) if kind == "lstm" else torch.randn(2, H)
    torch.testing.assert_close(_flat(ours(x, hx)), _flat(ref(x, hx)))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_state_dict_both_ways(kind):
    ours, ref = _pair(kind, "cpu", torch.float32, num_layers=2, bidirectional=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    fresh_ref = type(ref)(I, H, num_layers=2, bidirectional=True)
    fresh_ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(_flat(fresh_ref(x)), _flat(ours(x)))
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]


# ---------------------------------------------------------------------------------------------
# Functional ops: variable lengths, reverse, projection, gradcheck, opcheck, compile
# ---------------------------------------------------------------------------------------------


def _lstm_args(device, dtype, steps=T, batch=B, proj=0, peephole=False, bias=True):
    mk = lambda *s: torch.randn(*s, device=device, dtype=dtype).requires_grad_()  # noqa: E731
    state = proj or H
    return dict(
        input=mk(steps, batch, I),
        hx=mk(batch, state),
        cx=mk(batch, H),
        weight_ih=mk(4 * H, I),
        weight_hh=mk(4 * H, state),
        bias_ih=mk(4 * H) if bias else None,
        bias_hh=mk(4 * H) if bias else None,
        weight_hr=mk(proj, H) if proj else None,
        peephole=mk(3, H) if peephole else None,
    )


def _gru_args(device, dtype, steps=T, batch=B, bias=True):
    mk = lambda *s: torch.randn(*s, device=device, dtype=dtype).requires_grad_()  # noqa: E731
    return dict(
        input=mk(steps, batch, I),
        hx=mk(batch, H),
        weight_ih=mk(3 * H, I),
        weight_hh=mk(3 * H, H),
        bias_ih=mk(3 * H) if bias else None,
        bias_hh=mk(3 * H) if bias else None,
    )


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_lengths_match_torch_packed(device, dtype, reverse):
    """The functional op with lengths equals one torch direction run on the packed sequence."""
    ref = nn.LSTM(I, H, bidirectional=True).to(device, dtype)
    sfx = "_reverse" if reverse else ""
    w = [getattr(ref, n + "_l0" + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    lengths = torch.tensor([2, 5, 1])
    x = torch.randn(T, 3, I, device=device, dtype=dtype)
    h0, c0 = (
        torch.randn(2, 3, H, device=device, dtype=dtype),
        torch.randn(2, 3, H, device=device, dtype=dtype),
    )
    out, (hn, cn) = ref(pack_padded_sequence(x, lengths, enforce_sorted=False), (h0, c0))
    out, _ = pad_packed_sequence(out, total_length=T)
    d = int(reverse)
    ours = FF.lstm(x, h0[d], c0[d], *w, lengths=lengths.to(device), reverse=reverse)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype in (torch.float16, torch.bfloat16) else {}
    assert_close_to_reference(ours[0], out[..., d * H : (d + 1) * H].contiguous(), dtype, **tol)
    assert_close_to_reference(ours[1], hn[d], dtype, **tol)
    assert_close_to_reference(ours[2], cn[d], dtype, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_length_elements_keep_initial_state(device):
    a = _gru_args(device, torch.float32)
    out, h = FF.gru(
        a["input"], a["hx"], a["weight_ih"], a["weight_hh"], lengths=torch.tensor([0, 5, 0])
    )
    assert (out[:, 0] == 0).all() and torch.equal(h[0], a["hx"][0])


# ---------------------------------------------------------------------------------------------
# The op contract (op_contract.py): opcheck, compile, gradcheck, no double backward, inputs
# unchanged, empty and non-contiguous inputs, bad dtypes
# ---------------------------------------------------------------------------------------------


def _call(rnn, keys, **kwargs):
    """f(*values) -> FF.<rnn>(**dict(zip(keys, values)), **kwargs)."""
    return lambda *v: getattr(FF, rnn)(**dict(zip(keys, v)), **kwargs)


def _cat(fn):
    """``fn``'s outputs flattened into one tensor (one gradient reaches every output)."""
    return lambda *v: torch.cat([t.flatten() for t in fn(*v)])


def _passthrough(keys, out_shape):
    """What an RNN over no step or no batch element returns: an empty output, the initial
    states unchanged; no gradient to the input or the parameters (0 * each: zeros, not None)."""

    def ref(*v):
        a = dict(zip(keys, v))
        states = [a[k] for k in ("hx", "cx") if k in a]
        params = [t for k, t in a.items() if k not in ("hx", "cx") and t is not None]
        zero = sum(0 * p.sum() for p in params)
        empty = a["input"].new_zeros(out_shape)
        return torch.cat([empty.flatten()] + [t.flatten() for t in states]) + zero

    return ref


class TestRnnContract(OpContract):
    def opcheck_samples(self, device, dtype):
        if dtype != torch.float32:
            return []
        a = _lstm_args(device, dtype, proj=3, peephole=True)
        nb = _lstm_args(device, dtype, bias=False)
        g = _gru_args(device, dtype)
        lstm, gru = torch.ops.fastdl.lstm_forward, torch.ops.fastdl.gru_forward
        return [
            Sample(list(a.values()) + [torch.tensor([5, 2, 4]), True], op=lstm, name="lstm"),
            Sample(list(nb.values()) + [None, False], op=lstm, name="lstm_no_bias"),
            Sample(list(g.values()) + [torch.tensor([1, 5, 3]), False], op=gru, name="gru"),
            Sample(list(g.values()) + [None, True], op=gru, name="gru_reverse"),
        ]

    def compile_samples(self, device):
        a, g = _lstm_args(device, torch.float32, proj=3), _gru_args(device, torch.float32)
        return [
            Sample(list(a.values()), fn=_cat(FF.lstm), name="lstm"),
            Sample(
                list(g.values()),
                name="gru",
                fn=_cat(lambda *v: FF.gru(*v, lengths=torch.tensor([5, 1, 3]))),
            ),
        ]

    def gradcheck_samples(self, device):
        f64, samples = torch.float64, []
        for reverse in (False, True):
            for proj in (0, 3):
                for peephole in (False, True):
                    a = _lstm_args(device, f64, steps=4, batch=3, proj=proj, peephole=peephole)
                    fn = _call("lstm", list(a), lengths=torch.tensor([4, 2, 3]), reverse=reverse)
                    samples.append(
                        Sample(list(a.values()), fn=fn, name=f"lstm-{reverse}-{proj}-{peephole}")
                    )
            for bias in (True, False):
                g = _gru_args(device, f64, steps=4, batch=3, bias=bias)
                samples.append(
                    Sample(
                        list(g.values()),
                        name=f"gru-{reverse}-{bias}",
                        fn=_call("gru", list(g), lengths=torch.tensor([1, 4, 3]), reverse=reverse),
                    )
                )
        a = _lstm_args(device, f64, steps=1)
        g = _gru_args(device, f64, steps=1)
        return samples + [
            Sample(
                [
                    a[k]
                    for k in ("input", "hx", "cx", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
                ],
                fn=lambda x, h, c, wi, wh, bi, bh: FF.lstm_cell(x[0], (h, c), wi, wh, bi, bh),
                name="lstm_cell",
            ),
            Sample(
                [g[k] for k in ("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh")],
                fn=lambda x, h, wi, wh, bi, bh: FF.gru_cell(x[0], h, wi, wh, bi, bh),
                name="gru_cell",
            ),
        ]

    def double_backward_samples(self, device):
        a = _gru_args(device, torch.float64, steps=2, batch=2)
        return [
            Sample(
                [a["input"], a["hx"]],
                backward_name="gru",
                fn=lambda x, h: FF.gru(x, h, a["weight_ih"], a["weight_hh"])[0],
            )
        ]

    def unchanged_samples(self, device, dtype):
        a = _lstm_args(device, dtype, proj=3, peephole=True)
        g = _gru_args(device, dtype)
        return [
            Sample(
                list(a.values()),
                fn=_call("lstm", list(a), lengths=torch.tensor([5, 1, 3])),
                name="lstm",
            ),
            Sample(list(g.values()), fn=_call("gru", list(g)), name="gru"),
        ]

    def empty_samples(self, device):
        samples = []
        for steps, batch in [(0, 3), (4, 0), (0, 0)]:
            a = _lstm_args(device, torch.float64, steps=steps, batch=batch, proj=3)
            samples.append(
                Sample(
                    list(a.values()),
                    fn=_cat(_call("lstm", list(a))),
                    ref=_passthrough(list(a), (steps, batch, 3)),
                    name=f"lstm-{steps}-{batch}",
                )
            )
            g = _gru_args(device, torch.float64, steps=steps, batch=batch)
            gru = _call("gru", list(g), lengths=torch.zeros(batch, dtype=torch.long))
            samples.append(
                Sample(
                    list(g.values()),
                    fn=_cat(gru),
                    ref=_passthrough(list(g), (steps, batch, H)),
                    name=f"gru-{steps}-{batch}",
                )
            )
        return samples

    def noncontiguous_samples(self, device, dtype):
        """A strided, transposed input and a transposed weight_ih, against FF.lstm on contiguous
        copies."""
        a = _lstm_args(device, dtype)
        x = torch.randn(B, T, 2 * I, device=device, dtype=dtype)[:, :, ::2].transpose(0, 1)
        w = torch.randn(I, 4 * H, device=device, dtype=dtype).t()
        args = [x.requires_grad_(), a["hx"], a["cx"], w.requires_grad_(), a["weight_hh"]]
        ours = _cat(FF.lstm)
        return [Sample(args, fn=ours, ref=lambda *v: ours(*(t.contiguous() for t in v)))]

    def bad_dtype_calls(self, device):
        a = _lstm_args(device, torch.float32)
        a.pop("peephole"), a.pop("weight_hr")
        call = lambda **kw: FF.lstm(**{**a, **kw})  # noqa: E731
        return [
            (lambda: call(lengths=torch.tensor([1.0, 1.0, 1.0])), "lengths", "int64"),
            (lambda: call(hx=a["hx"].double()), "hx", "dtype"),
            (lambda: call(input=torch.randn(T, B, I, device=device).int()), "input", "float"),
        ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_compile_module(device, kind):
    ours, _ = _pair(kind, device, torch.float32, num_layers=2, bidirectional=True)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = ours

        def forward(self, x):
            return _flat(self.rnn(x))

    # Dynamo refuses every torch.nn.RNNBase subclass unless allow_rnn is set (cuDNN's flat
    # weights); fastdl's modules trace fully through their fake kernels once it is.
    with torch._dynamo.config.patch(allow_rnn=True):
        check_compile_module(Head(), torch.randn(T, B, I, device=device, requires_grad=True))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_autocast_cuda_matches_torch(kind):
    ours, ref = _pair(kind, "cuda", torch.float32, num_layers=2)
    x = torch.randn(T, B, I, device="cuda")
    with torch.autocast("cuda"):
        out, ref_out = ours(x)[0], ref(x)[0]
    assert out.dtype == ref_out.dtype == torch.float16
    torch.testing.assert_close(out, ref_out, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_large_products_match_torch(device, dtype, kind):
    """Shapes where the CPU drivers take the packed GEMM (more than 64 rows: the input
    projections of all steps, the weight gradients) as well as the per-step kernel with
    column tails (4H and 3H not multiples of the vector panels)."""
    torch_type, ours_type = {"lstm": (nn.LSTM, fnn.LSTM), "gru": (nn.GRU, fnn.GRU)}[kind]
    ref = torch_type(20, 37, bidirectional=True).to(device, dtype)
    ours = ours_type(20, 37, bidirectional=True).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    batch, steps = 9, 11
    dirs, state = 2, 37
    x = torch.randn(steps, batch, 20, device=device, dtype=dtype, requires_grad=True)
    states = [
        torch.randn(dirs, batch, state, device=device, dtype=dtype, requires_grad=True)
        for _ in range(2 if kind == "lstm" else 1)
    ]
    args = [x, *states] + [p.detach().clone().requires_grad_() for p in ref.parameters()]
    compare_with_torch(_module_fn(ours), _module_fn(ref), args, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_half_inputs_keep_the_state_in_float32(device, dtype, kind):
    """Half inputs: what carries from step to step and what backward reads back (LSTM gates
    and cells, GRU work) is float32, as torch keeps it; outputs and states come back in the
    input's dtype; a 64-step sequence's outputs and gradients stay within twice torch's own
    half error of a float64 reference."""
    if kind == "lstm":
        a = _lstm_args(device, dtype, steps=64, batch=3, proj=3)
        out = torch.ops.fastdl.lstm_forward(*a.values(), None, False)
        assert [t.dtype for t in out[3:5]] == [torch.float32] * 2  # gates, cells
        assert [t.dtype for t in out[:3]] == [dtype] * 3
    else:
        a = _gru_args(device, dtype, steps=64, batch=3)
        out = torch.ops.fastdl.gru_forward(*a.values(), None, False)
        assert out[2].dtype == torch.float32 and out[0].dtype == out[1].dtype == dtype
    ours, ref = _pair(kind, device, dtype)
    args = _module_args(kind, ref, device, dtype, steps=64)
    compare_with_torch(_module_fn(ours), _module_fn(ref), args, dtype)


@pytest.mark.parametrize("device", devices(("cuda_sim",)))
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_column_sums_past_the_grid(device, kind):
    """Bias gradients of 4H = 800 columns on an emulated device whose grid holds 16 column
    tiles: the kernel's grid-stride loop over tiles runs (at H = 200 on any real GPU it would
    not)."""
    import fastdl.testing

    torch_type, ours_type = (nn.LSTM, fnn.LSTM) if kind == "lstm" else (nn.GRU, fnn.GRU)
    ref = torch_type(I, 200)
    ours = ours_type(I, 200)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, I, requires_grad=True)
    h0 = [torch.randn(1, 2, 200, requires_grad=True) for _ in range(2 if kind == "lstm" else 1)]
    args = [x] + h0 + [p.detach().clone().requires_grad_() for p in ref.parameters()]
    with fastdl.testing.cuda_sim(max_grid=(0, 1, 1)):
        compare_with_torch(_module_fn(ours), _module_fn(ref), args, torch.float32)


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_cell", "gru_cell"])
def test_autocast_cpu_as_torch(kind):
    """CPU autocast as torch's: it runs nn.LSTM in bfloat16 (float32 accumulation inside) and
    has no rule for GRU or the cells, which return their float32 inputs' dtype. (Inside, torch's
    GRU and cells call linear, which autocast rounds to bfloat16; ours compute in float32, so
    the two agree to bfloat16's precision and ours equals the float32 result.)"""
    torch.manual_seed(0)
    torch_type = {"lstm": nn.LSTM, "gru": nn.GRU, "lstm_cell": nn.LSTMCell, "gru_cell": nn.GRUCell}[
        kind
    ]
    ours_type = {
        "lstm": fnn.LSTM,
        "gru": fnn.GRU,
        "lstm_cell": fnn.LSTMCell,
        "gru_cell": fnn.GRUCell,
    }[kind]
    theirs = torch_type(5, 7)
    ours = ours_type(5, 7)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 3, 5) if kind in ("lstm", "gru") else torch.randn(3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yo = ours(x)
        try:
            yt = theirs(x)
            torch_dtype = None  # yt's
        except RuntimeError as exc:
            # oneDNN has no bfloat16 LSTM for CPUs without AVX-512, so torch raises there; its
            # native LSTM (linear in bfloat16, the rest float32) is then the error baseline,
            # and the output dtype the one autocast gives where torch runs it.
            if kind != "lstm" or "primitive descriptor" not in str(exc):
                raise
            with torch.backends.mkldnn.flags(enabled=False):
                yt = theirs(x)
            torch_dtype = torch.bfloat16
    yt, yo = (y[0] if isinstance(y, tuple) else y for y in (yt, yo))
    assert (
        yo.dtype
        == (torch_dtype or yt.dtype)
        == (torch.bfloat16 if kind == "lstm" else torch.float32)
    )
    if kind == "lstm":  # the float64 LSTM on the bfloat16-rounded input and weights
        ref = copy.deepcopy(theirs).bfloat16().double()
        assert_close_to_reference(yo, ref(x.bfloat16().double())[0], torch.bfloat16, baseline=yt)
    else:
        expected = ours(x)
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(yo, expected)
        torch.testing.assert_close(yo, yt, rtol=2e-2, atol=2e-2)
