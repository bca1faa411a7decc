"""Scaling sweeps: one dimension of an op grows, the rest stay fixed, and time and peak memory
of torch and fastdl are recorded at each size (``python benchmarks/run.py --sweep``).

- sdpa: the sequence length L (B1 H8 D64): compute O(L^2) on both sides, memory O(L) for
  fastdl's fused kernel against torch's O(L^2) probabilities on the math path;
- lstm: the sequence length T (B16 I128 H256);
- isab: the set size n (B4 d128 h4 m32): O(n m) compute and memory;
- histogram: the bag size N (soft, bags 8, F64 B32): torch's reference materialises
  (bags, N, F, B), fastdl never does;
- conv2d: the batch N (C32 32x32 K64 3x3).

Each point is a harness case timed forward+backward (interleaved single calls, as the main
suite reports). Peak memory is what one call adds above what was in use before it: CUDA's
allocator peak, or on the CPU the process's resident-set high-water mark (reset through
/proc/self/clear_refs before the call), with glibc's mmap threshold fixed at 128 KiB so that
every large buffer is fresh memory the call touches (not a freed heap block it reuses). The points go to a JSON file and a PNG next to it
(time and peak memory against the size, log-log, one panel per op).
"""

from __future__ import annotations

import gc
import json
import os
from typing import Callable

import torch

import harness
import report
from ops.attention import sdpa_case
from ops.conv import conv_case
from ops.histogram import histogram_case
from ops.rnn import rnn_case
from ops.sets import isab_case

# op -> (the dimension that grows, its sizes (CPU), its sizes (CUDA), size -> Case).
SWEEPS: dict[str, tuple[str, list[int], list[int], Callable[[str, int], harness.Case]]] = {
    "sdpa": (
        "sequence length L",
        [128, 256, 512, 1024, 2048],
        [1024, 2048, 4096, 8192, 16384],
        lambda dev, n: sdpa_case(dev, torch.float32, 1, 8, n, 64, False),
    ),
    "lstm": (
        "sequence length T",
        [16, 32, 64, 128, 256],
        [64, 128, 256, 512, 1024],
        lambda dev, n: rnn_case("lstm", dev, torch.float32, n, 16, 128, 256),
    ),
    "isab": (
        "set size n",
        [500, 1000, 2000, 4000, 8000],
        [2500, 5000, 10000, 20000, 40000],
        lambda dev, n: isab_case(dev, 4, n, 128, 4, 32),
    ),
    "histogram": (
        "bag size N",
        [125, 250, 500, 1000, 2000],
        [500, 1000, 2000, 4000, 8000],
        lambda dev, n: histogram_case(dev, "soft", 8, n, 64, 32),
    ),
    "conv2d": (
        "batch N",
        [1, 2, 4, 8, 16],
        [8, 16, 32, 64, 128],
        lambda dev, n: conv_case(dev, torch.float32, n, 32, 32, 64, 1, False),
    ),
}


def _fresh_large_buffers() -> None:
    """glibc: allocations over 128 KiB always mmap'd and returned on free (M_MMAP_THRESHOLD
    fixed, so it no longer grows after frees), which makes each call's buffers show in RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _rss_peak_reset() -> bool:
    """Resets the resident-set high-water mark (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_mib(step: Callable, device: str) -> float | None:
    """What one call of ``step`` adds to the peak memory in use before it, in MiB."""
    gc.collect()
    if device.startswith("cuda"):
        return harness._peak_mib(step)
    if not _rss_peak_reset():
        return None
    base = _rss_kib("VmRSS")
    step()
    return max(0, _rss_kib("VmHWM") - base) / 1024


def run(device: str, ops: list[str], min_time: float, quick: bool) -> list[dict]:
    """Every point of the chosen sweeps (``quick``: the first three sizes)."""
    if not device.startswith("cuda"):
        _fresh_large_buffers()
    points = []
    for op in ops:
        dim, cpu_sizes, cuda_sizes, make = SWEEPS[op]
        sizes = cuda_sizes if device.startswith("cuda") else cpu_sizes
        for n in sizes[:3] if quick else sizes:
            case = make(device, n)
            case.modes = (harness.FWD_BWD,)
            row = harness.run_case(case, min_time)[0]
            point = {
                "op": op,
                "dimension": dim,
                "size": n,
                "shape": case.shape,
                "status": row.status,
                "torch_ms": row.torch_ms,
                "fastdl_ms": row.fastdl_ms,
            }
            if row.status == "ok":
                torch.manual_seed(0)
                sides = {
                    "torch": harness._Side(case.torch, harness._copy(case.make_inputs())),
                    "fastdl": harness._Side(case.fastdl, case.make_inputs()),
                }
                for name, side in sides.items():
                    out = side.forward(True)
                    grads = [torch.ones_like(o) if o.requires_grad else None for o in out]
                    del out
                    point[f"{name}_peak_mib"] = peak_mib(side.step(harness.FWD_BWD, grads), device)
                del sides
            points.append(point)
            print(
                f"sweep {op} {dim}={n}: torch {report._ms(row.torch_ms)} ms, "
                f"fastdl {report._ms(row.fastdl_ms)} ms, peak MiB torch "
                f"{report._num(point.get('torch_peak_mib'), '.1f')} / fastdl "
                f"{report._num(point.get('fastdl_peak_mib'), '.1f')} ({row.status})",
                flush=True,
            )
    return points


def write(path: str, env: dict, points: list[dict]) -> str:
    """The points as JSON at ``path`` and their plot next to it (``.png``); returns the PNG's path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"environment": env, "points": points}, f, indent=1)
        f.write("\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(p["op"] for p in points))
    fig, axes = plt.subplots(2, len(ops), figsize=(3.6 * len(ops), 6.4), squeeze=False)
    for col, op in enumerate(ops):
        mine = [p for p in points if p["op"] == op]
        for row, (key, unit) in enumerate((("ms", "ms per fwd+bwd"), ("peak_mib", "peak MiB"))):
            ax = axes[row][col]
            for side, style in (("torch", "o--"), ("fastdl", "s-")):
                xs = [p["size"] for p in mine if p.get(f"{side}_{key}")]
                ys = [p[f"{side}_{key}"] for p in mine if p.get(f"{side}_{key}")]
                if xs:
                    ax.plot(xs, ys, style, label=side)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([p["size"] for p in mine], [str(p["size"]) for p in mine])
            ax.minorticks_off()
            ax.set_xlabel(mine[0]["dimension"])
            ax.set_ylabel(unit)
            if row == 0:
                ax.set_title(op)
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(report.header(env), fontsize=7)
    fig.tight_layout()
    png = os.path.splitext(path)[0] + ".png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
