"""Benchmark harness: the Case API, the agreement check, timing and the report.

A :class:`Case` is one op at one shape, dtype and device. ``make_inputs()`` builds the
positional arguments; ``fastdl`` and ``torch`` (the reference) are both called with them.
For each case the harness

1. gives each side its own copy of the arguments, made once, so state an op updates in
   place (running statistics) evolves alike on both sides and no timed call pays for a clone;
2. runs each side once and checks with ``torch.testing.assert_close`` and the case's
   tolerances that the outputs agree, that tensor arguments agree afterwards (in-place
   updates), and, for fwd+bwd, that the gradients of every argument with ``requires_grad``
   agree (float16/bfloat16 rows: fastdl's error from torch's function on float64 copies at
   most twice torch's own, where that function runs in float64). A disagreement makes the row
   MISMATCH, an exception makes it ERROR (the other
   side is still timed); neither stops the run;
3. times both sides twice (wall clock, between ``torch.cuda.synchronize()`` calls on CUDA):
   **interleaved**, single calls taking turns (torch, fastdl, fastdl, torch, ...) for at
   least ``min_time`` seconds each: how a model calls an op, between other ops, with
   whatever the other side left in the caches — the reported time and speedup; and in
   alternating **blocks** of many calls, for at least ``min_time / 2`` seconds each: the op
   in a loop, warm caches (``speedup_blocks``). Both report the median time per call, GB/s
   (and TFLOP/s) from the case's work counts, the fraction of the machine's ceilings
   measured in the same run (:func:`measure_ceilings`) and, on CUDA, the peak memory.

Modes: ``fwd`` calls the op under ``torch.no_grad()``; ``fwd+bwd`` calls it with autograd,
then ``torch.autograd.grad(outputs, inputs_with_requires_grad, grad_outputs)`` with fixed
random output gradients (the same tensors for both sides).

Peak memory (CUDA only) is ``max_memory_allocated`` over one call after
``reset_peak_memory_stats``, less what was allocated before it (the inputs), as
``anchors/measure_gpu.py`` measures it.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import statistics
import time
from typing import Any, Callable, Optional

import torch

FWD, FWD_BWD = "fwd", "fwd+bwd"
SIDES = ("torch", "fastdl")
BLOCKS = 20  # timed blocks per side and measurement, aimed at
MIN_BLOCKS = 5  # for ops slower than min_time / BLOCKS
MIN_CALLS = 5  # interleaved calls per side at least
MAX_CALLS = 20000  # and at most (microsecond ops)


@dataclasses.dataclass
class Case:
    """One op at one shape, dtype and device.

    Attributes:
        op: the op's name, what ``--ops`` filters on (``"layer_norm"``).
        shape: a short label for the table (``"2048x1024"``, ``"16x64x32x32 train"``).
        dtype, device: of the inputs (``device`` is ``"cpu"`` or ``"cuda"``).
        make_inputs: returns the tuple of positional arguments, built on ``device``; tensors
            to differentiate have ``requires_grad=True``. Called once, after seeding the RNG.
        fastdl, torch: callables taking those arguments, returning a tensor or a (nested)
            tuple/list of tensors.
        modes: which of ``"fwd"`` and ``"fwd+bwd"`` to time.
        bytes_fwd, bytes_fwd_bwd: bytes a call must move at least, for GB/s (0: not shown).
        flops_fwd, flops_fwd_bwd: floating-point operations of a call, for TFLOP/s (0: not shown).
        atol, rtol: tolerances of the agreement check, both or neither (None: assert_close's
            defaults for the dtype).
    """

    op: str
    shape: str
    dtype: torch.dtype
    device: str
    make_inputs: Callable[[], tuple]
    fastdl: Callable[..., Any]
    torch: Callable[..., Any]
    modes: tuple[str, ...] = (FWD, FWD_BWD)
    bytes_fwd: int = 0
    bytes_fwd_bwd: int = 0
    flops_fwd: float = 0
    flops_fwd_bwd: float = 0
    atol: Optional[float] = None
    rtol: Optional[float] = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def label(self) -> str:
        return f"{self.op} {self.device} {self.dtype_name} {self.shape}"

    def work(self, mode: str) -> tuple[float, float]:
        """(bytes, flops) of one call in ``mode``."""
        if mode == FWD:
            return self.bytes_fwd, self.flops_fwd
        return self.bytes_fwd_bwd, self.flops_fwd_bwd


@dataclasses.dataclass
class Result:
    """One row of the report: a case in one mode. Times in ms, memory in MiB."""

    op: str
    shape: str
    dtype: str
    device: str
    mode: str
    status: str = "ok"  # ok | MISMATCH | ERROR
    message: str = ""
    torch_ms: Optional[float] = None
    fastdl_ms: Optional[float] = None
    speedup: Optional[float] = None  # torch_ms / fastdl_ms
    torch_iqr_ms: Optional[float] = None
    fastdl_iqr_ms: Optional[float] = None
    torch_gbps: Optional[float] = None
    fastdl_gbps: Optional[float] = None
    torch_tflops: Optional[float] = None
    fastdl_tflops: Optional[float] = None
    torch_peak_mib: Optional[float] = None
    fastdl_peak_mib: Optional[float] = None
    torch_calls: int = 0  # interleaved calls behind the median
    fastdl_calls: int = 0
    # The blocks measurement: many calls in a row.
    torch_block_ms: Optional[float] = None
    fastdl_block_ms: Optional[float] = None
    speedup_blocks: Optional[float] = None
    torch_blocks: int = 0  # timed blocks behind the median
    fastdl_blocks: int = 0
    # fastdl's fraction of the same-run ceiling: GEMM FLOP/s for cases that count flops,
    # else copy bandwidth for cases that count bytes.
    fastdl_of_ceiling: Optional[float] = None
    ceiling: str = ""  # "gemm" | "copy" | ""

    def fail(self, status: str, message: str) -> None:
        """Mark the row; the first failure's status wins, messages accumulate."""
        if self.status == "ok" or (self.status == "MISMATCH" and status == "ERROR"):
            self.status = status
        self.message = "; ".join(filter(None, [self.message, message]))


# ----------------------------------------------------------------------------- running


def _leaves(obj) -> list:
    """The leaves of nested tuples/lists, in order."""
    if isinstance(obj, (tuple, list)):
        return [leaf for item in obj for leaf in _leaves(item)]
    return [obj]


def _tensors(obj) -> list[torch.Tensor]:
    return [t for t in _leaves(obj) if isinstance(t, torch.Tensor)]


def _copy(obj):
    """A copy of nested arguments with fresh tensors (same values, strides, requires_grad)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_copy(item) for item in obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone().requires_grad_(obj.requires_grad)
    return obj


def _error(side: str, exc: BaseException) -> str:
    return f"{side}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


class _Side:
    """One side (torch or fastdl) of a case: its callable and its own arguments."""

    def __init__(self, fn: Callable, args: tuple):
        self.fn, self.args = fn, args
        self.diff_inputs = [t for t in _tensors(args) if t.requires_grad]

    def forward(self, grad: bool) -> list[torch.Tensor]:
        with torch.set_grad_enabled(grad):
            return _tensors(self.fn(*self.args))

    def backward(self, outputs: list[torch.Tensor], grads: list) -> tuple:
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
        return torch.autograd.grad([o for o, _ in pairs], self.diff_inputs, [g for _, g in pairs])

    def step(self, mode: str, grads: list) -> Callable[[], Any]:
        """The timed call."""
        if mode == FWD:
            return lambda: self.forward(False)
        return lambda: self.backward(self.forward(True), grads)


def _in_float64(obj):
    """A copy of nested arguments with floating tensors in float64 (modules copied in float64)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_in_float64(item) for item in obj)
    if isinstance(obj, torch.Tensor):
        t = obj.detach().clone()
        return (t.double() if t.is_floating_point() else t).requires_grad_(obj.requires_grad)
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj).double()
    return obj


def _float64_side(case: Case, args: tuple) -> Optional["_Side"]:
    """torch's side on float64 copies, the reference half-precision rows are judged by; None
    when the case's torch function cannot run so (a model whose weights it holds)."""
    if case.dtype not in (torch.float16, torch.bfloat16):
        return None
    side = _Side(_in_float64(case.torch), _in_float64(args))
    try:
        side.forward(False)
    except Exception:  # noqa: BLE001 (then rows are compared with torch's directly)
        return None
    return side


def _compare(what: str, got: list, want: list, case: Case, reference: Optional[list] = None) -> str:
    """'' when fastdl's tensors agree with torch's, else why not (one line). With a float64
    ``reference`` (half-precision rows), fastdl's largest error from it may be at most twice
    torch's plus ``atol`` times the reference's scale, as the tests judge half results: a
    direct comparison would fail wherever torch's own rounding is the larger (long sums)."""
    if len(got) != len(want):
        return f"{what}: fastdl gives {len(got)} tensors, torch {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if reference is not None and g.is_floating_point():
            r = reference[i].double()
            err, base = (g.double() - r).abs().max().item(), (w.double() - r).abs().max().item()
            slack = (case.atol or 0.0) * max(1.0, r.abs().max().item())
            if g.shape == r.shape and err <= 2 * base + slack:
                continue
            return (
                f"{what} {i}: fastdl's error {err:.3g} from float64 is over twice torch's "
                f"{base:.3g} + {slack:.3g}"
            )
        try:
            torch.testing.assert_close(g, w, atol=case.atol, rtol=case.rtol)
        except AssertionError as exc:
            return f"{what} {i}: {' '.join(str(exc).split())}"
    return ""


def _check(
    case: Case, sides: dict[str, _Side], rows: dict[str, Result]
) -> tuple[list, dict[str, set]]:
    """Run each side once and compare; marks ``rows``. Returns the output gradients for
    fwd+bwd and, per mode, the sides that raised (they are not timed)."""
    failed: dict[str, set] = {mode: set() for mode in rows}

    def fail(modes, side: str, exc: Exception) -> None:
        for mode in modes:
            failed[mode].add(side)
            rows[mode].fail("ERROR", _error(side, exc))

    def mismatch(modes, problem: str) -> None:
        for mode in modes if problem else ():
            rows[mode].fail("MISMATCH", problem)

    need_bwd = FWD_BWD in rows
    outputs, grads = {}, []
    for name, side in sides.items():
        try:
            outputs[name] = side.forward(need_bwd)
        except Exception as exc:  # noqa: BLE001 (an op failing is a result, not a crash)
            fail(rows, name, exc)
    reference = sides.get("float64")
    ref_outputs = reference.forward(need_bwd) if reference is not None else None
    if len(outputs) == 2:
        fastdl_args, torch_args = _tensors(sides["fastdl"].args), _tensors(sides["torch"].args)
        mismatch(
            rows,
            _compare("output", outputs["fastdl"], outputs["torch"], case, ref_outputs)
            or _compare("argument after the call", fastdl_args, torch_args, case),
        )
    if need_bwd and "torch" not in outputs:
        failed[FWD_BWD].add("fastdl")  # no output gradients to use without the reference
    if need_bwd and "torch" in outputs:
        gen = torch.Generator(case.device).manual_seed(1)
        grads = [
            torch.empty_like(o).normal_(generator=gen) if o.requires_grad else None
            for o in outputs["torch"]
        ]
        input_grads = {}
        ref_grads = None
        if reference is not None:
            ref_grads = list(
                reference.backward(
                    ref_outputs, [g.double() if g is not None else None for g in grads]
                )
            )
        for name in outputs:
            try:
                input_grads[name] = list(sides[name].backward(outputs[name], grads))
            except Exception as exc:  # noqa: BLE001
                fail([FWD_BWD], name, exc)
        if len(input_grads) == 2:
            mismatch(
                [FWD_BWD],
                _compare(
                    "gradient of input",
                    input_grads["fastdl"],
                    input_grads["torch"],
                    case,
                    ref_grads,
                ),
            )
    return grads, failed


def _time_alternately(
    steps: dict[str, Callable], min_time: float, cuda: bool
) -> dict[str, list[float]]:
    """Seconds per call of each step, one value per block of calls. After a warm-up, blocks
    of about ``min_time / BLOCKS`` seconds of each step take turns until every step has run
    ``min_time`` seconds and ``MIN_BLOCKS`` blocks. On CUDA a block is timed between
    ``torch.cuda.synchronize()`` calls."""

    def block(step: Callable, number: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(number):
            step()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / number

    number = {}
    for name, step in steps.items():
        step()  # warm-up
        per_call = min(block(step, 1) for _ in range(3))
        number[name] = max(1, round(min_time / BLOCKS / per_call))
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    while any(len(ts) < MIN_BLOCKS or sum(ts) * number[n] < min_time for n, ts in times.items()):
        for name in order:
            times[name].append(block(steps[name], number[name]))
        order.reverse()
    return times


def _time_interleaved(
    steps: dict[str, Callable], min_time: float, cuda: bool
) -> dict[str, list[float]]:
    """Seconds of single calls, the steps taking turns call by call (the order reversed each
    round, so neither always follows the other), until every step has run ``min_time``
    seconds and ``MIN_CALLS`` calls, or ``MAX_CALLS`` calls."""
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    while any(
        len(ts) < MAX_CALLS and (len(ts) < MIN_CALLS or sum(ts) < min_time) for ts in times.values()
    ):
        for name in order:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps[name]()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
        order.reverse()
    return times


def _peak_mib(step: Callable) -> float:
    """Peak CUDA memory one call allocates beyond what is allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_case(case: Case, min_time: float, ceilings: Optional[dict] = None) -> list[Result]:
    """Check and time one case; one Result per mode. Never raises for a failing op.
    ``ceilings`` (from :func:`measure_ceilings`) adds each row's fraction of them."""
    rows = {m: Result(case.op, case.shape, case.dtype_name, case.device, m) for m in case.modes}
    sides: dict[str, _Side] = {}
    try:
        torch.manual_seed(0)
        args = case.make_inputs()
        sides = {"fastdl": _Side(case.fastdl, args), "torch": _Side(case.torch, _copy(args))}
        reference = _float64_side(case, args)  # judges half-precision rows (not timed)
        if reference is not None:
            sides["float64"] = reference
        del args, reference
        grads, failed = _check(case, sides, rows)
        sides.pop("float64", None)
        for mode, row in rows.items():
            steps = {s: sides[s].step(mode, grads) for s in SIDES if s not in failed[mode]}
            if not steps:
                continue
            try:
                cuda = case.device.startswith("cuda")
                interleaved = _time_interleaved(steps, min_time, cuda)
                blocks = _time_alternately(steps, min_time / 2, cuda)
                _fill(row, case, mode, steps, interleaved, blocks, ceilings)
            except Exception as exc:  # noqa: BLE001
                row.fail("ERROR", _error("timing", exc))
    except Exception as exc:  # noqa: BLE001 (make_inputs or the harness itself)
        for row in rows.values():
            row.fail("ERROR", _error("case", exc))
    finally:
        sides.clear()
        gc.collect()
        if case.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return list(rows.values())


def _fill(
    row: Result,
    case: Case,
    mode: str,
    steps: dict,
    interleaved: dict[str, list[float]],
    blocks: dict[str, list[float]],
    ceilings: Optional[dict],
) -> None:
    nbytes, flops = case.work(mode)
    for side, ts in interleaved.items():
        median = statistics.median(ts)
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (median,) * 3
        setattr(row, f"{side}_ms", median * 1e3)
        setattr(row, f"{side}_iqr_ms", (q3 - q1) * 1e3)
        setattr(row, f"{side}_calls", len(ts))
        setattr(row, f"{side}_gbps", nbytes / median / 1e9 if nbytes else None)
        setattr(row, f"{side}_tflops", flops / median / 1e12 if flops else None)
        if case.device.startswith("cuda"):
            setattr(row, f"{side}_peak_mib", _peak_mib(steps[side]))
    for side, ts in blocks.items():
        setattr(row, f"{side}_block_ms", statistics.median(ts) * 1e3)
        setattr(row, f"{side}_blocks", len(ts))
    if row.torch_ms and row.fastdl_ms:
        row.speedup = row.torch_ms / row.fastdl_ms
    if row.torch_block_ms and row.fastdl_block_ms:
        row.speedup_blocks = row.torch_block_ms / row.fastdl_block_ms
    if ceilings and row.fastdl_tflops:
        row.ceiling, row.fastdl_of_ceiling = (
            "gemm",
            row.fastdl_tflops * 1e3 / ceilings["gemm_gflops"],
        )
    elif ceilings and row.fastdl_gbps:
        row.ceiling, row.fastdl_of_ceiling = "copy", row.fastdl_gbps / ceilings["copy_gbps"]


# ----------------------------------------------------------------------------- ceilings


def measure_ceilings(device: str, quick: bool = False) -> dict:
    """What the machine itself reaches, measured now, in this process: float32 GEMM GFLOP/s
    through ``torch.mm`` (MKL/oneDNN on the CPU, cuBLAS without TF32 on CUDA) and copy
    bandwidth (GB/s read + write) through ``Tensor.copy_``, the best of a few tries each (a
    ceiling, not a typical run)."""
    cuda = device.startswith("cuda")
    n = (8192 if cuda else 2048) // (2 if quick else 1)
    copy_numel = (1 << 28 if cuda else 1 << 24) // (4 if quick else 1)  # 1 GiB / 64 MiB fp32
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    src = torch.randn(copy_numel, device=device)
    dst = torch.empty_like(src)

    def best(fn, tries: int) -> float:
        fn()
        out = []
        for _ in range(tries):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            out.append(time.perf_counter() - start)
        return min(out)

    gemm_s = best(lambda: torch.mm(a, b), 3 if quick else 5)
    copy_s = best(lambda: dst.copy_(src), 5 if quick else 10)
    return {
        "device": device,
        "gemm_n": n,
        "gemm_gflops": 2.0 * n**3 / gemm_s / 1e9,
        "copy_bytes": 2 * src.numel() * 4,
        "copy_gbps": 2.0 * src.numel() * 4 / copy_s / 1e9,
    }


def ceilings_line(ceilings: dict) -> str:
    return (
        f"Ceilings ({ceilings['device']}, same run): float32 GEMM {ceilings['gemm_gflops']:.0f} "
        f"GFLOP/s (torch.mm {ceilings['gemm_n']}^3), copy {ceilings['copy_gbps']:.1f} GB/s"
    )
