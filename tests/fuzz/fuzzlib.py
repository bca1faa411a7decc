"""Differential fuzzing of fastdl against torch: seeded generated cases, one engine.

A *case* is drawn from a seed (``Case``): shapes (0- and 1-sized dims, odd sizes, now and then
a large reduction), a memory layout per tensor (contiguous, transposed, sliced, expanded with
stride 0, channels-last, an offset into a larger storage), a dtype (float32 or float64), the
op's flags, and values (random scales; in about a third of the cases a few special values:
±0, subnormals, ±inf, NaN, ±1e30, ±1e-30). An op's generator turns a case into a ``Problem``:
the generated tensors and how each side (fastdl, torch) runs on them.

The engine runs the problem three times, on fresh copies with the same strides: fastdl in the
case's dtype, torch in that dtype, and torch in float64 (the reference). It then checks
- raised-or-not: fastdl raises exactly when torch does (in the case's dtype);
- outputs, the gradients of every input and parameter (one seeded random output gradient) and
  the state the call updates (running statistics), element by element: an element passes
  when it matches torch's in the same dtype or the float64 reference, where *matches* means
  both NaN, the same infinity, or finite and within tolerance (float32: twice torch's own
  error against the reference plus 1e-4 relative and 1e-5 of the tensor's typical magnitude).
  NaN positions are thereby compared exactly: a NaN where torch has a number (or the reverse)
  fails unless the float64 reference agrees with fastdl.

A failure names the op, the case index, its seed and everything the case drew, so
``pytest tests/fuzz -k "<op> and <index>"`` reproduces it alone.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import zlib
from typing import Any, Callable, Optional, Sequence

import torch

#: Cases per op: the fast profile (every CI run) and ``--fuzz-long`` (before a release: about
#: an hour on the 2-core CI machine for all ops).
FAST_CASES = 100
LONG_CASES = 12000

#: Cases past the fast profile that found a bug (fastdl's, or torch's that the generator now
#: steers around), by test: every run runs them too, as regression tests.
FOUND = {
    "test_rnn": [669, 1048],  # 0 * inf in dW_hh from the steps past a sequence's end
    "test_max_pool1d": [322],  # torch's float64 backward of an all-padding window crashed
    "test_max_pool2d": [195],  # torch aborts in the backward of an all-padding window
    "test_sdpa": [690, 1020],  # torch's is_causal with a negative scale; NaN query masked
    "test_batch_norm": [311, 786],  # torch's backward for ambiguous channels-last strides
    "test_batch_norm_module": [406, 1068],
    "test_layer_norm": [881, 1099],  # torch's one-pass variance (rows of one element); eps = 0
    "test_layer_norm_module": [337, 385, 400],
    "test_multihead_attention": [391, 690],  # S = 0 with a 2-D mask; saturated weights' grads
}

SPECIALS = (
    0.0,
    -0.0,
    1e-40,
    -1e-40,
    5e-324,
    float("inf"),
    float("-inf"),
    float("nan"),
    1e30,
    -1e30,
    1e-30,
    -1e-30,
)
HUGE = (1e30, -1e30)


class Case:
    """The random draws of one case, recorded so a failure can say what it was."""

    def __init__(self, op: str, index: int, long: bool = False):
        self.op, self.index, self.long = op, index, long
        self.seed = zlib.crc32(f"{op}:{index}".encode())
        self.rng = random.Random(self.seed)
        self.drawn: dict[str, Any] = {}
        self.dtype = self.choice("dtype", [torch.float32, torch.float64])
        self.special = self.rng.random() < 0.35
        self.drawn["special"] = self.special
        self.huge_left = 1  # at most one ±1e30 per case: two could cancel, and no order is right
        self.infinities = (
            False  # an input holds ±inf: inf - inf may be NaN in one order, inf in another
        )
        self.nans = False  # an input holds NaN
        self.gen = torch.Generator().manual_seed(self.seed)

    def __repr__(self) -> str:
        return f"{self.op} case {self.index} (seed {self.seed}): " + ", ".join(
            f"{k}={v}" for k, v in self.drawn.items()
        )

    def choice(self, name: str, options: Sequence) -> Any:
        value = self.rng.choice(list(options))
        self.drawn[name] = value
        return value

    def flag(self, name: str, p: float = 0.5) -> bool:
        value = self.rng.random() < p
        self.drawn[name] = value
        return value

    def size(self, name: str, hi: int = 7, *, zero: float = 0.06, large: int = 0) -> int:
        """A dim size: 0 sometimes, 1 often, odd and even sizes, now and then ``large``."""
        r = self.rng.random()
        if r < zero:
            value = 0
        elif r < zero + 0.2:
            value = 1
        elif large and r > 0.95:
            value = self.rng.randint(large // 2, large)
        else:
            value = self.rng.randint(2, hi)
        self.drawn[name] = value
        return value

    def randint(self, name: str, lo: int, hi: int) -> int:
        value = self.rng.randint(lo, hi)
        self.drawn[name] = value
        return value

    def uniform(self, name: str, lo: float, hi: float) -> float:
        value = round(self.rng.uniform(lo, hi), 4)
        self.drawn[name] = value
        return value


@dataclasses.dataclass
class Gen:
    """A generated tensor: a float64 base buffer and the view that gives it its layout."""

    base: torch.Tensor
    view: Callable[[torch.Tensor], torch.Tensor]
    layout: str

    def make(self, dtype: torch.dtype, grad: bool) -> torch.Tensor:
        base = (
            self.base.to(dtype, copy=True) if self.base.is_floating_point() else self.base.clone()
        )
        t = self.view(base).detach()
        return t.requires_grad_(grad) if t.is_floating_point() else t


def tensor(
    case: Case,
    name: str,
    shape: Sequence[int],
    *,
    layouts: Optional[Sequence[str]] = None,
    expand: bool = True,
    low: Optional[float] = None,
    high: Optional[float] = None,
    specials: bool = True,
    scale: Optional[float] = None,
    huge: bool = True,
    infinite: bool = True,
    nan: bool = True,
) -> Gen:
    """A random tensor of ``shape`` with a random layout and values (see the module doc).
    ``huge``, ``infinite``, ``nan`` False: no ±1e30, ±inf or NaN among the special values
    (attention: see test_fuzz_attention)."""
    shape = list(shape)
    nd = len(shape)
    if layouts is None:
        layouts = ["contiguous", "contiguous", "transposed", "sliced", "offset"]
        if expand and nd:
            layouts.append("expanded")
        if nd == 4:
            layouts.append("channels_last")
        if nd == 5:
            layouts.append("channels_last_3d")
    layout = case.choice(f"{name}.layout", layouts) if nd else "contiguous"
    if layout == "transposed" and nd < 2:
        layout = "contiguous"
    if low is not None:
        values = lambda s: (
            torch.rand(s, generator=case.gen, dtype=torch.float64) * (high - low) + low
        )  # noqa: E731
    else:
        if scale is None:  # without huge values, no 100-scale inputs either (their products are)
            scale = 10.0 ** case.rng.choice([-2, 0, 0, 0, 1, 2] if huge else [-2, 0, 0, 0, 1])
        values = lambda s: torch.randn(s, generator=case.gen, dtype=torch.float64) * scale  # noqa: E731
    if layout == "transposed":
        i, j = sorted(case.rng.sample(range(nd), 2))
        swapped = list(shape)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        base = values(swapped)
        view = lambda b, i=i, j=j: b.transpose(i, j)  # noqa: E731
    elif layout == "sliced":
        d = case.rng.randrange(nd)
        bigger = list(shape)
        bigger[d] = 2 * shape[d] + 1
        base = values(bigger)
        view = lambda b, d=d: b[(slice(None),) * d + (slice(1, None, 2),)]  # noqa: E731  (stride 2, offset 1)
    elif layout == "expanded":
        d = case.rng.randrange(nd)
        small = list(shape)
        small[d] = 1 if shape[d] else 0
        base = values(small)
        view = lambda b: b.expand(shape)  # noqa: E731
    elif layout == "offset":
        k = case.rng.randint(1, 5)
        base = values([math.prod(shape) + k])
        view = lambda b, k=k: b[k:].view(shape)  # noqa: E731
    elif layout in ("channels_last", "channels_last_3d"):
        base = values(shape)
        fmt = torch.channels_last if layout == "channels_last" else torch.channels_last_3d
        view = lambda b, fmt=fmt: b.contiguous(memory_format=fmt)  # noqa: E731
    else:
        base = values(shape)
        view = lambda b: b  # noqa: E731
    if specials and case.special and base.numel():
        flat = base.view(-1)
        replicated = layout == "expanded" and base.numel() < math.prod(shape)
        for _ in range(case.rng.randint(1, 3)):
            allowed = [
                v
                for v in SPECIALS
                if (huge or v not in HUGE)
                and (infinite or not math.isinf(v))
                and (nan or not math.isnan(v))
            ]
            value = case.rng.choice(allowed)
            if value in HUGE:
                if case.huge_left == 0:
                    continue
                case.huge_left -= 1
            pos = case.rng.randrange(flat.numel())
            if value in HUGE and replicated:
                # An expanded view repeats the value: several equal ±1e30 (a constant row or
                # channel of them), whose variance torch computes as rounding noise of 1e28
                # where fastdl's is 0 (long-profile cases of layer_norm and batch_norm). The
                # position is still drawn, so the other cases' draws stay as they were.
                continue
            flat[pos] = value
            case.infinities |= math.isinf(value)
            case.nans |= math.isnan(value)
            case.drawn.setdefault(f"{name}.specials", []).append((pos, value))
    return Gen(base, view, layout)


def mask_tensor(
    case: Case, name: str, shape: Sequence[int], p_true: float = 0.7, first: Optional[bool] = None
) -> Gen:
    """A bool tensor (contiguous): True with probability ``p_true``; ``first`` fixes index 0
    of the last dim (e.g. so that every query keeps a key)."""
    base = torch.rand(list(shape), generator=case.gen, dtype=torch.float64) < p_true
    if first is not None and base.numel():
        base[..., 0] = first
    return Gen(base, lambda b: b, "contiguous")


@dataclasses.dataclass
class Problem:
    """What a case runs. ``run(side, dtype, t)`` gets ``side`` "fastdl" or "torch", the dtype
    and the materialised tensors (a dict, fresh for each run) and returns ``(outputs,
    parameters)``: the outputs (a tensor or a tuple; non-float ones are compared exactly) and a
    dict of extra leaves whose gradients are compared (a module's parameters). ``grad`` names
    the inputs that require grad; ``state`` the inputs updated in place (compared after)."""

    tensors: dict[str, Gen]
    run: Callable[[str, torch.dtype, dict], tuple[Any, dict]]
    grad: Sequence[str] = ()
    state: Sequence[str] = ()
    #: outputs compared only for NaN/inf positions and raised-or-not (random dropout masks).
    values_differ: bool = False
    #: fastdl raises by design here (a clear error where torch's answer has no meaning): a
    #: fragment of its message; torch's result is then not compared.
    fastdl_raises: Optional[str] = None
    #: compare the forward only (torch's gradient is wrong here: see the generator).
    compare_grads: bool = True
    #: the reference's gradient is NaN where fastdl's is a number by design (torch.where's
    #: 0 * NaN in the branch it did not take, in the hard histogram's surrogate).
    reference_grad_nan_artifact: bool = False
    #: torch returns 0 for a NaN row on some paths (its sdpa's math path for short sequences,
    #: which nn.MultiheadAttention takes) and NaN on others (its flash kernel); fastdl always
    #: NaN. With a NaN input, fastdl may be NaN where torch is a number, never the reverse.
    torch_may_drop_nan: bool = False
    #: a non-finite result may be NaN on one side and +-inf on the other, as with infinite
    #: inputs (layer_norm with eps = 0: a variance that underflows makes 1 / sqrt(var) inf).
    non_finite_alike: bool = False


#: Calls torch rejects and fastdl accepts on purpose, by a fragment of torch's message: torch's
#: checks that trip on empty tensors (fastdl returns the empty result, with zero gradients).
TORCH_REJECTS_ON_PURPOSE = (
    "select(): index 0 out of range for tensor of size [0]",  # batch_norm with C = 0 and weights
    "cannot reshape tensor of 0 elements",  # MultiheadAttention with batch 0
    "Expected sequence length to be larger than 0 in RNN",  # LSTM/GRU over 0 steps: h_n = h_0
    "Only zero batch or zero channel inputs are supported",  # conv of an empty row padded: bias
)


@dataclasses.dataclass
class Result:
    raised: Optional[BaseException] = None
    outputs: list = dataclasses.field(default_factory=list)
    grads: dict = dataclasses.field(default_factory=dict)
    state: dict = dataclasses.field(default_factory=dict)


def _flat(out: Any) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [] if out is None else [out]


def execute(case: Case, problem: Problem, side: str, dtype: torch.dtype) -> Result:
    t = {k: g.make(dtype, grad=k in problem.grad) for k, g in problem.tensors.items()}
    try:
        out, params = problem.run(side, dtype, t)
        outs = _flat(out)
        leaves = {k: t[k] for k in problem.grad if t[k].is_floating_point()}
        leaves.update(params or {})
        diff = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        grads = {}
        # Where torch's gradient is wrong (compare_grads False) its backward may also write out
        # of bounds (max pooling's all-padding windows: a segmentation fault in float64), so it
        # is not run; fastdl's still is, for its raised-or-not.
        if diff and leaves and (problem.compare_grads or side == "fastdl"):
            gen = torch.Generator().manual_seed(case.seed + 1)
            gos = [
                torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in diff
            ]
            names = list(leaves)
            got = torch.autograd.grad(diff, [leaves[n] for n in names], gos, allow_unused=True)
            grads = {n: g for n, g in zip(names, got)}
    except Exception as exc:  # noqa: BLE001 -- raised-or-not is what is compared
        return Result(raised=exc)
    return Result(
        outputs=[o.detach() if isinstance(o, torch.Tensor) else o for o in outs],
        grads=grads,
        state={k: t[k].detach().clone() for k in problem.state},
    )


TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-8, 1e-9)}


def _typical(r: torch.Tensor) -> float:
    """A robust magnitude of a reference tensor: the 90th percentile of its finite |values|
    (so one ±1e30 does not loosen the tolerance of everything else), at least 1."""
    finite = r[r.isfinite()].abs()
    if finite.numel() == 0:
        return 1.0
    if finite.numel() > 100000:
        finite = finite[:: finite.numel() // 100000 + 1]
    return max(1.0, torch.quantile(finite, 0.9).item())


def _matches(a: torch.Tensor, x: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    same_nan = a.isnan() & x.isnan()
    same_inf = a.isinf() & x.isinf() & (a == x)
    close = a.isfinite() & x.isfinite() & ((a - x).abs() <= tol)
    return same_nan | same_inf | close


def compare_tensor(
    what: str,
    a,
    s,
    r,
    dtype: torch.dtype,
    values: bool = True,
    *,
    scale: Optional[float] = None,
    infinities: bool = False,
    nan_artifact: bool = False,
    extra_nan: bool = False,
) -> Optional[str]:
    """None when fastdl's ``a`` passes against torch's ``s`` (same dtype) and ``r`` (float64).

    ``scale``: the magnitude the absolute tolerance is relative to (default: ``r``'s typical
    magnitude). ``infinities``: the inputs held ±inf, so an element may be NaN on one side and
    ±inf on the other (inf - inf in a different order), but never non-finite against finite.
    A gradient that is None on one side (not connected: an empty output) equals zeros."""
    if (
        isinstance(a, torch.Tensor)
        and s is None
        and a.is_floating_point()
        and not bool((a != 0).any())
    ):
        return None
    if (
        isinstance(s, torch.Tensor)
        and a is None
        and s.is_floating_point()
        and not bool((s != 0).any())
    ):
        return None
    if a is None or s is None:
        if (a is None) != (s is None):
            return f"{what}: fastdl {'None' if a is None else 'a tensor'}, torch {'None' if s is None else 'a tensor'}"
        return None
    if not isinstance(a, torch.Tensor):
        return None if a == s else f"{what}: {a!r} != torch's {s!r}"
    if tuple(a.shape) != tuple(s.shape):
        return f"{what}: shape {tuple(a.shape)} != torch's {tuple(s.shape)}"
    if a.dtype != s.dtype:
        return f"{what}: dtype {a.dtype} != torch's {s.dtype}"
    if not a.is_floating_point():
        if torch.equal(a, s):
            return None
        bad = (a != s).nonzero()[:3].tolist()
        return f"{what}: differs from torch at {bad}"
    a64, s64 = a.double(), s.double()
    r64 = r.double() if r is not None else s64
    rtol, atol = TOL[dtype]
    scale = max(_typical(r64), scale or 0.0)
    if not values:  # only where NaN and infinities are
        ok = (a64.isnan() == s64.isnan()) | (a64.isnan() == r64.isnan())
    else:
        torch_err = torch.where(
            s64.isfinite() & r64.isfinite(), (s64 - r64).abs(), torch.zeros_like(r64)
        )
        tol_r = 2 * torch_err + rtol * r64.abs().nan_to_num(0, 0, 0) + atol * scale
        tol_s = rtol * s64.abs().nan_to_num(0, 0, 0) + atol * scale
        ok = _matches(a64, s64, tol_s) | _matches(a64, r64, tol_r)
        if infinities:
            ok |= ~a64.isfinite() & (~s64.isfinite() | ~r64.isfinite())
        if nan_artifact:
            ok |= a64.isfinite() & s64.isnan()
        if extra_nan:
            ok |= a64.isnan()
    if bool(ok.all()):
        return None
    idx = (~ok).nonzero()
    first = tuple(idx[0].tolist())
    return (
        f"{what}: {idx.shape[0]} of {a.numel()} elements differ; first at {first}: fastdl "
        f"{a64[first].item()!r}, torch {s64[first].item()!r}, float64 reference {r64[first].item()!r}"
    )


def check(case: Case, problem: Problem) -> None:
    """Run ``problem`` on both sides and assert fastdl agrees with torch (see the module doc)."""
    ours = execute(case, problem, "fastdl", case.dtype)
    if problem.fastdl_raises is not None:
        assert ours.raised is not None and problem.fastdl_raises in str(ours.raised), (
            f"{case}\nfastdl should raise (by design) an error saying {problem.fastdl_raises!r}, got "
            f"{ours.raised!r}"
        )
        return
    theirs = execute(case, problem, "torch", case.dtype)
    if (
        ours.raised is None
        and theirs.raised is not None
        and any(m in str(theirs.raised) for m in TORCH_REJECTS_ON_PURPOSE)
    ):
        return
    if (ours.raised is None) != (theirs.raised is None):
        side, exc = ("fastdl", ours.raised) if ours.raised is not None else ("torch", theirs.raised)
        raise AssertionError(f"{case}\nonly {side} raised: {type(exc).__name__}: {exc}") from exc
    if ours.raised is not None:  # torch's own exception type (an nn module's checks) or a clear one
        assert type(ours.raised) is type(theirs.raised) or isinstance(
            ours.raised, (RuntimeError, ValueError, TypeError, IndexError)
        ), f"{case}\nfastdl raised {type(ours.raised).__name__}: {ours.raised}"
        return
    ref = theirs if case.dtype == torch.float64 else execute(case, problem, "torch", torch.float64)
    if ref.raised is not None:
        ref = Result(
            outputs=[None] * len(theirs.outputs),
            grads=dict.fromkeys(theirs.grads),
            state=dict.fromkeys(theirs.state),
        )
    errors = []
    if len(ours.outputs) != len(theirs.outputs):
        errors.append(f"{len(ours.outputs)} outputs, torch {len(theirs.outputs)}")
    if problem.compare_grads and set(ours.grads) != set(theirs.grads):
        errors.append(f"gradients of {sorted(ours.grads)}, torch {sorted(theirs.grads)}")
    # Gradients that cancel to ~0 (softmax's shift invariance, identical rows) carry rounding
    # errors of the size of the other gradients: their tolerance is relative to the largest.
    # So do products of inputs (attention's dS K is of the size |dO| |V| |K|): the square of the
    # inputs' typical magnitude counts too.
    grad_scale = max(
        [
            _typical(g.double())
            for g in ref.grads.values()
            if isinstance(g, torch.Tensor) and g.is_floating_point() and g.numel()
        ]
        + [
            _typical(g.base) ** 2
            for g in problem.tensors.values()
            if g.base.is_floating_point() and g.base.numel()
        ]
        or [1.0]
    )
    inf = case.infinities or problem.non_finite_alike
    extra_nan = problem.torch_may_drop_nan and case.nans
    for i, (a, s, r) in enumerate(zip(ours.outputs, theirs.outputs, ref.outputs)):
        errors.append(
            compare_tensor(
                f"output {i}",
                a,
                s,
                r,
                case.dtype,
                not problem.values_differ,
                infinities=inf,
                extra_nan=extra_nan,
            )
        )
    for name in theirs.grads if problem.compare_grads else ():
        errors.append(
            compare_tensor(
                f"gradient of {name}",
                ours.grads.get(name),
                theirs.grads[name],
                ref.grads.get(name),
                case.dtype,
                not problem.values_differ,
                scale=grad_scale,
                infinities=inf,
                nan_artifact=problem.reference_grad_nan_artifact,
                extra_nan=extra_nan,
            )
        )
    for name in theirs.state:
        errors.append(
            compare_tensor(
                f"{name} after the call",
                ours.state[name],
                theirs.state[name],
                ref.state.get(name),
                case.dtype,
                infinities=inf,
            )
        )
    errors = [e for e in errors if e]
    assert not errors, f"{case}\n" + "\n".join(errors)


def module_pair(torch_module: torch.nn.Module, fastdl_type: type, dtype: torch.dtype, side: str):
    """A copy of ``torch_module`` in ``dtype`` (float64 for the reference), as fastdl's twin
    for ``side == "fastdl"``, and its parameters as gradient leaves."""
    m = copy.deepcopy(torch_module).to(dtype)
    if side == "fastdl":
        m = fastdl_type.from_torch(m)
    return m, dict(m.named_parameters())
