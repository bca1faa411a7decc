#!/usr/bin/env python3
"""Mutation testing of the CPU kernels: plants each bug of scripts/mutants.py in turn, rebuilds
libfastdl incrementally in a side build (build/mutate, see scripts/lib_build.py: the editable
install's build is untouched), runs the mutant's tests on it with ``-x`` and reports whether
they caught it (a failing test, a crash or a timeout) or it survived.

    python scripts/mutate.py            # every mutant (about an hour on 2 cores)
    python scripts/mutate.py --quick    # the issue-18 bugs against the path tests (CI)
    python scripts/mutate.py --only rnn --only "sdpa causal"   # mutants whose name has these
    python scripts/mutate.py --list | --check   # list them; check every snippet still applies

The source file is changed in place and always restored: on success, failure, Ctrl-C and
SIGTERM; if the process is killed outright, the original is kept in build/mutate/pending.json
and the next run restores it before anything else (if the file still holds that mutant).
Before the mutants, the tests run once on the unmutated side build (they must pass, or a
"caught" would mean nothing). Exit status 0 when every mutant was caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lib_build  # noqa: E402
from mutants import MUTANTS, Mutant  # noqa: E402

REPO = lib_build.REPO
BUILD = REPO / "build" / "mutate"
PENDING = BUILD / "pending.json"


def restore_pending() -> None:
    """Puts back a file a killed run left mutated, only if it still holds that mutant (a file
    since moved, deleted or edited is left alone: restoring it would bring back old code)."""
    if not PENDING.exists():
        return
    saved = json.loads(PENDING.read_text())
    path = REPO / saved["path"]
    if path.exists() and path.read_text() == saved.get("mutated"):
        path.write_text(saved["original"])
        print(f"mutate: restored {saved['path']} left mutated by an earlier run")
    else:
        print(
            f"mutate: {saved['path']} no longer holds the mutant an earlier run left; "
            "not restored (check `git diff csrc/`)"
        )
    PENDING.unlink()


def locate(m: Mutant) -> tuple[Path | None, str]:
    """The file the mutant applies to and a problem (empty when none): the snippet must occur
    exactly once; a file that moved is found by its snippet under csrc/fastdl."""
    path = REPO / m.file
    if path.exists():
        count = path.read_text().count(m.original)
        if count == 1:
            return path, ""
    hits = [
        p
        for p in (REPO / "csrc" / "fastdl").rglob("*")
        if p.is_file() and p.suffix in (".h", ".cpp") and p.read_text().count(m.original) == 1
    ]
    if path.exists():
        where = f" (now in {', '.join(str(h.relative_to(REPO)) for h in hits)})" if hits else ""
        return None, f"snippet found {count} times in {m.file}{where}"
    if len(hits) == 1:
        return hits[0], f"(moved: {m.file} -> {hits[0].relative_to(REPO)})"
    return None, f"{m.file} is gone and the snippet is in {len(hits)} other files"


def run_tests(tests: list[str], timeout: int) -> tuple[str, str]:
    """Runs pytest on the side build; returns (outcome, detail): "passed" or "failed" (with the
    first failing test), "crashed" (signal/exit status) or "timeout"."""
    lib = lib_build.library(BUILD)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not cuda_sim",
        *tests,
    ]
    try:
        out = subprocess.run(
            cmd,
            cwd=REPO,
            env=lib_build.test_env(lib),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout} s"
    if out.returncode == 0:
        return "passed", ""
    failing = [
        line.split(" - ")[0].split(" ", 1)[1]
        for line in out.stdout.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]
    if out.returncode == 1 and failing:
        return "failed", failing[0]
    return "crashed", f"exit status {out.returncode}: {(out.stdout + out.stderr)[-300:]!r}"


def apply_and_test(m: Mutant, path: Path, tests: list[str], timeout: int) -> tuple[str, str]:
    original = path.read_text()
    mutated = original.replace(m.original, m.replacement, 1)
    PENDING.write_text(
        json.dumps({"path": str(path.relative_to(REPO)), "original": original, "mutated": mutated})
    )
    try:
        path.write_text(mutated)
        built = lib_build.build(BUILD, check=False)
        if built.returncode != 0:
            return "invalid", "does not compile: " + built.stdout[-300:].replace("\n", " ")
        outcome, detail = run_tests(tests, timeout)
        return {"passed": "SURVIVED", "failed": "caught"}.get(
            outcome, f"caught ({outcome})"
        ), detail
    finally:
        path.write_text(original)
        PENDING.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="only the QUICK mutants, each against its path tests (CI)",
    )
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="only mutants whose name contains this (repeatable)",
    )
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument(
        "--check", action="store_true", help="check that every mutant applies (no build) and exit"
    )
    ap.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the run of the tests on the unmutated build",
    )
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutant's tests")
    args = ap.parse_args()

    # Ctrl-C raises KeyboardInterrupt; SIGTERM does the same, so `finally` restores the file.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    BUILD.mkdir(parents=True, exist_ok=True)
    restore_pending()

    chosen = [
        m
        for m in MUTANTS
        if (m.quick or not args.quick)
        and (not args.only or any(o.lower() in m.name.lower() for o in args.only))
    ]
    if args.list or args.check:
        bad = 0
        for m in chosen:
            path, problem = locate(m)
            bad += path is None or (args.check and bool(problem))  # --check: moved too
            print(f"{'Q' if m.quick else ' '} {m.name:<80} {problem or m.file}")
        print(f"mutate: {len(chosen)} mutants" + (f", {bad} with problems" if bad else ""))
        return 1 if bad else 0

    def tests_of(m: Mutant) -> list[str]:
        return list(m.tests[:1] if args.quick else m.tests)

    lib_build.configure(BUILD)
    lib_build.build(BUILD)
    lib_build.check_loaded(lib_build.library(BUILD))
    if not args.no_baseline:
        union = list(dict.fromkeys(t for m in chosen for t in tests_of(m)))
        print(f"mutate: baseline, the unmutated build against {len(union)} test files")
        outcome, detail = run_tests(union, 4 * args.timeout)
        if outcome != "passed":
            print(f"mutate: the tests fail without a mutant ({outcome}: {detail}); stopping")
            return 1

    results = []
    for i, m in enumerate(chosen, 1):
        path, problem = locate(m)
        start = time.time()
        if path is None:
            result, detail = "invalid", problem
        else:
            result, detail = apply_and_test(m, path, tests_of(m), args.timeout)
        results.append((m, result, detail, time.time() - start))
        print(f"[{i}/{len(chosen)}] {result:<16} {m.name}  {detail[:150]}", flush=True)
    lib_build.build(BUILD)  # leave the side build unmutated

    caught = sum(r.startswith("caught") for _, r, _, _ in results)
    lines = ["| mutant | file | result | caught by | s |", "|---|---|---|---|---|"]
    lines += [
        f"| {m.name} | {m.file.removeprefix('csrc/fastdl/')} | {r} | {d[:120]} | {t:.0f} |"
        for m, r, d, t in results
    ]
    report = "\n".join(lines) + f"\n\n{caught} of {len(results)} mutants caught\n"
    (BUILD / ("report-quick.md" if args.quick else "report.md")).write_text(report)
    print("\n" + report)
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
