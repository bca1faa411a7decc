"""fastdl ops in DataLoader workers (fork and spawn), after torch.set_num_threads and
set_num_interop_threads changes, from several Python threads at once, and inside
torch.compile: the same results as a serial call, and no deadlock (each scenario runs in a
subprocess with a timeout; tests/process_workloads.py holds the workload)."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(*args: str, timeout: int = 240) -> str:
    try:
        done = subprocess.run(
            [sys.executable, os.path.join(HERE, "process_workloads.py"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=HERE,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{args}: no answer in {timeout} s (a deadlock?)\n{exc.stdout}\n{exc.stderr}"
        ) from exc
    assert done.returncode == 0, (
        f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("ok "), done.stdout
    return last


@pytest.mark.parametrize(
    "scenario", ["dataloader-fork", "dataloader-spawn", "num-threads", "python-threads", "compile"]
)
def test_same_results_as_serial(scenario):
    count = int(_run(scenario).split()[1])
    assert count > 0


def test_under_set_num_interop_threads():
    assert int(_run("python-threads", "3").split()[1]) > 0
