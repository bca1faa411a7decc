"""Run the fastdl benchmark suite: every fastdl op against the torch op it replaces.

    python benchmarks/run.py --quick --device cpu          # small CPU set, seconds per case
    python benchmarks/run.py --device cuda --ops layer_norm
    python benchmarks/run.py --sweep sdpa,isab --device cpu  # scaling: time and memory vs size

Progress goes to stderr; the machine header and a markdown table go to stdout, and every row
(with the environment) to a JSON file. The exit status is 1 when any row is MISMATCH or ERROR.
See harness.py for what is checked and timed, and ops/__init__.py to add an op family.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

import torch

import harness
import report
import ops
import sweep

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="the small CPU set and a shorter --min-time"
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="where to run (default: all available)",
    )
    p.add_argument("--ops", default="", help="comma-separated op names to run (default: all)")
    p.add_argument(
        "--json",
        default=None,
        help="output file (default: benchmarks/results/<device>-<date>.json)",
    )
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds of interleaved timing per side and mode, half that in blocks "
        "(default: 0.2 with --quick, else 1.0)",
    )
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument(
        "--sweep",
        nargs="?",
        const="all",
        default=None,
        metavar="OPS",
        help="instead of the suite, the scaling sweeps (sweep.py): comma-separated "
        "of " + ", ".join(sweep.SWEEPS) + " (default: all); JSON and PNG",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "all":
        devices = ["cpu"] + ["cuda"] * torch.cuda.is_available()
    elif args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("run.py: --device cuda, but torch sees no CUDA device")
    else:
        devices = [args.device]
    min_time = args.min_time or (0.2 if args.quick else 1.0)
    # fp32 means fp32 on both sides, as in anchors/measure_gpu.py.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    if args.sweep:
        return run_sweeps(args, devices, min_time)
    cases, results = ops.collect(devices, args.quick)
    if args.ops:
        wanted = set(args.ops.split(","))
        unknown = wanted - {c.op for c in cases} - {r.op for r in results}
        if unknown:
            sys.exit(
                f"run.py: unknown op(s) {sorted(unknown)}; known: {sorted({c.op for c in cases})}"
            )
        cases = [c for c in cases if c.op in wanted]
        results = [r for r in results if r.op in wanted]
    if args.list:
        print("\n".join(f"{c.label} ({', '.join(c.modes)})" for c in cases))
        return 0

    env = report.environment()
    print(report.header(env), file=sys.stderr)
    if env["load_average"] > 0.5 * env["cpu_cores"]:
        print(
            f"warning: load average {env['load_average']} on {env['cpu_cores']} cores: "
            "other work is running, CPU timings will be noisy",
            file=sys.stderr,
        )
    ceilings = {
        d: harness.measure_ceilings(d, args.quick) for d in sorted({c.device for c in cases})
    }
    for c in ceilings.values():
        print(harness.ceilings_line(c), file=sys.stderr)
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.label} ...", end=" ", file=sys.stderr, flush=True)
        rows = harness.run_case(case, min_time, ceilings.get(case.device))
        summary = (
            f"{r.mode} {r.status}" + (f" {r.speedup:.2f}x" if r.speedup else "") for r in rows
        )
        print(", ".join(summary), file=sys.stderr, flush=True)
        results += rows

    path = args.json or os.path.join(
        HERE, "results", f"{'+'.join(devices)}-{datetime.now().strftime('%Y-%m-%d-%H%M%S')}.json"
    )
    report.write_json(path, env, results, list(ceilings.values()))
    print(f"wrote {os.path.relpath(path)}", file=sys.stderr)
    print(report.header(env))
    print("\n".join(harness.ceilings_line(c) for c in ceilings.values()) + "\n")
    print(report.markdown(results))
    return int(any(r.status != "ok" for r in results))


def run_sweeps(args, devices: list[str], min_time: float) -> int:
    chosen = list(sweep.SWEEPS) if args.sweep == "all" else args.sweep.split(",")
    unknown = set(chosen) - set(sweep.SWEEPS)
    if unknown:
        sys.exit(f"run.py: unknown sweep(s) {sorted(unknown)}; known: {list(sweep.SWEEPS)}")
    env = report.environment()
    print(report.header(env), file=sys.stderr)
    for device in devices:
        points = sweep.run(device, chosen, min_time, args.quick)
        path = args.json or os.path.join(
            HERE, "results", f"sweep-{device}-{datetime.now().strftime('%Y-%m-%d-%H%M%S')}.json"
        )
        png = sweep.write(path, env, points)
        print(f"wrote {os.path.relpath(path)} and {os.path.relpath(png)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
