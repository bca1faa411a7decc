"""The contract every fastdl op's tests hold: the generic checks, written once.

Modelled on torchvision's ``RoIOpTester`` (pytorch/vision, test/test_ops.py): :class:`OpContract`
holds the checks as test methods, parametrised over the devices and dtypes of ``helpers`` (the
cuda and cuda_sim marks included, so ``scripts/test_cuda_sim.sh`` runs the same cases), and
each op's test file subclasses it, supplying only what is specific to its op::

    class TestLayerNormContract(OpContract):
        backward_name = "layer_norm"                       # named by the double-backward error

        def fn(self, x, w, b, *, ns, eps=1e-5):            # the fastdl function
            return FF.layer_norm(x, ns, w, b, eps)

        def reference(self, x, w, b, *, ns, eps=1e-5):     # torch's
            return F.layer_norm(x, ns, w, b, eps)

        def opcheck_samples(self, device, dtype):          # Sample(args, op=OP)
            ...

The base class is not collected (no ``Test`` prefix); a subclass named ``Test...`` is. The
checks taking a dtype run every pair of :data:`CONTRACT_DEVICE_DTYPES` (float16/bfloat16 on
the CPU too), the others every device of ``helpers.DEVICES``. One name each:

``test_opcheck``            ``check_opcheck`` of every :meth:`OpContract.opcheck_samples`
                            (the op handle in ``Sample.op``), every device and dtype.
``test_compile``            ``check_compile`` (``torch.compile(fullgraph=True)`` == eager:
                            outputs, gradients, in-place changes) of :meth:`compile_samples`;
                            ``check_compile_module`` where ``Sample.fn`` is a module.
``test_gradcheck``          float64 ``check_gradcheck`` of :meth:`gradcheck_samples`; the
                            arguments requiring grad are the differentiable ones.
``test_no_double_backward`` ``assert_no_double_backward`` of :meth:`double_backward_samples`,
                            and differentiating a gradient raises an error naming
                            ``Sample.backward_name`` (default :attr:`backward_name`) and
                            "double backward".
``test_inputs_unchanged``   forward and backward (and ``Sample.extra``, e.g. the raw backward
                            op) leave every input of :meth:`unchanged_samples` bitwise the
                            same, except the tensors in ``Sample.allow``; backward leaves the
                            output the same.
``test_empty_inputs``       :meth:`empty_samples` (tensors with a zero-size dimension)
                            against the reference, forward and gradients, then
                            :meth:`check_more` for what the op promises beyond that.
``test_noncontiguous``      :meth:`noncontiguous_samples` (each holds a non-contiguous tensor,
                            asserted) against the reference, forward and gradients, then
                            :meth:`check_more`.
``test_bad_dtype``          every :meth:`bad_dtype_calls` entry raises, its message naming the
                            argument (and any other words given).

A sample is a :class:`Sample`: positional ``args`` (tensors requiring grad are differentiated),
``kwargs`` given as they are to :meth:`fn` and :meth:`reference`, and per-check extras. A check
whose hook returns no sample for a device or dtype skips it (saying so), never passes empty.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence

import pytest
import torch

from helpers import (
    DEVICES,
    _tensors,
    assert_no_double_backward,
    assert_raises_naming,
    assert_unchanged,
    check_compile,
    check_compile_module,
    check_gradcheck,
    check_opcheck,
    compare_with_torch,
    device_dtypes,
)

__all__ = ["CONTRACT_DEVICE_DTYPES", "OpContract", "Sample"]

#: Every (device, dtype) pair, float16/bfloat16 on the CPU too (every fastdl op's CPU kernels
#: take them); the cuda and cuda_sim pairs are those of ``helpers.DEVICE_DTYPES``.
CONTRACT_DEVICE_DTYPES = device_dtypes(cpu_half=True)


@dataclasses.dataclass
class Sample:
    """One input case of a check.

    ``args``: positional arguments; tensors requiring grad are the differentiable ones.
    ``kwargs``: keyword arguments given as they are (shapes, flags, masks).
    ``name``: shown when the case fails.
    ``fn``: a function to use instead of :meth:`OpContract.fn` (a composition, a variant).
    ``ref``: a reference to use instead of :meth:`OpContract.reference`.
    ``op``: the op handle (OpOverloadPacket) for opcheck samples.
    ``grad_output``: the gradient to backward (non-contiguous samples; random by default).
    ``allow``: tensors the call may change (running statistics in training).
    ``extra``: a further call for the inputs-unchanged check (e.g. the raw backward op).
    ``backward_name``: what the double-backward error must name (default: the class's).
    ``dtype``: the dtype to judge the comparison by (default: the first floating tensor's).
    ``options``: keyword arguments for the check itself (gradcheck's ``fast_mode``,
    check_compile's tolerances).
    """

    args: Sequence = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    name: str = ""
    fn: Optional[Callable] = None
    ref: Optional[Callable] = None
    op: Any = None
    grad_output: Optional[torch.Tensor] = None
    allow: Sequence = ()
    extra: Optional[Callable[[], Any]] = None
    backward_name: Optional[str] = None
    dtype: Optional[torch.dtype] = None
    options: dict = dataclasses.field(default_factory=dict)


def _first_tensor(out: Any) -> torch.Tensor:
    tensors = _tensors(out)
    assert tensors, "the function returned no tensor"
    return tensors[0]


def _samples(samples: Iterable[Sample], what: str) -> list[Sample]:
    """The samples of a check; none skips the test (saying so), it never passes empty."""
    samples = list(samples)
    if not samples:
        pytest.skip(f"{what}: no sample for this device/dtype in this op's contract")
    return samples


@contextlib.contextmanager
def _case(sample: Sample, what: str):
    """Names the failing sample in the assertion's report."""
    try:
        yield
    except BaseException as e:
        if not isinstance(e, pytest.skip.Exception):
            e.add_note(f"({what} sample {sample.name!r})")
        raise


class OpContract:
    """The generic checks of a fastdl op (see the module docstring). Subclasses supply
    :meth:`fn`, :meth:`reference` and the ``*_samples`` hooks they need; a hook left as it is
    makes its check skip."""

    #: The op's name in its double-backward error ("fastdl.<name>_backward: double backward
    #: is not supported").
    backward_name: str = ""

    # ---- what a subclass supplies ------------------------------------------------------

    def fn(self, *args, **kwargs):
        """The fastdl function under test."""
        raise NotImplementedError

    def reference(self, *args, **kwargs):
        """The reference (torch's function, or fastdl.reference's composition)."""
        raise NotImplementedError

    def opcheck_samples(self, device, dtype) -> list[Sample]:
        return []

    def compile_samples(self, device) -> list[Sample]:
        return []

    def gradcheck_samples(self, device) -> list[Sample]:
        return []

    def double_backward_samples(self, device) -> list[Sample]:
        return self.gradcheck_samples(device)[:1]

    def unchanged_samples(self, device, dtype) -> list[Sample]:
        return []

    def empty_samples(self, device) -> list[Sample]:
        return []

    def check_more(self, check: str, sample: Sample, out, ref, args, ref_args) -> None:
        """Further checks after the comparison of an "empty" or a "noncontiguous" (``check``)
        sample: fastdl's and the reference's outputs and the argument copies each ran on (their
        gradients, running statistics they updated)."""

    def noncontiguous_samples(self, device, dtype) -> list[Sample]:
        return []

    def bad_dtype_calls(self, device) -> list[tuple]:
        """``(call, argument name, *other words)``: ``call()`` must raise a RuntimeError whose
        message names the argument (and the other words). ``(exc_type, call, name, ...)`` for
        another exception type."""
        return []

    # ---- helpers -----------------------------------------------------------------------

    def bound(self, sample: Sample, reference: bool = False) -> Callable:
        """``sample``'s function (or reference) with its keyword arguments bound."""
        f = (sample.ref or self.reference) if reference else (sample.fn or self.fn)
        return lambda *a: f(*a, **sample.kwargs)

    @staticmethod
    def _dtype(sample: Sample, dtype=None):
        if sample.dtype is not None:
            return sample.dtype
        if dtype is not None:
            return dtype
        floats = [t.dtype for t in _tensors(list(sample.args)) if t.is_floating_point()]
        return floats[0] if floats else torch.float32

    # ---- the checks --------------------------------------------------------------------

    @pytest.mark.parametrize("device, dtype", CONTRACT_DEVICE_DTYPES)
    def test_opcheck(self, device, dtype):
        for s in _samples(self.opcheck_samples(device, dtype), "opcheck"):
            with _case(s, "opcheck"):
                assert s.op is not None, "an opcheck sample names its op"
                check_opcheck(s.op, list(s.args), s.kwargs or None, **s.options)

    @pytest.mark.parametrize("device", DEVICES)
    def test_compile(self, device):
        for s in _samples(self.compile_samples(device), "compile"):
            with _case(s, "compile"):
                if isinstance(s.fn, torch.nn.Module):
                    check_compile_module(s.fn, *s.args, **s.options)
                else:
                    check_compile(self.bound(s), *s.args, **s.options)

    @pytest.mark.parametrize("device", DEVICES)
    def test_gradcheck(self, device):
        for s in _samples(self.gradcheck_samples(device), "gradcheck"):
            with _case(s, "gradcheck"):
                assert any(t.requires_grad for t in _tensors(list(s.args))), "nothing requires grad"
                check_gradcheck(self.bound(s), list(s.args), **s.options)

    @pytest.mark.parametrize("device", DEVICES)
    def test_no_double_backward(self, device):
        for s in _samples(self.double_backward_samples(device), "double backward"):
            with _case(s, "double backward"):
                fn = self.bound(s)
                assert_no_double_backward(fn, list(s.args))
                inputs = [t for t in _tensors(list(s.args)) if t.requires_grad]
                out = _first_tensor(fn(*s.args))
                grads = torch.autograd.grad(out.pow(2).sum(), inputs, create_graph=True)
                name = s.backward_name or self.backward_name
                assert name, "the contract needs the op's backward_name"
                assert_raises_naming(
                    RuntimeError,
                    lambda: sum(g.sum() for g in grads).backward(),
                    name,
                    "double backward",
                )

    @pytest.mark.parametrize("device, dtype", CONTRACT_DEVICE_DTYPES)
    def test_inputs_unchanged(self, device, dtype):
        for s in _samples(self.unchanged_samples(device, dtype), "inputs unchanged"):
            with _case(s, "inputs unchanged"):
                fn = self.bound(s)

                def run(s=s, fn=fn):
                    out = _first_tensor(fn(*s.args))
                    if out.requires_grad:  # backward leaves the output alone too
                        g = torch.ones_like(out) if s.grad_output is None else s.grad_output
                        assert_unchanged([out], lambda: out.backward(g))
                    if s.extra is not None:
                        s.extra()

                watched = [list(s.args), s.kwargs, s.grad_output]
                assert _tensors(watched), "no tensor to watch"
                assert_unchanged(watched, run, allow=s.allow)

    @pytest.mark.parametrize("device", DEVICES)
    def test_empty_inputs(self, device):
        for s in _samples(self.empty_samples(device), "empty inputs"):
            with _case(s, "empty inputs"):
                assert any(t.numel() == 0 for t in _tensors(list(s.args))), "no empty tensor"
                result = compare_with_torch(
                    self.bound(s),
                    self.bound(s, reference=True),
                    list(s.args),
                    self._dtype(s),
                    grad_output=s.grad_output,
                )
                self.check_more("empty", s, *result)

    @pytest.mark.parametrize("device, dtype", CONTRACT_DEVICE_DTYPES)
    def test_noncontiguous(self, device, dtype):
        for s in _samples(self.noncontiguous_samples(device, dtype), "non-contiguous"):
            with _case(s, "non-contiguous"):
                strided = _tensors([list(s.args), s.kwargs, s.grad_output])
                assert any(not t.is_contiguous() for t in strided), "every tensor is contiguous"
                result = compare_with_torch(
                    self.bound(s),
                    self.bound(s, reference=True),
                    list(s.args),
                    self._dtype(s, dtype),
                    grad_output=s.grad_output,
                    **s.options,
                )
                self.check_more("noncontiguous", s, *result)

    @pytest.mark.parametrize("device", DEVICES)
    def test_bad_dtype(self, device):
        calls = self.bad_dtype_calls(device)
        if not calls:
            pytest.skip("bad dtype: no call in this op's contract")
        for entry in calls:
            exc = RuntimeError
            if isinstance(entry[0], (type, tuple)):
                exc, entry = entry[0], entry[1:]
            call, *words = entry
            assert words, "a bad-dtype call names the argument"
            assert_raises_naming(exc, call, *words)
