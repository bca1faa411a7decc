"""Tools for fastdl's own test suite.

``cuda_sim()`` runs fastdl's CUDA kernels on CPU tensors, in the CUDA emulator: the same
``.cu`` sources compiled for the CPU against an emulated SIMT runtime (``libfastdl_cudasim``,
built with ``FASTDL_CUDA_SIM=ON``; see ``csrc/fastdl/common/cuda_sim.h``). Inside the context,
every ``torch.ops.fastdl.*`` call that reaches a kernel runs its CUDA kernel instead of its CPU
one: autograd, autocast and the argument checks are fastdl's as usual, the kernel is the CUDA
code. Barrier and warp-collective misuse, shared-memory races and out-of-bounds accesses raise
``RuntimeError("cuda-sim: ...")``; run the process under AddressSanitizer
(``scripts/test_cuda_sim.sh``) to have global memory checked too.

Example::

    from fastdl.testing import cuda_sim
    x = torch.randn(8, 32, dtype=torch.float16)
    with cuda_sim():
        y = fastdl.functional.layer_norm(x, (32,))    # layer_norm's CUDA kernels, on the CPU
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import _C

__all__ = [
    "cuda_sim",
    "cuda_sim_available",
    "cuda_sim_library",
    "outside_cuda_sim",
    "running_under_asan",
]

_load_lock = threading.Lock()
_loaded = False


def cuda_sim_library() -> Optional[str]:
    """The path of ``libfastdl_cudasim`` when this build has it, else None."""
    path = os.path.join(os.path.dirname(_C.__file__), "lib", "libfastdl_cudasim.so")
    return path if os.path.exists(path) else None


def cuda_sim_available() -> bool:
    """Whether the CUDA emulator was built (``FASTDL_CUDA_SIM=ON``)."""
    return cuda_sim_library() is not None


def running_under_asan() -> bool:
    """Whether this process runs under AddressSanitizer (libasan preloaded), which lets the
    emulator check global memory accesses too."""
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "__asan_region_is_poisoned")
    except OSError:
        return False


def _load() -> None:
    global _loaded
    with _load_lock:
        if _loaded:
            return
        path = cuda_sim_library()
        if path is None:
            raise RuntimeError(
                "fastdl.testing.cuda_sim: this build has no CUDA emulator; rebuild "
                "with FASTDL_CUDA_SIM=ON (scripts/test_cuda_sim.sh does)"
            )
        torch.ops.load_library(path)
        _loaded = True


def _plain_tensors(args, kwargs) -> bool:
    """Whether every tensor among the arguments is a real (not fake, functional...) tensor."""
    leaves = torch.utils._pytree.tree_leaves((args, kwargs))
    return all(
        type(t) in (torch.Tensor, torch.nn.Parameter) for t in leaves if isinstance(t, torch.Tensor)
    )


class _CudaSimMode(TorchDispatchMode):
    """Sends every fastdl op that reaches a kernel to its emulated CUDA kernel (the op of the
    same name in ``torch.ops.fastdl_cudasim``); every other op runs as usual."""

    @classmethod
    def is_infra_mode(cls) -> bool:
        # Like torch's own tracing modes: torch.compile then traces through it (with fake
        # tensors, which this mode passes on), and the compiled code runs the emulator.
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "fastdl" or not _plain_tensors(args, kwargs):
            # Other ops, and fastdl ops on fake or functional tensors (tracing, opcheck), run
            # as usual: their fake kernels are the op's own.
            return func(*args, **kwargs)
        emulated = getattr(getattr(torch.ops.fastdl_cudasim, func._opname), func._overloadname)
        return emulated(*args, **kwargs)


def _register_functionalized_ops() -> None:
    """Ops that update arguments in place (batch_norm's running statistics) reach modes as
    auto_functionalized higher-order operators under torch.compile and opcheck: run their
    plain (dense) form with the emulator still in place, so their fastdl op comes back to it."""
    from torch._higher_order_ops import auto_functionalize as af

    for hop, dense in (
        (af.auto_functionalized, af.auto_functionalized_dense),
        (af.auto_functionalized_v2, af.auto_functionalized_v2_dense),
    ):

        @hop.py_impl(_CudaSimMode)
        def _run(mode, *args, _dense=dense, **kwargs):
            with mode:
                return _dense(*args, **kwargs)


_register_functionalized_ops()


@contextlib.contextmanager
def cuda_sim(max_grid: Optional[tuple[int, int, int]] = None) -> Iterator[None]:
    """Run fastdl's CUDA kernels, in the emulator, for every fastdl op called inside.

    ``max_grid`` emulates a device with smaller grid limits (x, y, z; 0 keeps the real one),
    so that the kernels' paths past the limits (grid-stride loops over rows, bags, key
    splits) run at small sizes."""
    _load()
    if max_grid is not None:
        torch.ops.fastdl_cudasim._set_max_grid(*max_grid)
    try:
        with _CudaSimMode():
            yield
    finally:
        if max_grid is not None:
            torch.ops.fastdl_cudasim._set_max_grid(0, 0, 0)


@contextlib.contextmanager
def outside_cuda_sim() -> Iterator[None]:
    """Inside :func:`cuda_sim`, run the enclosed fastdl ops on their CPU kernels again (e.g. a
    CPU result to compare the emulated CUDA kernels with)."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        yield
