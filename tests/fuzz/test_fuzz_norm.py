"""Differential fuzzing of layer_norm and batch_norm (functional and modules) against torch."""

import math

import torch
import torch.nn.functional as F
from torch import nn

import fastdl.functional as FF
import fastdl.nn as fnn
from fuzzlib import Case, Problem, check, module_pair, tensor

MAX_ELEMENTS = 30000


def _shape(case: Case, nd: int, large_last: int = 0) -> list[int]:
    shape = [
        case.size(f"dim{i}", 6 if nd > 2 else 9, large=large_last if i == nd - 1 else 0)
        for i in range(nd)
    ]
    while math.prod(shape) > MAX_ELEMENTS:
        shape[0] = max(1, shape[0] // 2)
        if math.prod(shape) > MAX_ELEMENTS:
            shape[-1] = max(1, shape[-1] // 2)
    return shape


def _layer_norm_problem(case: Case, module: bool) -> Problem:
    nd = case.randint("ndim", 1, 4)
    shape = _shape(case, nd, large_last=5000)
    k = case.randint("normalized_dims", 1, min(nd, 3))
    normalized = shape[nd - k :]
    if case.flag("bad_normalized_shape", 0.06):
        normalized = normalized[:-1] + [normalized[-1] + 1]
    eps = case.choice("eps", [1e-5, 1e-5, 1e-12, 0.0, 0.5, -1e-6])
    t = {"x": tensor(case, "x", shape)}
    affine = case.flag("elementwise_affine", 0.7)
    bias = case.flag("bias", 0.7)
    if affine:
        t["w"] = tensor(case, "w", normalized, layouts=["contiguous", "sliced"])
        if bias:
            t["b"] = tensor(case, "b", normalized, layouts=["contiguous", "sliced"])
    grad = list(t)
    if module:
        torch.manual_seed(case.seed)
        ref = nn.LayerNorm(normalized, eps=eps, elementwise_affine=affine, bias=bias)

        def run(side, dtype, v):
            m, params = module_pair(ref, fnn.LayerNorm, dtype, side)
            with torch.no_grad():  # the generated values instead of ones / zeros
                if affine:
                    m.weight.copy_(v["w"])
                    if bias:
                        m.bias.copy_(v["b"])
            if side != "fastdl":
                return _torch_layer_norm(v["x"], normalized, m.weight, m.bias, eps), params
            return m(v["x"]), params

        return Problem(
            {"x": t["x"], **{k_: g for k_, g in t.items() if k_ != "x"}},
            run,
            grad=["x"],
            non_finite_alike=eps == 0.0,
        )

    def run(side, dtype, v):
        fn = FF.layer_norm if side == "fastdl" else _torch_layer_norm
        return fn(v["x"], normalized, v.get("w"), v.get("b"), eps), {}

    return Problem(t, run, grad=grad, non_finite_alike=eps == 0.0)


def _torch_layer_norm(x, normalized, w, b, eps):
    """torch's layer_norm, but for rows of one element: there x - mean is exactly 0 (the output
    is the bias), where torch's one-pass variance of huge values (1e30) is not 0 and its
    weight gradient is NaN in float32 and ~1e15 in float64 (found by this fuzzer, cases 881,
    337, 385, 400): the equations' composition, whose variance is exact there."""
    if math.prod(normalized) != 1 or list(x.shape[x.dim() - len(normalized) :]) != list(normalized):
        return F.layer_norm(x, normalized, w, b, eps)  # and torch's errors for a bad shape
    dims = tuple(range(x.dim() - len(normalized), x.dim()))
    mean = x.mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    y = y * w if w is not None else y
    return y + b if b is not None else y


def test_layer_norm(case_index, fuzz_long):
    case = Case("layer_norm", case_index, fuzz_long)
    check(case, _layer_norm_problem(case, module=False))


def test_layer_norm_module(case_index, fuzz_long):
    case = Case("LayerNorm", case_index, fuzz_long)
    check(case, _layer_norm_problem(case, module=True))


def _batch_norm_shape(case: Case, nd: int) -> list[int]:
    shape = (
        [case.size("N", 6, large=600)]
        + [case.size("C", 5)]
        + [case.size(f"s{i}", 5) for i in range(nd - 2)]
    )
    while math.prod(shape) > MAX_ELEMENTS:
        shape[0] = max(1, shape[0] // 2)
    return shape


def _for_torch_batch_norm(x: torch.Tensor) -> torch.Tensor:
    """x as torch's CPU batch_norm takes it correctly: torch 2.14's backward is wrong for an
    input that passes as channels-last only through a size-1 spatial dim's free stride (e.g.
    (25, 1, 5, 5) for (6, 5, 1, 5)) with an NCHW output gradient (found by this fuzzer, cases
    311 and 786; see test_batch_norm.py::test_ambiguous_channels_last_strides). A contiguous
    copy is the same function of the same leaf."""
    if x.dim() not in (4, 5):
        return x
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    canonical = torch.empty(x.shape, memory_format=fmt).stride()
    ambiguous = (
        x.is_contiguous(memory_format=fmt) and not x.is_contiguous() and x.stride() != canonical
    )
    return x.contiguous() if ambiguous else x


def test_batch_norm(case_index, fuzz_long):
    case = Case("batch_norm", case_index, fuzz_long)
    nd = case.randint("ndim", 1, 5) if case.flag("maybe_1d", 0.1) else case.randint("ndim", 2, 5)
    shape = _batch_norm_shape(case, nd) if nd >= 2 else [case.size("N", 4, zero=0.5)]
    c = shape[1] if nd >= 2 else case.randint("C", 0, 3)
    training = case.flag("training", 0.6)
    running = case.flag("running_stats", 0.7) or not training
    t = {"x": tensor(case, "x", shape)}
    for name in ("w", "b"):
        if case.flag(f"has_{name}", 0.7):
            t[name] = tensor(case, name, [c], layouts=["contiguous", "sliced"])
    if running:
        t["rm"] = tensor(case, "rm", [c], layouts=["contiguous"], specials=False)
        t["rv"] = tensor(case, "rv", [c], layouts=["contiguous"], low=0.5, high=2.0, specials=False)
    momentum = case.choice("momentum", [0.1, 0.1, 0.0, 1.0, 0.7])
    eps = case.choice("eps", [1e-5, 1e-5, 1e-3, 0.5] + ([] if training else [0.0]))

    def run(side, dtype, v):
        if side == "fastdl":
            return FF.batch_norm(
                v["x"], v.get("rm"), v.get("rv"), v.get("w"), v.get("b"), training, momentum, eps
            ), {}
        # torch 2.14's CPU backward reads a non-contiguous weight as if it were contiguous (wrong
        # input gradient; found by this fuzzer, see test_batch_norm.py::test_strided_weight): give
        # torch a contiguous copy, which is the same function of the same leaf.
        w = v.get("w")
        w = None if w is None else w.contiguous()
        return F.batch_norm(
            _for_torch_batch_norm(v["x"]),
            v.get("rm"),
            v.get("rv"),
            w,
            v.get("b"),
            training,
            momentum,
            eps,
        ), {}

    check(
        case,
        Problem(
            t,
            run,
            grad=[k for k in ("x", "w", "b") if k in t],
            state=["rm", "rv"] if running else [],
        ),
    )


def test_batch_norm_module(case_index, fuzz_long):
    case = Case("BatchNorm", case_index, fuzz_long)
    nd = case.choice("ndim", [2, 3, 4, 5])
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[nd]
    shape = _batch_norm_shape(case, nd)
    c = shape[1]
    affine = case.flag("affine", 0.7)
    track = case.flag("track_running_stats", 0.7)
    momentum = case.choice("momentum", [0.1, None, 0.5])
    training = case.flag("training", 0.6) or not track
    torch.manual_seed(case.seed)
    ref = kind(c, eps=1e-5, momentum=momentum, affine=affine, track_running_stats=track)
    with torch.no_grad():
        if affine:
            ref.weight.normal_()
            ref.bias.normal_()
        if track:
            ref.running_mean.normal_()
            ref.running_var.uniform_(0.5, 2.0)
            ref.num_batches_tracked.fill_(3)
    ref.train(training)

    def run(side, dtype, v):
        m, params = module_pair(ref, getattr(fnn, kind.__name__), dtype, side)
        out = m(v["x"] if side == "fastdl" else _for_torch_batch_norm(v["x"]))
        state = (
            [m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()]
            if track
            else []
        )
        return (out, *state), params

    check(case, Problem({"x": tensor(case, "x", shape)}, run, grad=["x"]))
