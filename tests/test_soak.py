"""The short soak (scripts/soak.py in CI): every example model trains with flat resident memory
and finite losses; the soak itself catches a leak; per-thread buffers kept between calls are
bounded and go away with their threads."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOAK = os.path.join(ROOT, "scripts", "soak.py")


def _soak(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SOAK, *args], capture_output=True, text=True, timeout=timeout
    )


def test_short_soak_every_model():
    done = _soak("--steps", "40", "--warmup", "10", "--bound-mib", "4")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines()[1:] if line.strip()]
    assert len(lines) == 5 and all(line.rstrip().endswith("ok") for line in lines), done.stdout


def test_soak_catches_a_leak():
    """A leak of 256 KiB a step (held by the script on purpose) fails the same bound."""
    done = _soak(
        "--steps",
        "40",
        "--warmup",
        "10",
        "--bound-mib",
        "4",
        "--models",
        "lenet",
        "--leak-kib-per-step",
        "256",
    )
    assert done.returncode == 1 and "FAIL: RSS grew" in done.stdout, (
        done.stdout + done.stderr[-2000:]
    )


THREAD_BUFFERS = r"""
import os, threading, torch
import fastdl.functional as FF
torch.set_num_threads(1)  # each Python thread runs the kernel itself, with its own buffers
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page / 2**20
x, w = torch.randn(1, 64, 64, 64), torch.randn(8, 64, 3, 3)  # 9 MiB of im2col columns
FF.conv2d(x, w, padding=1)
base = rss()
def call(event=None):
    FF.conv2d(x, w, padding=1)
    if event is not None:
        event.wait()
for _ in range(24):  # one after the other: each thread's buffer goes away with it
    t = threading.Thread(target=call); t.start(); t.join()
sequential = rss() - base
event = threading.Event()
alive = [threading.Thread(target=call, args=(event,)) for _ in range(12)]
for t in alive: t.start()
import time; time.sleep(1.0)
concurrent = rss() - base  # 12 threads alive at once hold 12 buffers
event.set()
for t in alive: t.join()
print(f"{sequential:.1f} {concurrent:.1f}")
"""


def test_per_thread_buffers_are_released_with_their_threads():
    done = subprocess.run(
        [sys.executable, "-c", THREAD_BUFFERS], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sequential, concurrent = map(float, done.stdout.split())
    buffer_mib = 64 * 9 * 64 * 64 * 4 / 2**20
    # The measurement sees the buffers (12 live threads hold about 12 of them) ...
    assert concurrent > 6 * buffer_mib, (sequential, concurrent)
    # ... and 24 threads one after the other leave a few behind (the allocator's per-thread
    # arenas keep some), not 24.
    assert sequential < 8 * buffer_mib, (sequential, concurrent)
