"""Reporting of the benchmark suite: the environment (CPU model, GPU, versions), the header
line, the markdown table of results and the JSON file (run.py, sweep.py). Timing and checking:
harness.py."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from datetime import datetime
from typing import Optional

import torch

from harness import Result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Where the numbers come from: machine, versions, fastdl build."""
    import fastdl

    cuda = torch.cuda.is_available()
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),  # 1 minute, before the run: others' load
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "fastdl": fastdl.build_info(),
        "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }


def header(env: dict) -> str:
    """One line naming the machine and the versions."""
    gpu = ", ".join(env["gpu"]) or "none"
    info = env["fastdl"]
    return (
        f"Machine: {env['cpu']} ({env['cpu_cores']} cores, {env['torch_threads']} torch threads, "
        f"load {env['load_average']}), "
        f"GPU: {gpu}; torch {env['torch']}"
        + (f" (cuDNN {env['cudnn']})" if env["cudnn"] else "")
        + f"; fastdl {info.get('version')} (cuda={info.get('cuda')}, archs={info.get('cuda_archs')})"
        + ("; malloc keeps freed memory" if env.get("malloc") else "")
        + f"; {env['date']}"
    )


def _num(x: Optional[float], fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _ms(x: Optional[float]) -> str:
    return _num(x, ".4f" if x is not None and x < 0.1 else ".3f")


def _rate(x: Optional[float]) -> str:
    """GB/s or TFLOP/s with about three significant digits."""
    return _num(x, ".2f" if x is None or x < 10 else ".1f" if x < 100 else ".0f")


def _x(speedup: Optional[float]) -> str:
    return _num(speedup, ".2f") + "x" * (speedup is not None)


def markdown(results: list[Result]) -> str:
    """The report table, then each problem once. speedup: interleaved single calls (the
    reported figure); blocks: many calls in a row; TFLOP/s only when some case counts flops;
    of ceiling: fastdl's GFLOP/s (gemm) or GB/s (copy) over the same-run ceiling."""
    flops = any(r.fastdl_tflops or r.torch_tflops for r in results)
    peaks = any(r.fastdl_peak_mib is not None for r in results)
    head = [
        "op",
        "shape",
        "dtype",
        "device",
        "mode",
        "torch ms",
        "fastdl ms",
        "speedup",
        "blocks",
        "GB/s",
    ]
    head += ["GFLOP/s"] * flops + ["of ceiling"]
    head += ["peak MiB fastdl", "peak MiB torch"] * peaks + ["status"]
    table = []
    for r in results:
        cells = [
            r.op,
            r.shape,
            r.dtype,
            r.device,
            r.mode,
            _ms(r.torch_ms),
            _ms(r.fastdl_ms),
            _x(r.speedup),
            _x(r.speedup_blocks),
            _rate(r.fastdl_gbps),
        ]
        cells += [_rate(r.fastdl_tflops * 1e3 if r.fastdl_tflops else None)] * flops
        cells += [f"{r.fastdl_of_ceiling:.0%} {r.ceiling}" if r.fastdl_of_ceiling else "-"]
        cells += [_num(r.fastdl_peak_mib, ".1f"), _num(r.torch_peak_mib, ".1f")] * peaks
        cells += [r.status]
        table.append(cells)
    widths = [max(len(row[i]) for row in [head] + table) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(c) for c in table
    ]
    notes: dict[tuple, list[str]] = {}
    for r in results:
        if r.message:
            notes.setdefault((r.op, r.shape, r.dtype, r.device, r.status, r.message), []).append(
                r.mode
            )
    if notes:
        out.append("")
        out += [
            f"- {op} {shape} {dtype} {dev} ({', '.join(modes)}): {st}: {msg}"
            for (op, shape, dtype, dev, st, msg), modes in notes.items()
        ]
    return "\n".join(out)


def write_json(
    path: str, env: dict, results: list[Result], ceilings: Optional[list] = None
) -> None:
    """``{"environment": {...}, "ceilings": [...], "results": [one record per row, all its
    fields]}``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            {
                "environment": env,
                "ceilings": ceilings or [],
                "results": [dataclasses.asdict(r) for r in results],
            },
            f,
            indent=1,
        )
        f.write("\n")
