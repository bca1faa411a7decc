"""The benchmark harness itself (benchmarks/): what it times and reports, on tiny cases. No
time is asserted, only that the measurements exist, are consistent and are reported."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import harness  # noqa: E402
import report  # noqa: E402
import sweep  # noqa: E402

import fastdl.functional as FF  # noqa: E402


def _layer_norm_case():
    def make_inputs():
        return (torch.randn(64, 128, requires_grad=True), (128,))

    return harness.Case(
        "layer_norm",
        "64x128",
        torch.float32,
        "cpu",
        make_inputs,
        lambda x, s: FF.layer_norm(x, s),
        torch.nn.functional.layer_norm,
        bytes_fwd=2 * 64 * 128 * 4,
        bytes_fwd_bwd=5 * 64 * 128 * 4,
    )


def test_interleaved_calls_take_turns():
    """Single calls alternate: every step runs at least MIN_CALLS times, and the counts
    differ by at most one round."""
    calls = []
    steps = {"torch": lambda: calls.append("t"), "fastdl": lambda: calls.append("f")}
    times = harness._time_interleaved(steps, min_time=0.001, cuda=False)
    assert len(times["torch"]) >= harness.MIN_CALLS and len(times["fastdl"]) >= harness.MIN_CALLS
    assert abs(len(times["torch"]) - len(times["fastdl"])) <= 1
    timed = calls[2:]  # after the warm-up call of each
    # Each round calls both sides once, the order reversed every round: t f f t t f ...
    rounds = [timed[i : i + 2] for i in range(0, len(timed) - 1, 2)]
    assert all(sorted(r) == ["f", "t"] for r in rounds)
    assert rounds[0] == ["t", "f"] and rounds[1] == ["f", "t"]


def test_ceilings_are_measured():
    c = harness.measure_ceilings("cpu", quick=True)
    assert c["gemm_gflops"] > 0 and c["copy_gbps"] > 0
    assert "GFLOP/s" in harness.ceilings_line(c) and "GB/s" in harness.ceilings_line(c)


def test_row_has_both_timings_and_its_fraction_of_the_ceiling():
    ceilings = {"device": "cpu", "gemm_n": 1, "gemm_gflops": 100.0, "copy_gbps": 10.0}
    rows = harness.run_case(_layer_norm_case(), min_time=0.01, ceilings=ceilings)
    assert [r.mode for r in rows] == [harness.FWD, harness.FWD_BWD]
    for r in rows:
        assert r.status == "ok", r.message
        assert r.torch_ms > 0 and r.fastdl_ms > 0 and r.torch_block_ms > 0 and r.fastdl_block_ms > 0
        assert r.speedup == pytest.approx(r.torch_ms / r.fastdl_ms)
        assert r.speedup_blocks == pytest.approx(r.torch_block_ms / r.fastdl_block_ms)
        assert r.torch_calls >= harness.MIN_CALLS and r.fastdl_blocks >= harness.MIN_BLOCKS
        assert r.ceiling == "copy" and r.fastdl_of_ceiling == pytest.approx(r.fastdl_gbps / 10.0)
    table = report.markdown(rows)
    assert "blocks" in table.splitlines()[0] and "of ceiling" in table.splitlines()[0]
    assert "copy" in table


def test_mismatch_is_reported_not_timed_away():
    case = _layer_norm_case()
    case.fastdl = lambda x, s: FF.layer_norm(x, s) + 1
    rows = harness.run_case(case, min_time=0.01)
    assert all(r.status == "MISMATCH" for r in rows)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's clear_refs")
def test_sweep_peak_memory_sees_a_fresh_buffer():
    """The CPU peak is the resident-set high-water mark one call adds: a 64 MiB buffer the
    call fills shows, one it does not allocate does not."""
    sweep._fresh_large_buffers()
    big = sweep.peak_mib(lambda: torch.ones(16 << 20), "cpu")
    small = sweep.peak_mib(lambda: torch.ones(16), "cpu")
    assert big is not None and big >= 48 and small < 16


def test_sweep_writes_json_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    points = [
        {
            "op": "sdpa",
            "dimension": "L",
            "size": n,
            "shape": f"L{n}",
            "status": "ok",
            "torch_ms": n * 0.1,
            "fastdl_ms": n * 0.05,
            "torch_peak_mib": n * 1.0,
            "fastdl_peak_mib": 1.0,
        }
        for n in (128, 256)
    ]
    env = report.environment()
    png = sweep.write(str(tmp_path / "sweep.json"), env, points)
    assert os.path.getsize(tmp_path / "sweep.json") > 0 and os.path.getsize(png) > 1000
