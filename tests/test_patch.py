"""fastdl.patch: torch.nn.functional's entry points routed to fastdl, fallbacks to torch,
undo, nesting and threads, counts and logs, torch.compile."""

from __future__ import annotations

import copy
import logging
import random
import subprocess
import sys
import threading

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

import fastdl
from helpers import assert_close_to_reference, check_compile
from model_helpers import FastdlOps, compare_model

ORIGINALS = {name: getattr(F, name) for name in fastdl.PATCHABLE_OPS}


@pytest.fixture(autouse=True)
def _restored():
    """Every test leaves torch.nn.functional as it found it (and starts counting from zero)."""
    fastdl.reset_patch_stats()
    yield
    changed = [n for n, fn in ORIGINALS.items() if getattr(F, n) is not fn]
    for n in changed:
        setattr(F, n, ORIGINALS[n])
    assert not changed, f"torch.nn.functional left patched: {changed}"


def _t(*shape, **kw):
    return torch.randn(*shape, **kw)


def _calls():
    """(op, args, kwargs, fastdl op it must run): every op with arguments fastdl supports,
    each of its options at least once."""
    q, k, v = _t(2, 4, 6, 8), _t(2, 4, 5, 8), _t(2, 4, 5, 3)
    x1, x2 = _t(2, 4, 11), _t(2, 4, 9, 7)
    return [
        ("scaled_dot_product_attention", (q, k, v), {}, "sdpa_forward"),
        ("scaled_dot_product_attention", (q, k, v, _t(6, 5) > 0), {}, "sdpa_forward"),
        ("scaled_dot_product_attention", (q, k, v, _t(2, 1, 6, 5)), {"scale": 0.3}, "sdpa_forward"),
        ("scaled_dot_product_attention", (q, q, q), {"is_causal": True}, "sdpa_forward"),
        (
            "scaled_dot_product_attention",
            (q, k[:, :2], v[:, :2]),
            {"enable_gqa": True},
            "sdpa_forward",
        ),
        ("layer_norm", (x2, (9, 7), _t(9, 7), _t(9, 7)), {"eps": 1e-3}, "layer_norm_forward"),
        ("layer_norm", (x1, [11]), {}, "layer_norm_forward"),
        (
            "batch_norm",
            (x2, torch.zeros(4), torch.ones(4), _t(4), _t(4)),
            {"training": True, "momentum": 0.3},
            "batch_norm_forward",
        ),
        ("batch_norm", (x1, _t(4), torch.rand(4) + 0.5), {}, "batch_norm_forward"),
        (
            "conv1d",
            (x1, _t(6, 2, 3), _t(6)),
            {"stride": 2, "padding": 1, "groups": 2},
            "conv2d_forward",
        ),
        ("conv1d", (x1, _t(5, 4, 4)), {"padding": "same", "dilation": 1}, "conv2d_forward"),
        (
            "conv2d",
            (x2, _t(6, 4, 3, 3), _t(6)),
            {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
            "conv2d_forward",
        ),
        ("conv2d", (x2, _t(4, 1, 3, 3)), {"padding": "same", "groups": 4}, "conv2d_forward"),
        (
            "max_pool1d",
            (x1, 3),
            {"stride": 2, "padding": 1, "ceil_mode": True},
            "max_pool2d_forward",
        ),
        ("max_pool2d", (x2, 3, 2, 1, 1, False, True), {}, "max_pool2d_forward"),
        (
            "max_pool2d",
            (x2, (2, 3)),
            {"dilation": (2, 1), "return_indices": False},
            "max_pool2d_forward",
        ),
        (
            "avg_pool1d",
            (x1, 4),
            {"stride": 3, "count_include_pad": False, "padding": 2},
            "avg_pool2d_forward",
        ),
        (
            "avg_pool2d",
            (x2, 3),
            {"stride": 2, "padding": 1, "ceil_mode": True, "divisor_override": 5},
            "avg_pool2d_forward",
        ),
    ]


@pytest.mark.parametrize("index", range(len(_calls())))
def test_routes_to_fastdl(index):
    """Each call runs fastdl's op (once: fastdl never calls a patched function itself), gives
    fastdl's result bit for bit and torch's within float32 tolerance, and is counted."""
    name, args, kwargs, op = _calls()[index]
    expected = ORIGINALS[name](*copy.deepcopy(args), **kwargs)
    direct = getattr(fastdl.functional, name)(*copy.deepcopy(args), **kwargs)
    patched_args = copy.deepcopy(args)
    with FastdlOps() as ops, fastdl.patch() as p:
        got = getattr(F, name)(*patched_args, **kwargs)
    assert ops.names() == [op]
    assert p.stats().fastdl == {name: 1} and p.stats().fallback == {}
    for g, d, e in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, direct, expected))):
        assert torch.equal(g, d)
        assert_close_to_reference(g, e, torch.float32)
    if name == "batch_norm" and kwargs.get("training"):  # running statistics, in place
        reference = copy.deepcopy(args)
        ORIGINALS[name](*reference, **kwargs)
        for ours, theirs in zip(patched_args[1:3], reference[1:3]):
            assert_close_to_reference(ours, theirs, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_routes_to_fastdl(dtype):
    """Under CPU autocast the patched calls run fastdl's autocast kernels (float32 compute,
    the autocast dtype out, as torch's ops return), not torch's."""
    x, w, q = torch.randn(2, 4, 9, 7), torch.randn(3, 4, 3, 3), torch.randn(2, 2, 5, 8)
    with torch.autocast("cpu", dtype=dtype):
        direct = (
            fastdl.functional.conv2d(x, w),
            fastdl.functional.scaled_dot_product_attention(q, q, q),
        )
        expected = (ORIGINALS["conv2d"](x, w), ORIGINALS["scaled_dot_product_attention"](q, q, q))
        with FastdlOps() as ops, fastdl.patch():
            got = (F.conv2d(x, w), F.scaled_dot_product_attention(q, q, q))
    assert ops.names() == ["conv2d_forward", "sdpa_forward"]
    reference = (
        ORIGINALS["conv2d"](x.double(), w.double()),
        ORIGINALS["scaled_dot_product_attention"](q.double(), q.double(), q.double()),
    )
    for g, d, e, r in zip(got, direct, expected, reference):
        assert g.dtype == e.dtype == dtype and torch.equal(g, d)
        assert_close_to_reference(g, r, dtype, baseline=e)  # no worse than torch's own error


class Mixed(nn.Module):
    """Every patchable op through the torch.nn modules and functions a model would use."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(8)
        self.pool1 = nn.MaxPool1d(2)
        self.avg1 = nn.AvgPool1d(2, ceil_mode=True)
        self.conv2 = nn.Conv2d(2, 4, 3, padding="same")
        self.bn2 = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 24)

    def forward(self, x):  # x: (N, 3, 16)
        h = self.avg1(self.pool1(torch.relu(self.bn1(self.conv1(x)))))  # (N, 8, 4)
        img = h.reshape(h.shape[0], 2, 4, 4)
        img = F.avg_pool2d(F.max_pool2d(self.bn2(self.conv2(img)), 2, 1), 1)  # (N, 4, 3, 3)
        seq = self.norm(
            torch.cat([h, img.flatten(1)[:, :8, None].expand(-1, 8, 4)], 2).transpose(1, 2)
        )  # (N, 8, 8)
        q, k, v = self.proj(seq).reshape(seq.shape[0], 8, 3, 2, 4).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _patched(model):
    def run(*args):
        with fastdl.patch():
            return model(*args)

    return run, model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_model_outputs_and_gradients(dtype, train):
    """A model using every patched op: output, parameter and input gradients, running
    statistics equal torch's (float32 judged against a float64 reference)."""
    with FastdlOps() as ops:
        compare_model(Mixed(), _patched, lambda: (torch.randn(4, 3, 16),), dtype, train=train)
    forward_ops = {n for n in ops.names() if n.endswith("_forward")}
    assert forward_ops == {
        "conv2d_forward",
        "batch_norm_forward",
        "max_pool2d_forward",
        "avg_pool2d_forward",
        "layer_norm_forward",
        "sdpa_forward",
    }
    if train:
        assert "sdpa_backward" in ops.names() and "conv2d_backward" in ops.names()


def test_context_manager_undo_and_nesting():
    outer = fastdl.patch(ops=["layer_norm", "conv2d"])
    assert F.layer_norm is not ORIGINALS["layer_norm"] and F.conv2d is not ORIGINALS["conv2d"]
    assert F.batch_norm is ORIGINALS["batch_norm"]
    with fastdl.patch(ops=["layer_norm", "batch_norm"]) as inner:
        assert inner.active and F.batch_norm is not ORIGINALS["batch_norm"]
    assert not inner.active
    assert F.batch_norm is ORIGINALS["batch_norm"]
    assert F.layer_norm is not ORIGINALS["layer_norm"]  # the outer patch still holds it
    # Overlapping, undone out of order.
    second = fastdl.patch(ops="conv2d")
    outer.undo()
    assert F.layer_norm is ORIGINALS["layer_norm"] and F.conv2d is not ORIGINALS["conv2d"]
    second.undo()
    second.undo()  # twice: a no-op
    outer.undo()
    assert all(getattr(F, n) is fn for n, fn in ORIGINALS.items())
    assert "active=False" in repr(outer)


def test_stale_reference_passes_to_torch():
    """A reference to a wrapper kept past undo runs torch's function, uncounted."""
    with fastdl.patch(ops=["layer_norm"]):
        kept = F.layer_norm
    x = torch.randn(3, 5)
    with FastdlOps() as ops:
        out = kept(x, (5,))
    assert ops.names() == [] and fastdl.patch_stats().fastdl == {}
    assert torch.equal(out, ORIGINALS["layer_norm"](x, (5,)))


def test_ops_selection_errors():
    with pytest.raises(ValueError, match="ops.*relu"):
        fastdl.patch(ops=["layer_norm", "relu"])
    with pytest.raises(ValueError, match="ops"):
        fastdl.patch(ops=[])
    with fastdl.patch(ops="max_pool2d") as p:
        assert p.ops == ("max_pool2d",)
        assert [n for n in ORIGINALS if getattr(F, n) is not ORIGINALS[n]] == ["max_pool2d"]


class Traced(torch.Tensor):
    """A tensor subclass with a __torch_function__ override: fastdl must leave it to torch."""

    seen = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def _fallback_calls():
    """(label, function of no arguments making the call, reason fragment)."""
    x = torch.randn(2, 4, 9, 7)
    return [
        ("meta device", lambda: F.max_pool2d(x.to("meta"), 2), "device meta"),
        (
            "int64 pool",
            lambda: F.avg_pool1d(torch.arange(48).reshape(2, 3, 8), 2),
            "dtype torch.int64",
        ),
        ("subclass", lambda: F.avg_pool2d(x.as_subclass(Traced), 2), "subclass"),
        ("forward AD", lambda: _dual(lambda d: F.layer_norm(d, (7,))), "fastdl raised"),
        (
            "torch.func.grad",
            lambda: torch.func.grad(
                lambda t: F.batch_norm(t, None, None, training=True).square().sum()
            )(x),
            "torch.func",
        ),
    ]


def _dual(fn):
    """The tangent of ``fn`` at a random point along a random direction (forward AD)."""
    gen = torch.Generator().manual_seed(3)
    x, t = (torch.randn(2, 4, 9, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    with fwAD.dual_level():
        return fwAD.unpack_dual(fn(fwAD.make_dual(x, t))).tangent


@pytest.mark.parametrize(
    "index", range(len(_fallback_calls())), ids=[c[0] for c in _fallback_calls()]
)
def test_fallback_to_torch(index, caplog):
    """Calls fastdl cannot run give torch's result with no error, are counted with their
    reason and logged at debug level."""
    label, call, reason = _fallback_calls()[index]
    torch.manual_seed(5)
    with FastdlOps():  # as below (the mode changes how some formulas run: forward AD)
        expected = call()
    with caplog.at_level(logging.DEBUG, logger="fastdl.patch"), FastdlOps() as ops:
        with fastdl.patch() as p:
            torch.manual_seed(5)
            got = call()
    if "fastdl raised" not in reason:  # else fastdl's op was tried, and raised
        assert not [n for n in ops.names() if n.endswith("_forward")], f"{label}: fastdl ran"
    assert (got.shape, got.dtype, got.device) == (expected.shape, expected.dtype, expected.device)
    assert got.device.type == "meta" or torch.equal(got, expected)
    stats = p.stats()
    assert stats.fallbacks == 1 and stats.fastdl == {}, str(stats)
    ((op, why),) = stats.reasons
    assert reason in why, why
    assert any(op in r.getMessage() and why in r.getMessage() for r in caplog.records)
    assert op in str(stats) and why in str(stats)


@pytest.mark.parametrize(
    "call, args",
    [
        ("layer_norm", (torch.randn(3, 5), (4,))),
        ("layer_norm", (torch.randn(3, 5), (5,), torch.ones(5, dtype=torch.float64))),
        ("layer_norm", (None, (4,))),
        (
            "scaled_dot_product_attention",
            (
                torch.randn(2, 3, 4),
                torch.randn(2, 3, 4),
                torch.randn(2, 3, 4),
                torch.ones(3, 3, dtype=torch.bool),
                0.0,
                True,
            ),
        ),
        ("conv2d", (torch.randn(1, 4, 5, 5), torch.randn(2, 3, 3, 3))),
        ("max_pool2d", (torch.randn(1, 2, 5, 5), 2, 2, 2)),
        ("batch_norm", (torch.randn(1, 3), None, None, None, None, True)),
        (
            "scaled_dot_product_attention",
            (torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4), None, 1.5),
        ),
        ("avg_pool2d", ([1.0, 2.0], 2)),
    ],
)
def test_bad_arguments_raise_torchs_error(call, args):
    """Arguments torch rejects raise torch's own exception and message, patched or not."""
    with pytest.raises(Exception) as theirs:
        ORIGINALS[call](*args)
    with fastdl.patch(), pytest.raises(type(theirs.value)) as ours:
        getattr(F, call)(*args)
    assert str(ours.value) == str(theirs.value)
    assert ours.value.__cause__ is None and ours.value.__context__ is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "name, args",
    [
        ("max_pool1d", (torch.randn(2, 5, 11), 3, 2, 1)),
        ("max_pool2d", (torch.randn(2, 5, 9, 8), 3, 2, 1)),
        ("avg_pool1d", (torch.randn(2, 5, 11), 3, 2, 1)),
        ("avg_pool2d", (torch.randn(2, 5, 9, 8).contiguous(memory_format=torch.channels_last), 2)),
    ],
    ids=["max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d"],
)
def test_pooling_in_half_on_cpu_runs_fastdl(dtype, name, args):
    """fastdl's CPU pooling takes float16/bfloat16: the patch routes those calls to it, not
    to torch, and the result is torch's (the maxima exact, the averages rounded once)."""
    args = (args[0].to(dtype),) + args[1:]
    expected = getattr(F, name)(*args)
    with FastdlOps() as ops, fastdl.patch(ops=[name]) as p:
        got = getattr(F, name)(*args)
    assert p.stats().fastdl == {name: 1} and p.stats().fallbacks == 0
    assert ops.names() == [name[:3] + "_pool2d_forward"]
    assert got.dtype == dtype and got.stride() == expected.stride()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32])
def test_layer_norm_in_bfloat16_on_cpu_runs_fastdl(param_dtype):
    """fastdl's CPU layer_norm takes bfloat16, with bfloat16 or float32 (mixed precision, as
    autocast leaves a LayerNorm's parameters) weight and bias: the patch routes both to it."""
    x = torch.randn(4, 9, 7).bfloat16()
    w, b = torch.randn(7, dtype=param_dtype), torch.randn(7, dtype=param_dtype)
    expected = F.layer_norm(x, (7,), w, b)
    with fastdl.patch(ops=["layer_norm"]) as p:
        got = F.layer_norm(x, (7,), w, b)
    assert p.stats().fastdl == {"layer_norm": 1} and p.stats().fallbacks == 0
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_in_bfloat16_on_cpu_runs_fastdl(param_dtype, training):
    """fastdl's CPU batch_norm takes bfloat16 with bfloat16 or float32 parameters and running
    statistics: the patch routes both to it, and the running statistics update as torch's."""
    x = torch.randn(4, 6, 5, 3).bfloat16()
    w, b = torch.randn(6, dtype=param_dtype), torch.randn(6, dtype=param_dtype)
    rm, rv = torch.randn(6, dtype=param_dtype), torch.rand(6, dtype=param_dtype) + 0.5
    trm, trv = rm.clone(), rv.clone()
    expected = F.batch_norm(x, trm, trv, w, b, training)
    with fastdl.patch(ops=["batch_norm"]) as p:
        got = F.batch_norm(x, rm, rv, w, b, training)
    assert p.stats().fastdl == {"batch_norm": 1} and p.stats().fallbacks == 0
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(rm, trm, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(rv, trv, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_conv_and_attention_in_half_on_cpu_run_fastdl(dtype):
    """fastdl's CPU conv1d/conv2d and scaled_dot_product_attention take float16/bfloat16: the
    patch routes them to fastdl, with torch's results (both accumulate in float32)."""
    x1, w1 = torch.randn(2, 4, 9).to(dtype), torch.randn(3, 4, 3).to(dtype)
    x2, w2 = torch.randn(2, 4, 9, 7).to(dtype), torch.randn(3, 4, 3, 3).to(dtype)
    q, k, v = (torch.randn(2, 3, 5, 8).to(dtype) for _ in range(3))
    calls = [
        lambda: F.conv1d(x1, w1, padding=1),
        lambda: F.conv2d(x2, w2, stride=2),
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    ]
    expected = [call() for call in calls]
    with fastdl.patch(ops=["conv1d", "conv2d", "scaled_dot_product_attention"]) as p:
        got = [call() for call in calls]
    assert p.stats().fastdl == {"conv1d": 1, "conv2d": 1, "scaled_dot_product_attention": 1}
    assert p.stats().fallbacks == 0
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)


def test_patch_stats_accumulate_and_reset():
    x = torch.randn(2, 3, 5)
    with fastdl.patch(ops=["layer_norm"]) as first:
        F.layer_norm(x, (5,))
        F.layer_norm(x.to("meta"), (5,))
    with fastdl.patch(ops=["layer_norm"]) as second:
        F.layer_norm(x, (5,))
    assert first.stats().fastdl == {"layer_norm": 1} and first.stats().fallbacks == 1
    assert second.stats().fastdl == {"layer_norm": 1} and second.stats().fallbacks == 0
    total = fastdl.patch_stats()
    assert total.fastdl == {"layer_norm": 2} and total.fallback == {"layer_norm": 1}
    fastdl.reset_patch_stats()
    assert fastdl.patch_stats().fastdl == {} and fastdl.patch_stats().reasons == {}


def test_threads_nested_and_overlapping():
    """Threads patching random, overlapping sets of ops in nested and crossing orders, calling
    the ops meanwhile: every result is right, every call under a patch runs fastdl and is
    counted once, and torch's originals are back at the end."""
    ops = ("layer_norm", "conv2d", "max_pool2d", "batch_norm")
    x = torch.randn(2, 3, 6, 6)
    w = torch.randn(4, 3, 3, 3)
    expected = {
        "layer_norm": F.layer_norm(x, (6,)),
        "conv2d": F.conv2d(x, w),
        "max_pool2d": F.max_pool2d(x, 2),
        "batch_norm": F.batch_norm(x, None, None, training=True),
    }
    calls = {
        "layer_norm": lambda: F.layer_norm(x, (6,)),
        "conv2d": lambda: F.conv2d(x, w),
        "max_pool2d": lambda: F.max_pool2d(x, 2),
        "batch_norm": lambda: F.batch_norm(x, None, None, training=True),
    }
    errors, made = [], [0]
    count_lock = threading.Lock()

    def worker(seed):
        rng = random.Random(seed)
        try:
            for _ in range(40):
                first = fastdl.patch(ops=rng.sample(ops, rng.randint(1, len(ops))))
                second = fastdl.patch(ops=rng.sample(ops, rng.randint(1, len(ops))))
                handles = [first, second]
                rng.shuffle(handles)  # undo nested or crossing
                for name in first.ops:
                    torch.testing.assert_close(calls[name](), expected[name])
                with count_lock:
                    made[0] += len(first.ops)
                for h in handles:
                    h.undo()
        except Exception as exc:  # noqa: BLE001 (reported below, from the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert all(getattr(F, n) is fn for n, fn in ORIGINALS.items())
    stats = fastdl.patch_stats()
    assert sum(stats.fastdl.values()) == made[0] and stats.fallbacks == 0


def test_torch_compile_of_patched_model():
    """torch.compile(fullgraph=True) of a model while patched traces fastdl's ops (the graph
    holds them), gives eager's outputs and gradients, and compiles torch's again once undone."""
    model = Mixed()
    x = torch.randn(4, 3, 16, requires_grad=True)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with fastdl.patch():
        out = compiled(x)
        eager = model(x)
    assert {
        "fastdl.conv2d_forward",
        "fastdl.sdpa_forward",
        "fastdl.layer_norm_forward",
        "fastdl.batch_norm_forward",
    } <= graphs[0]
    assert_close_to_reference(out, eager, torch.float32)
    compiled(x)  # unpatched: the guards on torch.nn.functional's attributes recompile
    assert len(graphs) == 2 and not any(t.startswith("fastdl.") for t in graphs[1])
    with fastdl.patch():
        check_compile(model, x)  # aot_eager: the fake kernels and autograd, against eager


_FIRST_COMPILE = """
import torch, fastdl
import torch.nn.functional as F
targets = set()
def backend(gm, example_inputs):
    targets.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    return gm.forward
with fastdl.patch():  # torch.compile first used while patched, in a fresh process
    f = torch.compile(lambda x: F.max_pool2d(F.layer_norm(x, (6,)), 2), backend=backend,
                      fullgraph=True)
    f(torch.randn(2, 3, 6, 6))
print(sorted(t for t in targets if t.startswith("fastdl.")))
"""


def test_first_torch_compile_inside_patch():
    """torch.compile's first use in a process, inside a patch, still traces to fastdl's ops
    (its table of torch functions is built from torch's originals, not the wrappers)."""
    r = subprocess.run(
        [sys.executable, "-c", _FIRST_COMPILE], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[-2] == "['fastdl.layer_norm_forward', 'fastdl.max_pool2d_forward']"
