#!/usr/bin/env python3
"""Line and branch coverage of csrc/fastdl by the CPU suite (run by scripts/coverage.sh).

Builds libfastdl with ``FASTDL_COVERAGE=ON`` (gcov instrumentation) in a side build of its
own, build/coverage (scripts/lib_build.py; the editable install's build is untouched), clears
the previous counts, runs the CPU suite on that build (``pytest tests -m "not cuda_sim"``;
tests/test_wheel.py, which builds and installs a separate wheel, is left out), and prints,
per file of csrc/fastdl, lines and branches covered (gcovr; throw and unreachable branches
excluded), then the uncovered lines of every CPU kernel file (``*/cpu/*``, the shared
``common/cpu/`` helpers) and front file (``<family>/<op>.cpp``).

    python scripts/coverage.py [--report-only] [pytest args...]

``--report-only`` prints the report of the last run without building or testing. The gcovr
JSON summary is left in build/coverage/coverage.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lib_build  # noqa: E402

REPO = lib_build.REPO
BUILD = REPO / "build" / "coverage"
TARGET = 95.0  # percent of lines, for the kernel and front files


def kind(path: str) -> str:
    """ "kernel" (a CPU kernel or its shared helpers), "front" (schema, checks, autograd,
    drivers) or "" (CUDA emulator, headers of declarations)."""
    parts = path.split("/")  # relative to csrc/fastdl
    if "cpu" in parts:
        return "kernel"
    if len(parts) == 2 and parts[-1].endswith(".cpp") and parts[0] != "common":
        return "front"
    return ""


def gcovr(*args: str) -> dict:
    exe = Path(sys.executable).parent / "gcovr"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "gcovr"], check=True)
    out = subprocess.run(
        [
            str(exe),
            "--root",
            str(REPO),
            "--filter",
            str(REPO / "csrc/fastdl"),
            "--exclude-throw-branches",
            "--exclude-unreachable-branches",
            # one line of a template counts once, covered if any instance ran
            # it (else each float/double instance and each unnamed inlined copy
            # is a line of its own)
            "--merge-lines",
            "--gcov-ignore-parse-errors=negative_hits.warn_once_per_file",
            str(BUILD),
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def uncovered_lines(detail: dict) -> dict[str, list[int]]:
    """{file: [line numbers never run]} from gcovr's detailed JSON, which lists a line once per
    function it is in (per template instance): a line is uncovered when no entry ran it."""
    out = {}
    for f in detail["files"]:
        runs: dict[int, int] = {}
        for ln in f["lines"]:
            if not ln.get("gcovr/noncode"):
                runs[ln["line_number"]] = max(runs.get(ln["line_number"], 0), ln["count"])
        out[f["file"]] = sorted(n for n, count in runs.items() if count == 0)
    return out


def ranges(lines: list[int]) -> str:
    """1, 2, 3, 7 -> "1-3, 7"."""
    out, start = [], None
    for i, n in enumerate(lines):
        if start is None:
            start = n
        if i + 1 == len(lines) or lines[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def report() -> int:
    summary = gcovr("--json-summary", "-")
    (BUILD / "coverage.json").write_text(json.dumps(summary, indent=1))
    missing = uncovered_lines(gcovr("--json", "-"))
    rows = sorted(summary["files"], key=lambda f: f["filename"])
    print(f"{'file (csrc/fastdl/)':<46} {'lines':>15} {'branches':>15}")
    below = []
    for f in rows:
        name = f["filename"].removeprefix("csrc/fastdl/")
        lines = f"{f['line_covered']}/{f['line_total']} {f['line_percent']:5.1f}%"
        branches = (
            f"{f['branch_covered']}/{f['branch_total']} {f['branch_percent']:5.1f}%"
            if f["branch_total"]
            else "-"
        )
        tag = kind(name)
        print(f"{name:<46} {lines:>15} {branches:>15}  {tag}")
        if tag and f["line_percent"] < TARGET:
            below.append(name)
    print(
        f"{'total':<46} {summary['line_covered']}/{summary['line_total']} "
        f"{summary['line_percent']:5.1f}%  branches {summary['branch_covered']}/"
        f"{summary['branch_total']} {summary['branch_percent']:5.1f}%"
    )
    print("\nUncovered lines of the kernel and front files:")
    for f in rows:
        name = f["filename"].removeprefix("csrc/fastdl/")
        if kind(name) and missing.get(f["filename"]):
            print(f"  {name}: {ranges(missing[f['filename']])}")
    if below:
        print(f"\nBelow {TARGET:.0f}% of lines: {', '.join(below)}")
    return 0


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--report-only"]:
        return report()
    lib_build.configure(BUILD, ["-DFASTDL_COVERAGE=ON"])
    lib_build.build(BUILD)
    lib = lib_build.library(BUILD)
    lib_build.check_loaded(lib)
    for counts in BUILD.rglob("*.gcda"):  # counts of earlier runs (and of check_loaded)
        counts.unlink()
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests",
            "-q",
            "-m",
            "not cuda_sim",
            "-p",
            "no:cacheprovider",
            "--ignore=tests/test_wheel.py",
            *args,
        ],
        cwd=REPO,
        env=lib_build.test_env(lib),
    )
    if tests.returncode != 0:
        print(
            f"coverage: the suite failed (exit status {tests.returncode}); the report below "
            "counts what ran"
        )
    report()
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
