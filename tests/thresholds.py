"""What the path tests (``test_paths_<family>.py``) share: the CPU kernels' vector widths and a
fixture that runs a test with one thread and with several.

Each CPU kernel picks its code path from sizes compared with a threshold: the vector width
``L`` of ``at::vec::Vectorized<T>`` (so per dtype and per ISA), four-vector unrolls (``4 L``),
block and tile sizes, and the thread count (``at::get_num_threads()``: per-thread buffers,
whole images per thread, key splits). The path tests put shapes on both sides of each
threshold: below, at, above and at a non-multiple, computed from :func:`vec_width` so that
they straddle the thresholds of the ISA in use.

``threads`` (a fixture) runs a test once with 1 thread and once with the machine's thread
count (at least 2, so the multi-threaded partitions always run); ``FASTDL_TEST_THREADS=1,4``
overrides the list. The count is restored afterwards.
"""

from __future__ import annotations

import os

import pytest
import torch

import fastdl

#: The vector ISA of the CPU kernels in use (the widest this CPU runs, or ``FASTDL_CPU_ISA``).
CPU_ISA = fastdl.build_info()["cpu_isa"]

# at::vec's register width in bytes: 64 in the AVX-512 copy of the kernels (which the
# bfloat16-unit levels run too), 32 otherwise (AVX2, and the portable Vectorized<T>).
_VECTOR_BYTES = 64 if CPU_ISA in ("avx512", "avx512_bf16", "amx") else 32


def vec_width(dtype: torch.dtype) -> int:
    """Lanes of ``at::vec::Vectorized<T>`` for ``dtype`` in this build (16 float32 lanes with
    AVX-512, 8 with AVX2)."""
    return _VECTOR_BYTES // torch.empty((), dtype=dtype).element_size()


def around(n: int) -> list[int]:
    """``n - 1, n, n + 1``: just below, at and just above a threshold (sizes >= 1)."""
    return [m for m in (n - 1, n, n + 1) if m >= 1]


def _thread_counts() -> list[int]:
    env = os.environ.get("FASTDL_TEST_THREADS")
    if env:
        return sorted({int(n) for n in env.split(",") if n.strip()})
    return sorted({1, max(2, torch.get_num_threads())})


#: The thread counts every path test runs with.
THREAD_COUNTS = _thread_counts()


@pytest.fixture(params=THREAD_COUNTS, ids=lambda n: f"threads{n}")
def threads(request):
    """Runs the test with ``torch.set_num_threads(n)`` for each n of :data:`THREAD_COUNTS`
    (the kernels read ``at::get_num_threads()``); yields n and restores the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


#: Parametrisation over the CPU kernels' dtypes, for ``@pytest.mark.parametrize("dtype", DTYPES)``.
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


def dominant_keys(dtype: torch.dtype, positions: list[int], keys: int, dim: int):
    """Queries and keys (batch and head 1) whose query row i scores key ``positions[i]`` far
    above every other key: by 200 in float32 and 1000 in float64, past the largest argument
    of exp (88.7 and 709.8), so a softmax shifted by anything but the row's true maximum
    overflows to inf/NaN (exp(s - m) is the same number for any m on paper). ``dim`` must be
    at least ``len(positions)``; the other scores stay within a few units of 0."""
    rows = len(positions)
    assert dim >= rows
    margin = 200.0 if dtype == torch.float32 else 1000.0
    c = (margin * dim**0.5) ** 0.5  # scale * c^2 = margin, scale = 1 / sqrt(dim)
    q = torch.zeros(1, 1, rows, dim, dtype=torch.float64)
    k = 0.1 * torch.randn(1, 1, keys, dim, dtype=torch.float64)
    for i, p in enumerate(positions):
        q[0, 0, i, i] = c
        k[0, 0, p, i] += c
    return q.to(dtype), k.to(dtype)
