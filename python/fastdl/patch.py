"""fastdl.patch: route torch.nn.functional's entry points to fastdl's kernels.

Most models call functions, not modules: timm's and Hugging Face's attention call
``F.scaled_dot_product_attention``, many blocks call ``F.layer_norm`` or ``F.conv2d``
directly. :func:`patch` swaps those attributes of ``torch.nn.functional`` for wrappers that
run fastdl when it supports the call and torch's own function otherwise::

    with fastdl.patch():                        # every op in PATCHABLE_OPS
        out = model(x)
    handle = fastdl.patch(ops=["scaled_dot_product_attention", "layer_norm"])
    ...
    handle.undo()
    print(fastdl.patch_stats())                 # calls routed to fastdl / fallen back, and why

A call falls back to the original torch function, with no error, when fastdl does not
support it: a dtype or device fastdl has no kernel for (float16 on the CPU for most ops, MPS
tensors), tensor subclasses and ``__torch_function__`` overrides (``torch.fx`` proxies), nested,
sparse or quantized tensors, ``torch.func`` transforms, and arguments torch would reject (so
the error is torch's own). Outside ``torch.compile`` a fastdl error is a fallback too. Under
``torch.autocast`` fastdl's ops cast as torch's do (on the CPU, convolution and attention
compute in float32 and return the autocast dtype). Each fallback is counted (see
:func:`patch_stats`) and logged at debug level on the ``fastdl.patch`` logger.

The patch is process-wide (``torch.nn.functional`` is one module) and thread-safe: each op
keeps a count of the patches covering it; the first installs the wrapper, the last one undone
restores the original, in any order and from any thread. fastdl's own code never calls the
functions this patches, and the wrappers keep references to torch's originals, so a fallback
cannot recurse.

Only attribute look-ups of ``torch.nn.functional`` see the patch (``F.layer_norm(...)``, as
torch.nn's modules, timm and transformers do); a name imported before with
``from torch.nn.functional import layer_norm`` keeps torch's function. Double backward through
a call routed to fastdl raises, as fastdl's ops do.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _C
from . import functional as _fastdl

__all__ = ["PATCHABLE_OPS", "Patch", "PatchStats", "patch", "patch_stats", "reset_patch_stats"]

_log = logging.getLogger("fastdl.patch")

#: The torch.nn.functional names :func:`patch` can route to fastdl.
PATCHABLE_OPS: tuple[str, ...] = (
    "scaled_dot_product_attention",
    "layer_norm",
    "batch_norm",
    "conv1d",
    "conv2d",
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
)

_CUDA_BUILT = bool(_C.build_info()["cuda"])
_FLOATS = (torch.float32, torch.float64)
_HALFS = (torch.float16, torch.bfloat16)
_DTYPES = {"cpu": _FLOATS + _HALFS, "cuda": _FLOATS + _HALFS if _CUDA_BUILT else ()}

# ------------------------------------------------------------------------------- state
# All of it is guarded by _lock, except the reads on the call path: _on[name] (a dict lookup,
# atomic under the GIL) and _originals[name], written before a wrapper is installed. _on is
# _active > 0 kept apart, so that torch.compile's guards on it see no change when patches
# nest (a count going from 1 to 2 would recompile for nothing).
_lock = threading.Lock()
_active: dict[str, int] = {name: 0 for name in PATCHABLE_OPS}
_on: dict[str, bool] = {name: False for name in PATCHABLE_OPS}
_originals: dict[str, Callable] = {}
_counts: Counter = Counter()  # (op, "fastdl" | "fallback") -> calls
_reasons: Counter = Counter()  # (op, reason) -> fallbacks


def _original(name: str) -> Callable:
    """torch's function for ``name``: the one saved when the patch went in, else the current
    attribute (never a fastdl wrapper, so a fallback cannot recurse)."""
    fn = _originals.get(name)
    if fn is None:
        fn = getattr(F, name)
        if fn is _WRAPPERS[name]:  # cannot happen: the wrapper goes in after _originals
            raise RuntimeError(f"fastdl.patch: lost torch's original {name}")
    return fn


# ------------------------------------------------------------------------------- routing


def _eager() -> bool:
    return not torch.compiler.is_compiling()


def _count(name: str, route: str, reason: Optional[str] = None) -> None:
    # Skipped while torch.compile traces: a count there would happen once per compilation.
    if not _eager():
        return
    with _lock:
        _counts[name, route] += 1
        if reason is not None:
            _reasons[name, reason] += 1
    if reason is not None and _log.isEnabledFor(logging.DEBUG):
        _log.debug("fastdl.patch: %s falls back to torch: %s", name, reason)


def _tensor_reason(
    tensors: Sequence[Optional[Tensor]], names: Sequence[str], loose: Sequence[str] = ()
) -> Optional[str]:
    """Why fastdl cannot take these tensors (None when it can): non-tensors, overrides,
    layouts, devices and dtypes without a kernel. All must be on the first one's device and, but for those named in
    ``loose`` (whose dtype the caller checks), of its dtype."""
    present = [(t, n) for t, n in zip(tensors, names) if t is not None]
    if not present or present[0][1] != names[0]:
        return f"{names[0]} is None"
    for t, n in present:
        if not isinstance(t, Tensor):
            return f"{n} is a {type(t).__name__}, not a tensor"
    ts = [t for t, _ in present]
    if torch.overrides.has_torch_function(ts):
        return "a tensor subclass or __torch_function__ override"
    for t, n in present:
        if t.is_nested or t.layout != torch.strided or t.is_quantized:
            return f"{n} is nested, sparse or quantized"
    if _eager() and any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in ts):
        return "inside a torch.func transform"
    first, first_name = present[0]
    device = first.device
    if not _DTYPES.get(device.type):
        return f"device {device.type} (fastdl has no kernels there in this build)"
    if first.dtype not in _DTYPES[device.type]:
        return f"dtype {first.dtype} on {device.type}"
    for t, n in present[1:]:
        if t.device != device:
            return f"{n} on {t.device}, {first_name} on {device}"
        if t.dtype != first.dtype and n not in loose:
            return f"{n} is {t.dtype}, {first_name} is {first.dtype}"
    return None


def _dims_reason(input: Tensor, dims: tuple[int, ...], name: str = "input") -> Optional[str]:
    return None if input.dim() in dims else f"{name} is {input.dim()}-d"


def _dispatch(name: str, reason: Optional[str], args: tuple, kwargs: dict) -> object:
    """Call fastdl's ``name`` when ``reason`` is None, else torch's original. In eager mode an
    exception from fastdl is a fallback too: torch then answers the call, with its own error
    if the arguments are bad (raised outside the except block, so not chained to fastdl's)."""
    if reason is None:
        if not _eager():
            return _FASTDL[name](*args, **kwargs)
        try:
            out = _FASTDL[name](*args, **kwargs)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            reason = f"fastdl raised {type(exc).__name__}: {first_line}"
        else:
            _count(name, "fastdl")
            return out
    _count(name, "fallback", reason)
    return _original(name)(*args, **kwargs)


# ------------------------------------------------------------------------------- wrappers
# One per op, with torch.nn.functional's signature: decides whether fastdl can run the call
# and passes the arguments, in torch's order, to fastdl or to torch.


def _sdpa_reason(query, key, value, attn_mask, dropout_p, is_causal) -> Optional[str]:
    reason = _tensor_reason(
        (query, key, value, attn_mask), ("query", "key", "value", "attn_mask"), loose=("attn_mask",)
    )
    if reason is not None:
        return reason
    if attn_mask is not None and attn_mask.dtype not in (torch.bool, query.dtype):
        return f"attn_mask is {attn_mask.dtype}, query is {query.dtype} (torch raises)"
    if min(query.dim(), key.dim(), value.dim()) < 2:
        return "query, key or value below 2-d (torch raises)"
    if is_causal and attn_mask is not None:
        return "both attn_mask and is_causal (torch raises)"
    if not 0.0 <= dropout_p <= 1.0:
        return f"dropout_p={dropout_p}"
    return None


def _scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    reason = _sdpa_reason(query, key, value, attn_mask, dropout_p, is_causal)
    return _dispatch(
        "scaled_dot_product_attention",
        reason,
        (query, key, value, attn_mask, dropout_p, is_causal),
        {"scale": scale, "enable_gqa": enable_gqa},
    )


def _param_dtype_reason(input, tensors, names) -> Optional[str]:
    """A norm's parameters (and statistics): the input's dtype, or float32 beside a half
    input (mixed precision, as torch allows)."""
    allowed = (input.dtype, torch.float32) if input.dtype in _HALFS else (input.dtype,)
    for t, n in zip(tensors, names):
        if t is not None and t.dtype not in allowed:
            return f"{n} is {t.dtype}, input is {input.dtype}"
    return None


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    reason = _tensor_reason(
        (input, weight, bias), ("input", "weight", "bias"), loose=("weight", "bias")
    ) or _param_dtype_reason(input, (weight, bias), ("weight", "bias"))
    if reason is None:
        shape = normalized_shape
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not shape or len(shape) > input.dim() or tuple(input.shape[-len(shape) :]) != shape:
            reason = f"normalized_shape {list(shape)} is not the end of {list(input.shape)}"
    return _dispatch("layer_norm", reason, (input, normalized_shape, weight, bias, eps), {})


def _batch_norm_reason(input, running_mean, running_var, weight, bias, training, momentum):
    names = ("input", "running_mean", "running_var", "weight", "bias")
    tensors = (input, running_mean, running_var, weight, bias)
    reason = _tensor_reason(tensors, names, loose=names[1:]) or _param_dtype_reason(
        input, tensors[1:], names[1:]
    )
    if reason is not None:
        return reason
    if input.dim() < 2:
        return f"input is {input.dim()}-d (torch raises)"
    if not training and (running_mean is None or running_var is None):
        return "evaluation without running statistics (torch raises)"
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
        return f"momentum={momentum!r}"
    if training and input.numel() // max(input.shape[1], 1) <= 1:
        return "one value per channel in training (torch raises)"
    return None


def _batch_norm(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    reason = _batch_norm_reason(input, running_mean, running_var, weight, bias, training, momentum)
    return _dispatch(
        "batch_norm",
        reason,
        (input, running_mean, running_var, weight, bias, training, momentum, eps),
        {},
    )


def _conv_reason(input, weight, bias, dims: tuple[int, ...]) -> Optional[str]:
    reason = _tensor_reason((input, weight, bias), ("input", "weight", "bias"))
    return reason or _dims_reason(input, dims)


def _conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _dispatch(
        "conv1d",
        _conv_reason(input, weight, bias, (2, 3)),
        (input, weight, bias, stride, padding, dilation, groups),
        {},
    )


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _dispatch(
        "conv2d",
        _conv_reason(input, weight, bias, (3, 4)),
        (input, weight, bias, stride, padding, dilation, groups),
        {},
    )


def _pool_reason(input, dims: tuple[int, ...]) -> Optional[str]:
    # The CPU pooling kernels take float16/bfloat16 (computed in float32).
    return _tensor_reason((input,), ("input",)) or _dims_reason(input, dims)


def _max_pool1d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    return _dispatch(
        "max_pool1d",
        _pool_reason(input, (2, 3)),
        (input, kernel_size, stride, padding, dilation, ceil_mode, return_indices),
        {},
    )


def _max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    return _dispatch(
        "max_pool2d",
        _pool_reason(input, (3, 4)),
        (input, kernel_size, stride, padding, dilation, ceil_mode, return_indices),
        {},
    )


def _avg_pool1d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
):
    return _dispatch(
        "avg_pool1d",
        _pool_reason(input, (2, 3)),
        (input, kernel_size, stride, padding, ceil_mode, count_include_pad),
        {},
    )


def _avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    return _dispatch(
        "avg_pool2d",
        _pool_reason(input, (3, 4)),
        (input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override),
        {},
    )


_ROUTED: dict[str, Callable] = {name: globals()["_" + name] for name in PATCHABLE_OPS}
_FASTDL: dict[str, Callable] = {name: getattr(_fastdl, name) for name in PATCHABLE_OPS}


def _make_wrapper(name: str) -> Callable:
    """What :func:`patch` puts in ``torch.nn.functional``: routes while a patch covers
    ``name``; once undone, a reference someone kept passes calls straight to torch."""
    routed = _ROUTED[name]

    def wrapper(*args, **kwargs):
        if not _on[name]:
            return _original(name)(*args, **kwargs)
        return routed(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = (
        f"fastdl.patch's torch.nn.functional.{name}: fastdl's kernel where it "
        f"supports the call, torch's function otherwise."
    )
    return wrapper


_WRAPPERS: dict[str, Callable] = {name: _make_wrapper(name) for name in PATCHABLE_OPS}


def routed(name: str) -> Callable:
    """``torch.nn.functional``'s ``name`` as :func:`patch` routes it (fastdl where it
    supports the call, torch's original otherwise, counted), whether or not a patch is active.
    For integrations that call fastdl explicitly (``fastdl.integrations.transformers``)."""
    if name not in _ROUTED:
        raise ValueError(
            f"fastdl.patch.routed: name must be one of {list(PATCHABLE_OPS)}, got {name!r}"
        )
    return _ROUTED[name]


# ------------------------------------------------------------------------------- counts


@dataclasses.dataclass(frozen=True)
class PatchStats:
    """Calls the patched functions routed to fastdl and fell back to torch, per op, and the
    reasons of the fallbacks (``(op, reason) -> count``)."""

    fastdl: dict[str, int]
    fallback: dict[str, int]
    reasons: dict[tuple[str, str], int]

    @property
    def fallbacks(self) -> int:
        """Total calls that fell back to torch."""
        return sum(self.fallback.values())

    def __str__(self) -> str:
        ops = sorted(set(self.fastdl) | set(self.fallback))
        lines = ["fastdl.patch: calls to fastdl / fallbacks to torch"]
        lines += [f"  {op}: {self.fastdl.get(op, 0)} / {self.fallback.get(op, 0)}" for op in ops]
        lines += [f"  fallback {op} ({n}x): {why}" for (op, why), n in sorted(self.reasons.items())]
        return "\n".join(lines)


def _snapshot() -> tuple[Counter, Counter]:
    with _lock:
        return Counter(_counts), Counter(_reasons)


def _stats(counts: Counter, reasons: Counter, ops: Iterable[str]) -> PatchStats:
    ops = set(ops)

    def pick(route: str) -> dict[str, int]:
        return {op: n for (op, r), n in counts.items() if r == route and op in ops and n}

    return PatchStats(
        pick("fastdl"), pick("fallback"), {k: n for k, n in reasons.items() if k[0] in ops and n}
    )


def patch_stats() -> PatchStats:
    """Counts of every patched call since import (or :func:`reset_patch_stats`), from all
    threads. Calls made while ``torch.compile`` traces are not counted (their routing is
    decided once per compilation); the compiled graph's calls are not seen either."""
    return _stats(*_snapshot(), PATCHABLE_OPS)


def reset_patch_stats() -> None:
    """Zero the counts :func:`patch_stats` returns (a :class:`Patch`'s own counts are
    differences of them, so reset while no patch is being measured)."""
    with _lock:
        _counts.clear()
        _reasons.clear()


# ------------------------------------------------------------------------------- patching

_primed = False


def _prime_torch_compile() -> None:
    """Have torch.compile's table of torch functions built before a wrapper goes in.

    Dynamo builds that table once, on first use, from the attributes of torch.nn.functional
    at that moment; built while patched, it would list the wrappers as torch functions to
    put in graphs unseen, instead of tracing through them to fastdl's ops. Importing dynamo
    costs about a second, once per process."""
    global _primed
    if _primed:
        return
    _primed = True
    try:
        from torch._dynamo import trace_rules

        trace_rules.get_torch_obj_rule_map()
    except Exception as exc:  # noqa: BLE001 (no dynamo, no torch.compile to prepare for)
        _log.debug("fastdl.patch: torch.compile's tables not built: %s", exc)


class Patch:
    """A patch of some of ``torch.nn.functional``'s functions, from :func:`patch`.

    Use as a context manager (the patch is undone on exit) or call :meth:`undo`. Undoing
    twice is a no-op.
    """

    def __init__(self, ops: tuple[str, ...]):
        self.ops = ops
        self._active = False
        self._start: tuple[Counter, Counter] = (Counter(), Counter())
        self._end: Optional[tuple[Counter, Counter]] = None
        with _lock:
            _prime_torch_compile()
            for name in ops:
                if _active[name] == 0:
                    current = getattr(F, name)
                    if current is not _WRAPPERS[name]:
                        _originals[name] = current
                    setattr(F, name, _WRAPPERS[name])
                    _on[name] = True
                _active[name] += 1
            self._start = (Counter(_counts), Counter(_reasons))
            self._active = True

    @property
    def active(self) -> bool:
        """True until :meth:`undo`."""
        return self._active

    def undo(self) -> None:
        """Remove this patch. An op goes back to torch's function when no other patch covers
        it. If someone else replaced the attribute meanwhile, theirs is left in place (the
        fastdl wrapper it may call passes every call to torch's function from then on)."""
        with _lock:
            if not self._active:
                return
            self._active = False
            self._end = (Counter(_counts), Counter(_reasons))
            for name in self.ops:
                _active[name] -= 1
                if _active[name] == 0:
                    _on[name] = False
                    if getattr(F, name) is _WRAPPERS[name]:
                        setattr(F, name, _originals[name])
                    else:
                        _log.warning(
                            "fastdl.patch: torch.nn.functional.%s was replaced by someone "
                            "else while patched; leaving it in place",
                            name,
                        )

    def stats(self) -> PatchStats:
        """Counts of this patch's ops between its start and its undo (or now), from every
        thread (see :func:`patch_stats`)."""
        end = self._end or _snapshot()
        return _stats(end[0] - self._start[0], end[1] - self._start[1], self.ops)

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()

    def __repr__(self) -> str:
        return f"fastdl.Patch(ops={list(self.ops)}, active={self._active})"


def patch(ops: Optional[Union[str, Iterable[str]]] = None) -> Patch:
    """Route ``torch.nn.functional``'s ``ops`` to fastdl, process-wide, until undone.

    Args:
        ops: names from :data:`PATCHABLE_OPS` (a name or an iterable of names); default all.

    Returns:
        A :class:`Patch`: ``with fastdl.patch(): ...`` undoes it on exit; ``p = fastdl.patch()``
        keeps it until ``p.undo()``. Patches nest and overlap freely, from any thread.

    Raises:
        ValueError: ``ops`` names something not in :data:`PATCHABLE_OPS`.

    Each patched call runs fastdl when it supports the arguments and torch's function
    otherwise (counted: :func:`patch_stats`, :meth:`Patch.stats`; logged at debug level on
    the ``fastdl.patch`` logger). See this module's docstring for what falls back.
    """
    if ops is None:
        names = PATCHABLE_OPS
    else:
        names = (ops,) if isinstance(ops, str) else tuple(ops)
        unknown = [n for n in names if n not in PATCHABLE_OPS]
        if unknown or not names:
            raise ValueError(
                f"fastdl.patch: ops must name functions from {list(PATCHABLE_OPS)}, "
                f"got {list(names) if not unknown else unknown}"
            )
        names = tuple(dict.fromkeys(names))  # once each, in order
    return Patch(names)
