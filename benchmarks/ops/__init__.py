"""Op families of the benchmark suite, one module each.

To add a family, write ``benchmarks/ops/<family>.py`` defining

    def cases(device: str, quick: bool) -> list[harness.Case]

(``device`` is ``"cpu"`` or ``"cuda"``; ``quick`` asks for the small, fast set) and add
``<family>`` to ``FAMILIES``. Shapes come from ``docs/ANCHORS.md``.
"""

from __future__ import annotations

import importlib

from harness import Case, Result

FAMILIES = ("norm", "histogram", "pooling", "conv", "attention", "rnn", "sets", "models")


def collect(devices: list[str], quick: bool) -> tuple[list[Case], list[Result]]:
    """Every family's cases on ``devices``, and an ERROR row for each family that fails to load."""
    cases, errors = [], []
    for family in FAMILIES:
        try:
            module = importlib.import_module(f".{family}", __name__)
            for device in devices:
                cases += module.cases(device, quick)
        except Exception as exc:  # noqa: BLE001 (one broken family must not stop the others)
            message = f"{type(exc).__name__}: {exc}"
            errors.append(Result(family, "-", "-", ",".join(devices), "-", "ERROR", message))
    return cases, errors
