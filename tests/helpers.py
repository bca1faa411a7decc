"""Test helpers every fastdl op family reuses.

Parametrisation
    ``DEVICES`` / ``devices()``      cpu always; cuda marked ``cuda`` and skipped without a GPU
                                     or without fastdl's CUDA kernels; cuda_sim (the CUDA
                                     kernels in the emulator, on CPU tensors: the test gets
                                     device "cpu" and runs inside ``fastdl.testing.cuda_sim()``)
                                     marked ``cuda_sim``, run by ``scripts/test_cuda_sim.sh``.
    ``cuda_devices()``               cuda and cuda_sim only, for CUDA-specific tests.
    ``dtypes_for(device)``           float32, float64 (+ float16, bfloat16 on CUDA).
    ``DEVICE_DTYPES`` / ``device_dtypes()``  every (device, dtype) pair, marks included.

Checks
    ``assert_close_to_reference``    per-dtype tolerances (float64 tight, float32 ~1e-5); half
                                     types judged against torch's own half-precision error vs a
                                     float64 reference (the flash-attention convention).
    ``outputs_and_grads``            run a function forward and backward on fresh leaf copies.
    ``compare_with_torch``           forward and every gradient of a fastdl function vs torch's.
    ``check_gradcheck`` / ``assert_no_double_backward``   float64 gradcheck / gradgradcheck.
    ``check_opcheck``                ``torch.library.opcheck``, every test SUCCESS.
    ``check_compile`` / ``check_compile_module``   ``torch.compile(fullgraph=True)`` == eager.
    ``assert_raises_naming``         raises ``exc_type`` and the message names the argument.
    ``assert_unchanged``             the inputs are bitwise the same after a call.

The op contract (``op_contract.py``)
    ``OpContract``                   the checks above that every op needs, under one name each
                                     (test_opcheck, test_compile, test_gradcheck,
                                     test_no_double_backward, test_inputs_unchanged,
                                     test_empty_inputs, test_noncontiguous, test_bad_dtype),
                                     parametrised over these devices and dtypes. Each op's test
                                     file subclasses it (``class TestLayerNormContract``) and
                                     supplies the fastdl function, the reference and each check's
                                     ``Sample`` inputs; write those checks there, not again.

Typical op test::

    @pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
    def test_forward(device, dtype):
        x = torch.randn(3, 5, device=device, dtype=dtype)
        assert_close_to_reference(fastdl_op(x), torch_op(x), dtype)
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import pytest
import torch

import fastdl
import fastdl.testing

__all__ = [
    "CUDA_AVAILABLE",
    "CUDA_SIM_AVAILABLE",
    "DEVICES",
    "cuda_devices",
    "DEVICE_DTYPES",
    "HALF_DTYPES",
    "TOLERANCES",
    "assert_close_to_reference",
    "assert_close_with_nans",
    "assert_no_double_backward",
    "assert_raises_naming",
    "assert_unchanged",
    "check_compile",
    "check_compile_module",
    "check_gradcheck",
    "check_opcheck",
    "clone_tree",
    "compare_with_torch",
    "device_dtypes",
    "devices",
    "dtypes_for",
    "outputs_and_grads",
]

# ---------------------------------------------------------------------------------------------
# Devices and dtypes
# ---------------------------------------------------------------------------------------------

#: True when CUDA tests can run: a GPU is visible and fastdl was built with its CUDA kernels.
CUDA_AVAILABLE = torch.cuda.is_available() and bool(fastdl.build_info()["cuda"])
_CUDA_SKIP_REASON = (
    "no CUDA device" if not torch.cuda.is_available() else "fastdl was built without CUDA kernels"
)

#: True when the emulated CUDA tests run: the emulator is built and the run asked for them
#: (``FASTDL_CUDA_SIM_TESTS=1``, as ``scripts/test_cuda_sim.sh`` sets under AddressSanitizer).
CUDA_SIM_AVAILABLE = (
    fastdl.testing.cuda_sim_available() and os.environ.get("FASTDL_CUDA_SIM_TESTS") == "1"
)
_CUDA_SIM_SKIP_REASON = (
    "fastdl was built without the CUDA emulator (FASTDL_CUDA_SIM=ON)"
    if not fastdl.testing.cuda_sim_available()
    else "emulated CUDA tests run with scripts/test_cuda_sim.sh"
)

HALF_DTYPES = (torch.float16, torch.bfloat16)
ALL_DEVICES = ("cpu", "cuda", "cuda_sim")


def _device_marks(device: str) -> list:
    if device == "cuda":
        return [pytest.mark.cuda, pytest.mark.skipif(not CUDA_AVAILABLE, reason=_CUDA_SKIP_REASON)]
    if device == "cuda_sim":
        return [
            pytest.mark.cuda_sim,
            pytest.mark.skipif(not CUDA_SIM_AVAILABLE, reason=_CUDA_SIM_SKIP_REASON),
        ]
    return []


class SimDevice(str):
    """The cuda_sim test device. To torch it is "cpu" (the emulator runs on CPU tensors), but it
    compares equal only to "cuda_sim": a test's ``device == "cpu"`` branch (CPU-kernel
    behaviour) and ``device == "cuda"`` branch (a real GPU) both stay untaken."""

    def __new__(cls):
        return super().__new__(cls, "cpu")

    def __eq__(self, other):
        return isinstance(other, str) and str.__eq__(other, "cuda_sim")

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash("cuda_sim")

    def __repr__(self):
        return "'cuda_sim'"


def tensor_device(device: str) -> str:
    """The value tests get for a test device (cuda_sim: a :class:`SimDevice`, CPU tensors)."""
    return SimDevice() if device == "cuda_sim" else device


def devices(device_list: Sequence[str] = ALL_DEVICES) -> list:
    """``pytest.param`` for every device: "cpu" always, "cuda" marked ``cuda`` and skipped when
    it cannot run, "cuda_sim" (value "cpu", see the module docstring) marked ``cuda_sim``. Use
    as ``@pytest.mark.parametrize("device", devices())``."""
    return [pytest.param(tensor_device(d), marks=_device_marks(d), id=d) for d in device_list]


DEVICES = devices()


def cuda_devices() -> list:
    """:func:`devices` for tests of CUDA-only behaviour: cuda and cuda_sim."""
    return devices(("cuda", "cuda_sim"))


def dtypes_for(device: str, cpu_half: bool = False) -> list[torch.dtype]:
    """The dtypes fastdl supports on ``device``: float32 and float64 everywhere, and float16
    and bfloat16 on CUDA (and cuda_sim), and on the CPU for ops whose CPU kernels take them
    (``cpu_half``)."""
    base = [torch.float32, torch.float64]
    on_cuda = device == "cuda_sim" or str(device).startswith("cuda")
    return base + list(HALF_DTYPES) if on_cuda or cpu_half else base


def device_dtypes(
    device_list: Sequence[str] = ALL_DEVICES,
    only: Optional[Iterable[torch.dtype]] = None,
    cpu_half: bool = False,
) -> list:
    """``pytest.param(device, dtype)`` for every supported pair (ids like ``cpu-float32``),
    CUDA ones marked and skipped as in :func:`devices`. ``only`` restricts the dtypes;
    ``cpu_half`` adds float16/bfloat16 on the CPU (see :func:`dtypes_for`)."""
    params = []
    for d in device_list:
        for dt in dtypes_for(d, cpu_half):
            if only is None or dt in only:
                params.append(
                    pytest.param(
                        tensor_device(d),
                        dt,
                        marks=_device_marks(d),
                        id=f"{d}-{str(dt).removeprefix('torch.')}",
                    )
                )
    return params


DEVICE_DTYPES = device_dtypes()

# ---------------------------------------------------------------------------------------------
# Comparison with a reference
# ---------------------------------------------------------------------------------------------

#: (rtol, atol) when ``expected`` is torch's result in the same dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-5, 1e-5),
    # Only used when no torch half baseline is given (a fixed, looser tolerance).
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

#: Absolute slack added to "2 x torch's error" for half types, relative to the reference's
#: magnitude (max(1, max|expected|)).
HALF_ATOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _max_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    if not ref.numel():
        return 0.0
    err = (a.double() - ref).abs().max().item()
    return err if err == err else float("inf")  # NaN is never close


def assert_close_to_reference(
    actual: Optional[torch.Tensor],
    expected: Optional[torch.Tensor],
    dtype: Optional[torch.dtype] = None,
    *,
    baseline: Optional[torch.Tensor] = None,
    name: str = "output",
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
) -> None:
    """Assert fastdl's ``actual`` (computed in ``dtype``) matches the reference ``expected``.

    Without ``baseline``: ``expected`` is torch's result in the same dtype (or a float64
    reference) and the tolerances are :data:`TOLERANCES` (float64 tight, float32 ~1e-5)
    unless ``rtol``/``atol`` are given.

    With ``baseline`` (the flash-attention convention): ``expected`` is a high-precision
    reference (torch on float64 copies of the inputs) and ``baseline`` is torch's own result
    in ``dtype``. fastdl's error may be at most twice torch's plus a small slack,
    ``max|actual - expected| <= 2 * max|baseline - expected| + atol * max(1, max|expected|)``.
    float16/bfloat16 are judged by this rule alone (``atol`` from :data:`HALF_ATOL`); float32
    passes when it is within :data:`TOLERANCES` of ``baseline`` *or* meets this rule, so
    cases where torch's float32 result is itself noisy (ill-conditioned inputs) do not fail.

    ``None`` on both sides (e.g. a gradient that is not computed) passes.
    """
    if actual is None or expected is None:
        assert actual is None and expected is None, (
            f"{name}: one side is None (actual={type(actual).__name__}, "
            f"expected={type(expected).__name__})"
        )
        return
    dtype = dtype or actual.dtype
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    assert actual.device.type == expected.device.type, (
        f"{name}: device {actual.device} != {expected.device}"
    )
    default_rtol, default_atol = TOLERANCES[dtype]
    rtol = default_rtol if rtol is None else rtol
    if baseline is not None and dtype != torch.float64:
        assert baseline.shape == expected.shape, f"{name}: baseline shape {tuple(baseline.shape)}"
        ref = expected.double()
        err, torch_err = _max_error(actual, ref), _max_error(baseline, ref)
        scale = max(1.0, ref.abs().max().item() if ref.numel() else 1.0)
        slack = (atol if atol is not None else HALF_ATOL.get(dtype, default_atol)) * scale
        if err <= 2 * torch_err + slack:
            return
        if dtype in HALF_DTYPES:
            raise AssertionError(
                f"{name} ({dtype}): max error {err:.3g} vs the float64 reference "
                f"exceeds 2 x torch's {torch_err:.3g} + {slack:.3g}"
            )
        expected = baseline  # float32: fall through to the plain comparison with torch
    torch.testing.assert_close(
        actual.to(expected.dtype) if dtype in HALF_DTYPES else actual,
        expected,
        rtol=rtol,
        atol=default_atol if atol is None else atol,
        equal_nan=True,
        check_dtype=dtype not in HALF_DTYPES,
        msg=lambda m: (
            f"{name} ({dtype}): {m}"
            + (
                f"\n(and its error vs the float64 reference, {err:.3g}, exceeds 2 x torch's "
                f"{torch_err:.3g} + {slack:.3g})"
                if baseline is not None and dtype != torch.float64
                else ""
            )
        ),
    )


def assert_close_with_nans(
    actual: torch.Tensor,
    baseline: torch.Tensor,
    expected: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    *,
    name: str = "output",
) -> None:
    """NaN exactly where torch's ``baseline`` (its result in ``dtype``) has NaN, and the other
    elements close: to ``baseline`` for float32/float64 (``torch.testing.assert_close``), and for
    float16/bfloat16 by :func:`assert_close_to_reference`'s rule against ``expected``, the
    float64 reference (torch rounds to half where fastdl accumulates in float), whose NaN
    positions must be the same."""
    dtype = dtype or actual.dtype
    assert actual.shape == baseline.shape, (
        f"{name}: shape {tuple(actual.shape)} != {tuple(baseline.shape)}"
    )
    assert torch.equal(actual.isnan(), baseline.isnan()), (
        f"{name} ({dtype}): NaN positions differ from torch's"
    )
    if dtype not in HALF_DTYPES:
        torch.testing.assert_close(
            actual, baseline, equal_nan=True, msg=lambda m: f"{name} ({dtype}): {m}"
        )
        return
    assert expected is not None, f"{name}: half types are judged against a float64 reference"
    assert torch.equal(expected.isnan(), baseline.isnan()), (
        f"{name}: the float64 reference's NaN positions"
    )
    keep = ~baseline.isnan()
    assert_close_to_reference(
        actual[keep], expected[keep], dtype, baseline=baseline[keep], name=name
    )


# ---------------------------------------------------------------------------------------------
# Running functions
# ---------------------------------------------------------------------------------------------


def clone_tree(obj: Any) -> Any:
    """Deep copy of nested lists/tuples/dicts of tensors: each tensor cloned with its strides
    (non-contiguous stays non-contiguous) and its requires_grad as a fresh leaf."""
    if isinstance(obj, torch.Tensor):
        try:
            out = torch.empty_strided(obj.size(), obj.stride(), dtype=obj.dtype, device=obj.device)
            with torch.no_grad():
                out.copy_(obj.detach())
        except RuntimeError:  # overlapping strides (an expanded tensor): copy contiguously
            out = obj.detach().clone()
        return out.requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tree(o) for o in obj)
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    return obj


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def outputs_and_grads(fn: Callable, args: Sequence, grad_output: Optional[torch.Tensor] = None):
    """Run ``fn(*copies)`` on fresh leaf copies of ``args`` (see :func:`clone_tree`) and, when
    the output requires grad, backward ``grad_output`` (ones by default) through it.

    Returns ``(output, grads, copies)``: ``grads[i]`` is the gradient of the i-th argument
    (None when it is not a tensor requiring grad); ``copies`` lets a test look at arguments
    the function changed in place.
    """
    copies = clone_tree(list(args))
    out = fn(*copies)
    first = out[0] if isinstance(out, (tuple, list)) else out
    grads = [None] * len(copies)
    if first.requires_grad:
        first.backward(torch.ones_like(first) if grad_output is None else grad_output)
        grads = [
            a.grad if isinstance(a, torch.Tensor) and a.requires_grad else None for a in copies
        ]
    return out, grads, copies


def _upcast(obj: Any) -> Any:
    """float64 copies of every floating tensor in ``obj`` (leaves keep requires_grad)."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return obj
        return obj.detach().double().requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_upcast(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _upcast(v) for k, v in obj.items()}
    return obj


def compare_with_torch(
    fastdl_fn: Callable,
    torch_fn: Callable,
    args: Sequence,
    dtype: torch.dtype,
    *,
    grad_output: Optional[torch.Tensor] = None,
    baseline_args: Optional[Sequence] = None,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
):
    """Forward and every gradient of ``fastdl_fn(*args)`` against ``torch_fn(*args)``.

    Both run on their own fresh copies of ``args`` (tensors requiring grad get gradients),
    backward the same ``grad_output`` (random by default) through the first output, and every
    output tensor and argument gradient is compared with :func:`assert_close_to_reference`.
    float64 is compared with torch directly; float32 and half dtypes with a float64 reference
    (``torch_fn`` on float64 copies) and torch's result on ``baseline_args`` (default ``args``)
    as the baseline, by the rules of :func:`assert_close_to_reference`.

    Returns ``(fastdl_out, torch_out, fastdl_args, torch_args)`` (torch's in ``dtype``; the
    argument copies each side ran on, e.g. running statistics it updated) for further checks.
    """
    if grad_output is None:
        with torch.no_grad():
            probe = torch_fn(*clone_tree(list(baseline_args or args)))
        probe = probe[0] if isinstance(probe, (tuple, list)) else probe
        grad_output = torch.randn(probe.shape, dtype=probe.dtype, device=probe.device)
    out, grads, our_args = outputs_and_grads(fastdl_fn, args, grad_output)
    base_out, base_grads, torch_args = outputs_and_grads(
        torch_fn, baseline_args or args, grad_output
    )
    if dtype == torch.float64:  # torch in float64 is the reference; no baseline
        ref_out, ref_grads = base_out, base_grads
        bases, base_grads = [None] * len(_tensors(ref_out)), [None] * len(args)
    else:  # float64 reference, torch in `dtype` as the baseline (see assert_close_to_reference)
        ref_out, ref_grads, _ = outputs_and_grads(
            torch_fn, _upcast(list(args)), grad_output.double()
        )
        bases = _tensors(base_out)
    outs, refs = _tensors(out), _tensors(ref_out)
    assert len(outs) == len(refs), f"{len(outs)} outputs vs torch's {len(refs)}"
    for i, (a, e, b) in enumerate(zip(outs, refs, bases)):
        assert_close_to_reference(a, e, dtype, baseline=b, name=f"output {i}", rtol=rtol, atol=atol)
    for i, (g, e, b) in enumerate(zip(grads, ref_grads, base_grads)):
        assert_close_to_reference(
            g, e, dtype, baseline=b, name=f"gradient of argument {i}", rtol=rtol, atol=atol
        )
    return out, base_out, our_args, torch_args


def check_gradcheck(fn: Callable, inputs: Sequence, **kwargs) -> None:
    """``torch.autograd.gradcheck`` of ``fn`` at float64 ``inputs`` (those to differentiate
    require grad). Extra keyword arguments go to gradcheck."""
    for t in _tensors(inputs):
        assert not t.is_floating_point() or t.dtype == torch.float64, "gradcheck wants float64"
    assert torch.autograd.gradcheck(fn, tuple(inputs), **kwargs)


def assert_no_double_backward(fn: Callable, inputs: Sequence) -> None:
    """For ops without double backward: ``gradgradcheck`` must raise a RuntimeError whose
    message says double backward is not supported (never a silent wrong second derivative)."""
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.gradgradcheck(fn, tuple(inputs))


def check_opcheck(op, args: Sequence, kwargs: Optional[dict] = None, **opcheck_kwargs) -> dict:
    """``torch.library.opcheck`` of ``op`` (an OpOverload or OpOverloadPacket) on ``args``;
    asserts every test (schema, autograd registration, fake tensor, aot dispatch) is SUCCESS.
    Give some arguments ``requires_grad=True`` to exercise autograd."""
    results = torch.library.opcheck(
        op, tuple(args), kwargs, raise_exception=False, **opcheck_kwargs
    )
    failed = {k: v for k, v in results.items() if v != "SUCCESS"}
    assert not failed, f"opcheck of {op} failed: {failed}"
    return results


def _compare_trees(actual, expected, what: str, rtol: float, atol: float) -> None:
    a, e = _tensors(actual), _tensors(expected)
    assert len(a) == len(e), f"{what}: {len(a)} tensors vs {len(e)}"
    for i, (x, y) in enumerate(zip(a, e)):
        torch.testing.assert_close(
            x, y, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}[{i}]: {m}"
        )


def check_compile(
    fn: Callable,
    *args,
    backend: str = "aot_eager",
    rtol: float = 1e-5,
    atol: float = 1e-6,
    dynamic: Optional[bool] = None,
):
    """``torch.compile(fn, fullgraph=True)`` gives eager's outputs, eager's gradients (for args
    requiring grad, with a ones gradient on the first output) and the same in-place changes to
    the arguments. Each run gets its own copies of ``args``. ``backend="aot_eager"`` (the
    default) traces through the fake kernels and autograd quickly; "inductor" also generates code.
    Returns the compiled output."""
    torch._dynamo.reset()
    eager_out, eager_grads, eager_args = outputs_and_grads(fn, args)
    compiled = torch.compile(fn, fullgraph=True, backend=backend, dynamic=dynamic)
    comp_out, comp_grads, comp_args = outputs_and_grads(compiled, args)
    _compare_trees(comp_out, eager_out, "compiled output", rtol, atol)
    for i, (g, eg) in enumerate(zip(comp_grads, eager_grads)):
        assert (g is None) == (eg is None), (
            f"gradient of arg {i}: compiled {g is None}, eager {eg is None}"
        )
        if g is not None:
            _compare_trees(g, eg, f"gradient of arg {i}", rtol, atol)
    _compare_trees(comp_args, eager_args, "arguments after the call", rtol, atol)
    return comp_out


def check_compile_module(
    module: torch.nn.Module,
    *args,
    backend: str = "aot_eager",
    rtol: float = 1e-5,
    atol: float = 1e-6,
):
    """``torch.compile(module, fullgraph=True)`` on a copy of ``module`` gives the outputs,
    parameter gradients and buffers (e.g. updated running statistics) of eager on another copy."""
    torch._dynamo.reset()
    eager_m, comp_m = copy.deepcopy(module), copy.deepcopy(module)
    compiled = torch.compile(comp_m, fullgraph=True, backend=backend)
    results = []
    for m, f in ((eager_m, eager_m), (comp_m, compiled)):
        out, grads, _ = outputs_and_grads(f, args)
        results.append((out, grads, m))
    (e_out, e_grads, e_m), (c_out, c_grads, c_m) = results
    _compare_trees(c_out, e_out, "compiled module output", rtol, atol)
    for i, (g, eg) in enumerate(zip(c_grads, e_grads)):
        if g is not None or eg is not None:
            _compare_trees(g, eg, f"gradient of arg {i}", rtol, atol)
    for (name, p), (_, ep) in zip(c_m.named_parameters(), e_m.named_parameters()):
        assert (p.grad is None) == (ep.grad is None), f"grad of {name}"
        if p.grad is not None:
            _compare_trees(p.grad, ep.grad, f"grad of {name}", rtol, atol)
    for (name, b), (_, eb) in zip(c_m.named_buffers(), e_m.named_buffers()):
        _compare_trees(b, eb, f"buffer {name}", rtol, atol)
    return c_out


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def assert_raises_naming(exc_type, fn: Callable, *words: str):
    """``fn()`` raises ``exc_type`` (a class or tuple) and the message contains every one of
    ``words`` (case-insensitive): the argument's name, and the expected or received value.
    Returns the exception info."""
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    for w in words:
        assert w.lower() in message.lower(), f"error message does not name {w!r}: {message!r}"
    return info


def assert_unchanged(inputs: Any, fn: Callable, *, allow: Iterable[torch.Tensor] = ()):
    """Call ``fn()`` and assert every tensor in ``inputs`` (nested lists/tuples/dicts) kept its
    values (bitwise, NaN-aware), shape, strides, dtype and device. Tensors in ``allow`` (e.g.
    running statistics that training updates) are not checked. Returns ``fn()``'s result."""
    skip = {id(t) for t in allow}
    tensors = [t for t in _tensors(inputs) if id(t) not in skip]
    before = [(t.detach().clone(), t.shape, t.stride(), t.dtype, t.device) for t in tensors]
    result = fn()
    for i, (t, (val, shape, stride, dtype, device)) in enumerate(zip(tensors, before)):
        assert (t.shape, t.stride(), t.dtype, t.device) == (shape, stride, dtype, device), (
            f"input {i} changed its metadata"
        )
        assert torch.equal(
            torch.nan_to_num(t.detach(), 1.5), torch.nan_to_num(val, 1.5)
        ) and torch.equal(t.detach().isnan(), val.isnan()), f"input {i} was modified in place"
    return result


def randomise_running_stats(module: torch.nn.Module) -> torch.nn.Module:
    """Random running_mean (normal) and running_var (in [0.5, 1.5)) in every batch-norm buffer of
    ``module``, so evaluation-mode checks do not pass on the default zeros and ones."""
    for name, buf in module.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn_like(buf))
        elif name.endswith("running_var"):
            buf.copy_(torch.rand_like(buf) + 0.5)
    return module
