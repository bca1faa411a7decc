"""Argument checks shared by the Python wrappers, modules and models: one message per kind of
mistake, the same in every family."""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

size_any = Union[int, Sequence[int]]


def positive_int(value, name: str) -> int:
    """``value`` as an int if it is a positive integer (Python or NumPy; not a bool), else a
    ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def int_tuple(value: Optional[size_any], n: int, name: str, fn: str) -> list[int]:
    """``value`` as a list of ``n`` ints (an int or a 1-tuple is repeated), as torch's
    ``_ntuple``; any other length is a ValueError naming ``fastdl.<fn>`` and ``name``."""
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) == 1:
        return [int(value[0])] * n
    if len(value) != n:
        raise ValueError(
            f"fastdl.{fn}: {name} must be a single int or a tuple of {n} ints, got {value}"
        )
    return [int(v) for v in value]
