"""Differential fuzzing of conv1d/conv2d and max/avg pooling (functional and modules)."""

import torch
import torch.nn.functional as F
from torch import nn

import fastdl.functional as FF
import fastdl.nn as fnn
from fuzzlib import Case, Problem, check, module_pair, tensor


def _spatial(case: Case, dims: int, hi: int = 9) -> list[int]:
    return [case.size(f"in{i}", hi, zero=0.03) for i in range(dims)]


def _ints(case: Case, name: str, dims: int, lo: int, hi: int) -> list[int]:
    if case.flag(f"{name}_same_for_all", 0.5):
        return [case.randint(name, lo, hi)] * dims
    return [case.randint(f"{name}{i}", lo, hi) for i in range(dims)]


def _conv(case: Case, dims: int) -> None:
    groups = case.choice("groups", [1, 1, 1, 2, 3, "depthwise"])
    per_group = case.randint("in_per_group", 1, 3)
    if groups == "depthwise":
        groups = case.randint("depthwise_channels", 1, 4)
        per_group = 1
    c_in = groups * per_group
    c_out = groups * case.randint("out_per_group", 1, 3)
    kernel = _ints(case, "kernel", dims, 1, 4)
    stride = _ints(case, "stride", dims, 1, 3)
    dilation = _ints(case, "dilation", dims, 1, 2)
    padding = case.choice("padding", ["int", "int", "tuple", "same", "valid"])
    if padding == "same":
        stride = [1] * dims
    elif padding == "int":
        padding = case.randint("padding_int", 0, 2)
    elif padding == "tuple":
        padding = _ints(case, "pad", dims, 0, 2)
    batched = case.flag("batched", 0.85)
    shape = ([case.size("N", 3)] if batched else []) + [c_in] + _spatial(case, dims)
    t = {"x": tensor(case, "x", shape), "w": tensor(case, "w", [c_out, per_group] + kernel)}
    if case.flag("bias", 0.7):
        t["b"] = tensor(case, "b", [c_out], layouts=["contiguous", "sliced"])
    if case.flag("module", 0.35):
        mode = case.choice("padding_mode", ["zeros", "reflect", "replicate", "circular"])
        kind = nn.Conv1d if dims == 1 else nn.Conv2d
        ref = kind(c_in, c_out, kernel, stride, padding, dilation, groups, "b" in t, mode)

        def run(side, dtype, v):
            m, params = module_pair(ref, getattr(fnn, kind.__name__), dtype, side)
            with torch.no_grad():
                m.weight.copy_(v["w"])
                if "b" in v:
                    m.bias.copy_(v["b"])
            return m(v["x"]), params

        check(case, Problem(t, run, grad=["x"]))
        return

    def run(side, dtype, v):
        if side == "fastdl":
            fn = FF.conv1d if dims == 1 else FF.conv2d
        else:
            fn = F.conv1d if dims == 1 else F.conv2d
        return fn(v["x"], v["w"], v.get("b"), stride, padding, dilation, groups), {}

    check(case, Problem(t, run, grad=list(t)))


def test_conv1d(case_index, fuzz_long):
    _conv(Case("conv1d", case_index, fuzz_long), 1)


def test_conv2d(case_index, fuzz_long):
    _conv(Case("conv2d", case_index, fuzz_long), 2)


def _pool_outputs(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size along one dim."""
    out = (n + 2 * p - d * (k - 1) - 1 + ((s - 1) if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return max(out, 0)


def _pool(case: Case, dims: int, kind: str) -> None:
    kernel = _ints(case, "kernel", dims, 1, 4)
    stride = None if case.flag("default_stride", 0.3) else _ints(case, "stride", dims, 1, 3)
    bad = case.flag("bad_padding", 0.05)
    padding = [case.randint(f"pad{i}", 0, k // 2 + (1 if bad else 0)) for i, k in enumerate(kernel)]
    ceil_mode = case.flag("ceil_mode")
    batched = case.flag("batched", 0.85)
    shape = (
        ([case.size("N", 3)] if batched else []) + [case.size("C", 4)] + _spatial(case, dims, 11)
    )
    t = {"x": tensor(case, "x", shape)}
    module = case.flag("module", 0.3)
    name = f"{kind}_pool{dims}d"
    if kind == "max":
        dilation = _ints(case, "dilation", dims, 1, 2)
        indices = case.flag("return_indices")
        args = (kernel, stride, padding, dilation, ceil_mode, indices)
        cls = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
    else:
        include_pad = case.flag("count_include_pad")
        divisor = case.choice("divisor_override", [None, None, 1, 3]) if dims == 2 else None
        args = (kernel, stride, padding, ceil_mode, include_pad) + ((divisor,) if dims == 2 else ())
        cls = nn.AvgPool1d if dims == 1 else nn.AvgPool2d

    # A window of only padding (dilation stepping over the whole input): torch returns an index
    # past the plane and its backward adds that gradient to the next plane's element (found by
    # this fuzzer); fastdl's gradient goes nowhere. Only the forward is compared there.
    stride_ = stride or kernel
    dil = dilation if kind == "max" else [1] * dims
    empty_window = any(
        not any(0 <= o * s - p + j * d < n for j in range(k))
        for n, k, s, p, d in zip(shape[-dims:], kernel, stride_, padding, dil)
        for o in range(_pool_outputs(n, k, s, p, d, ceil_mode))
    )

    def run(side, dtype, v):
        if module:
            # nn.MaxPool's positional order is (..., dilation, return_indices, ceil_mode)
            m = (
                cls(*args[:4], ceil_mode=ceil_mode, return_indices=indices)
                if kind == "max"
                else cls(*args)
            )
            m = getattr(fnn, cls.__name__).from_torch(m) if side == "fastdl" else m
            return m(v["x"]), {}
        return getattr(FF if side == "fastdl" else F, name)(v["x"], *args), {}

    check(case, Problem(t, run, grad=["x"], compare_grads=not (kind == "max" and empty_window)))


def test_max_pool1d(case_index, fuzz_long):
    _pool(Case("max_pool1d", case_index, fuzz_long), 1, "max")


def test_max_pool2d(case_index, fuzz_long):
    _pool(Case("max_pool2d", case_index, fuzz_long), 2, "max")


def test_avg_pool1d(case_index, fuzz_long):
    _pool(Case("avg_pool1d", case_index, fuzz_long), 1, "avg")


def test_avg_pool2d(case_index, fuzz_long):
    _pool(Case("avg_pool2d", case_index, fuzz_long), 2, "avg")
