"""The CUDA emulator's own tests (kernels in tests/cuda_sim/kernels.cu).

Each kind of CUDA bug the emulator exists to catch is reported, naming the kernel and the
source line, and the correct version of the same kernel runs and gives the right answer:
missing barriers (shared-memory races), divergent warp shuffles, barriers reached at different
places, out-of-bounds global and shared accesses, dynamic shared memory beyond the limits,
empty grids; plus the documented semantics of the shuffles and of WMMA.
"""

import re

import pytest
import torch

import fastdl.testing
from helpers import CUDA_SIM_AVAILABLE

FAMILY = "the emulator itself"  # the emulator summary counts test cases per op family

pytestmark = [
    pytest.mark.cuda_sim,
    pytest.mark.skipif(
        not CUDA_SIM_AVAILABLE, reason="emulated CUDA tests run with scripts/test_cuda_sim.sh"
    ),
]

SOURCE = "tests/cuda_sim/kernels.cu"


def run(name: str, n: int = 0) -> torch.Tensor:
    fastdl.testing._load()
    return torch.ops.fastdl_cudasim_test.run(name, n)


def line_of(text: str) -> int:
    """The line of kernels.cu that contains `text` (the expected place of a report)."""
    with open(__file__.replace("test_cuda_sim.py", "cuda_sim/kernels.cu")) as f:
        for i, line in enumerate(f, 1):
            if text in line:
                return i
    raise AssertionError(text)


def raises(name: str, n: int, *patterns: str) -> str:
    with pytest.raises(RuntimeError) as info:
        run(name, n)
    message = str(info.value)
    assert "cuda-sim" in message or "shared memory, more than" in message, message
    for p in patterns:
        assert re.search(p, message), f"{p!r} not in: {message}"
    return message


def test_barrier_orders_shared_memory():
    out = run("neighbour", 64)
    assert torch.equal(out, (torch.arange(64) + 1).remainder(64).float())


def test_missing_barrier_is_a_race():
    line = line_of("out[threadIdx.x] = s[(threadIdx.x + 1) % n];")
    raises(
        "neighbour_race",
        64,
        "shared memory race",
        "neighbour_kernel",
        rf"kernels\.cu:{line}",
        "no __syncthreads",
    )


def test_write_write_race_and_its_fix():
    assert run("double_write", 0)[0].item() == 2.0
    raises("double_write_race", 0, "shared memory race", "__shared__ cell", "wrote it")


def test_warp_sum():
    assert run("warp_sum", 40).item() == sum(range(40))


def test_divergent_shuffle_names_kernel_and_line():
    # The induced-attention bug: shuffles inside `for (e = lane; e < n; e += 32)`.
    line = line_of("for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);")
    message = raises(
        "warp_sum_divergent",
        40,
        "divergent warp collective",
        rf"__shfl_xor_sync\(mask 0xffffffff\) at \S*kernels\.cu:{line}",
        "warp_sum_kernel",
    )
    assert "has exited" in message or "waits at" in message


def test_shuffle_semantics():
    out = run("shuffles")
    lane = torch.arange(32)
    seg8 = lane // 8 * 8
    expected = torch.stack(
        [
            (lane + 3) % 32,  # __shfl_sync
            torch.where(lane % 8 + 2 < 8, lane + 2, lane),  # __shfl_down_sync, width 8
            torch.where(lane % 8 >= 3, lane - 3, lane),  # __shfl_up_sync, width 8
            lane ^ 5,  # __shfl_xor_sync
            lane // 4 * 4 + (lane + 1) % 4,  # __shfl_sync, width 4
        ]
    ).float()
    del seg8
    assert torch.equal(out, expected)


def test_barrier_at_different_places_is_an_error():
    assert torch.equal(run("barrier", 64), torch.ones(64))
    raises("barrier_split", 64, r"__syncthreads\(\) not reached by every thread", "kernels\\.cu")


def test_exited_threads_do_not_block_a_barrier():
    out = run("early_exit", 40)
    assert torch.equal(out[:40], torch.ones(40))


def test_out_of_bounds_shared_write():
    assert run("shared_write", 16)[0].item() == 1.0
    raises(
        "shared_write_overrun",
        16,
        "out-of-bounds shared memory write of 4 bytes",
        "64 bytes from the start of the dynamic shared memory",
        "shared_write_kernel",
    )


@pytest.mark.skipif(
    not fastdl.testing.running_under_asan(),
    reason="global memory is checked under AddressSanitizer (scripts/test_cuda_sim.sh)",
)
def test_out_of_bounds_global_write():
    assert torch.equal(run("global_write", 33), torch.ones(33))
    raises(
        "global_write_overrun",
        33,
        "out-of-bounds or freed global memory write of 4 bytes",
        "global_write_kernel",
    )


def test_dynamic_shared_memory_limits():
    floats = 16384  # 64 KiB: above the default 48 KiB
    raises("big_shared", floats, "65536 bytes of dynamic shared memory", "opt-in")
    assert run("big_shared_reserved", floats)[0].item() == 3.0
    # Beyond what the device has: the launcher's own error, before any launch.
    raises(
        "big_shared_reserved",
        70000,
        "the buffer need 280000 bytes of shared memory, more than the 232448 this device allows",
    )


def test_empty_grid_is_an_error():
    raises("grid_empty", 1, "empty grid")


def test_wmma_matches_a_float_product():
    c = run("wmma")
    a = (torch.arange(256.0).remainder(7) - 3).view(16, 16)
    b = (torch.arange(256.0).remainder(5) - 2).view(16, 16).t()  # stored column-major
    assert torch.equal(c, 2 * a @ b)
