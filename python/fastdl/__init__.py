"""fastdl: hand-written CPU and CUDA kernels for PyTorch layers.

Ops are registered in the torch dispatcher as ``torch.ops.fastdl.*``; ``fastdl.functional``
wraps them with torch.nn.functional's signatures and ``fastdl.nn`` gives drop-in modules.
"""

import os as _os

import torch as _torch  # noqa: F401  (loads libtorch before libfastdl)

from . import _C  # noqa: F401  (loading it registers the ops)
from . import functional, models, nn  # functional registers the fake kernels too

# fastdl.patch is the function (its module stays importable as sys.modules["fastdl.patch"]).
from .patch import PATCHABLE_OPS, Patch, PatchStats, patch, patch_stats, reset_patch_stats

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """What this build contains.

    Returns a dict with ``version`` (fastdl), ``torch`` (the torch version it was built
    against), ``cuda`` (True when the CUDA kernels were compiled), ``cuda_archs``, ``cpu_isas``
    (the ISAs the CPU kernels were compiled for, lowest first: ``portable``, ``avx2``,
    ``avx512``, and the AVX-512 kernels with the CPU's bfloat16 units, ``avx512_bf16`` and
    ``amx``, for bfloat16 matrix products) and ``cpu_isa`` (the one in use: the widest this CPU
    runs, chosen when the library loads, or a lower one named by the environment variable
    ``FASTDL_CPU_ISA``).
    """
    return dict(_C.build_info())


def cmake_prefix_path() -> str:
    """The folder to add to ``CMAKE_PREFIX_PATH`` for ``find_package(fastdl)`` in C++."""
    return _os.path.join(_os.path.dirname(_C.__file__), "share", "cmake")


__all__ = [
    "PATCHABLE_OPS",
    "Patch",
    "PatchStats",
    "build_info",
    "cmake_prefix_path",
    "functional",
    "models",
    "nn",
    "patch",
    "patch_stats",
    "reset_patch_stats",
    "__version__",
]
