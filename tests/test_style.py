"""The source tree's own rules (README, "How an op is put together"), checked on every file git
tracks: formatted (clang-format for C++/CUDA with .clang-format, ruff for Python with
pyproject.toml's settings), no Python lint errors, no source file over 600 lines, no function
over 100 (lizard), and no family's C++ including another family's folder (shared code lives in
common/). The tools are the versions scripts/setup.sh installs into the venv. docs/anchors
(measurement scripts kept as they were run) is left out."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 100
PYTHON_DIRS = ["python", "tests", "benchmarks", "scripts", "examples"]


def _tracked(*patterns: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", *patterns], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [f for f in out if not f.startswith("docs/")]


def _tool(name: str) -> str:
    exe = BIN / name
    assert exe.exists(), f"{name} missing from the venv: run scripts/setup.sh"
    return str(exe)


CXX = ("*.cpp", "*.h", "*.cu", "*.cuh")
SOURCES = (*CXX, "*.py")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def test_cpp_formatted():
    files = _tracked(*CXX)
    assert len(files) > 50
    r = _run([_tool("clang-format"), "--dry-run", "-Werror", *files])
    assert r.returncode == 0, "clang-format -i would change:\n" + r.stderr[-4000:]


def test_python_formatted_and_lint_free():
    r = _run([_tool("ruff"), "format", "--check", *PYTHON_DIRS])
    assert r.returncode == 0, "ruff format would change:\n" + r.stdout[-4000:]
    r = _run([_tool("ruff"), "check", *PYTHON_DIRS])
    assert r.returncode == 0, r.stdout[-4000:]


def test_no_file_over_600_lines():
    long = {}
    for f in _tracked(*SOURCES):
        n = len((REPO / f).read_text(errors="replace").splitlines())
        if n > MAX_FILE_LINES:
            long[f] = n
    assert not long, f"split these files (at most {MAX_FILE_LINES} lines): {long}"


def test_no_function_over_100_lines():
    files = _tracked(*SOURCES)
    r = _run([_tool("lizard"), "-L", str(MAX_FUNCTION_LINES), "-C", "1000", "-w", *files])
    assert r.returncode == 0 and not r.stdout.strip(), "functions too long:\n" + r.stdout[-4000:]


@pytest.mark.parametrize(
    "family_dir", sorted(p.name for p in (REPO / "csrc/fastdl").iterdir() if p.is_dir())
)
def test_no_family_includes_another(family_dir):
    """Each family's files include its own folder and common/ only; common/ includes no family."""
    include = re.compile(r'#include\s+"fastdl/([a-z_]+)/')
    foreign = []
    for f in _tracked(*(f"csrc/fastdl/{family_dir}/{p}" for p in CXX)):
        for m in include.finditer((REPO / f).read_text()):
            if m.group(1) not in (family_dir, "common"):
                foreign.append(f"{f}: fastdl/{m.group(1)}/")
    assert not foreign, "shared code belongs in common/: " + ", ".join(foreign)


def test_every_mutant_still_applies():
    """scripts/mutants.py's bugs are snippets of the kernels' text: each must still occur once
    in its file, or the mutation run (scripts/mutate.py) would silently test less."""
    r = _run([sys.executable, "scripts/mutate.py", "--check"])
    assert r.returncode == 0, r.stdout[-4000:]
