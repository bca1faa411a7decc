"""Helpers for whole models run through fastdl (converted, patched, or with fastdl's attention).

``compare_model``   the model through fastdl against the same torch model and weights,
                    forward and backward (below).
``FastdlOps``       records the ``torch.ops.fastdl`` ops a block of code runs, with arguments.

``compare_model(model, through_fastdl, make_inputs, dtype)`` runs three deep copies of
``model``: torch in float64 (the reference), torch in ``dtype`` (the baseline) and the copy
``through_fastdl`` prepares, in ``dtype``. It compares the output, and in training the
gradients of every parameter and floating input and the buffers after the step (running
statistics), by the rules of ``helpers.assert_close_to_reference``: in float64 against torch
directly; in float32 fastdl may be at most twice as far from the float64 reference as torch's
own float32 result is, plus 1e-5 of the largest value (or within 1e-5 of torch's result).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import assert_close_to_reference


def _cast(obj: Any, dtype: torch.dtype, grad: bool) -> Any:
    """Floating tensors of ``obj`` (nested tuples/dicts) as fresh ``dtype`` leaves."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return obj.clone()
        return obj.detach().to(dtype).requires_grad_(grad)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dtype, grad) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype, grad) for k, v in obj.items()}
    return obj


def _leaves(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _leaves(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _leaves(o)]
    return []


def _first_tensor(out: Any) -> torch.Tensor:
    """A model's main output: the tensor itself, a ModelOutput's first field, a tuple's first."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    return out[0]


def run_model(
    fn: Callable, module: torch.nn.Module, inputs: Any, train: bool, dtype: torch.dtype
) -> dict:
    """``fn(*inputs)`` on ``dtype`` copies of ``inputs``; in training, backward through the
    main output a random gradient (the same on every call: a seeded generator). Returns the
    output, and the parameter, input and buffer tensors, by name."""
    args = _cast(inputs, dtype, grad=train)
    with torch.set_grad_enabled(train):
        out = _first_tensor(fn(*args))
    result = {"output": out.detach()}
    if train:
        gen = torch.Generator().manual_seed(1)
        out.backward(torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype))
        for name, p in module.named_parameters():
            result[f"grad of {name}"] = None if p.grad is None else p.grad.detach()
        for i, t in enumerate(_leaves(args)):
            result[f"grad of input {i}"] = None if t.grad is None else t.grad.detach()
        for name, b in module.named_buffers():
            if b.is_floating_point():
                result[f"buffer {name}"] = b.detach().clone()
    return result


def compare_model(
    model: torch.nn.Module,
    through_fastdl: Callable,
    make_inputs: Callable[[], Any],
    dtype: torch.dtype = torch.float32,
    *,
    train: bool = False,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
) -> dict:
    """Compare ``model`` run through fastdl with torch (see the module docstring).

    Args:
        model: a torch model (its weights are copied, it is not changed).
        through_fastdl: takes a deep copy of ``model`` (already in ``dtype`` and mode) and
            returns ``(callable, module)``: what to call with the inputs (the module itself,
            or a function running it under ``fastdl.patch``) and the module holding the
            parameters (for their gradients).
        make_inputs: a tuple of model arguments; floating ones are cast to each dtype and,
            in training, made leaves whose gradients are compared.
        train: training mode and a backward pass, else evaluation mode and forward only.

    Returns:
        fastdl's results by name (``"output"``, ``"grad of <parameter>"``, ...).
    """
    inputs = make_inputs()
    results = {}
    sides = [("reference", torch.float64), ("torch", dtype), ("fastdl", dtype)]
    if dtype == torch.float64:
        sides = sides[:1] + sides[2:]
    for side, side_dtype in sides:
        m = copy.deepcopy(model).to(side_dtype).train(train)
        fn, module = through_fastdl(m) if side == "fastdl" else (m, m)
        results[side] = run_model(fn, module, inputs, train, side_dtype)
    ours, ref = results["fastdl"], results["reference"]
    base = results.get("torch", {})
    assert ours.keys() == ref.keys(), f"fastdl gives {sorted(ours)}, torch {sorted(ref)}"
    for name, value in ours.items():
        assert_close_to_reference(
            value, ref[name], dtype, baseline=base.get(name), name=name, rtol=rtol, atol=atol
        )
    return ours


class FastdlOps(TorchDispatchMode):
    """``with FastdlOps() as ops: ...`` records every ``torch.ops.fastdl`` op the block runs:
    ``ops.calls`` is a list of ``(name, args)`` (``name`` like ``"sdpa_forward"``), and
    ``ops.names()`` the names alone. Other ops run as usual."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastdl":
            self.calls.append((func._opname, args))
        return func(*args, **(kwargs or {}))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]
