"""The fuzz tests' case parametrisation: ``case_index`` runs over the fast profile's cases per
op in every run, or the long profile's with ``pytest --fuzz-long`` (option in tests/conftest.py)."""

import os

import pytest

from fuzzlib import FAST_CASES, FOUND, LONG_CASES


def pytest_generate_tests(metafunc):
    """Cases 0 .. n-1 of every op and the FOUND ones; FASTDL_FUZZ_CASES=a:b runs cases a .. b-1 instead (a
    different slice, e.g. to continue a long run), FASTDL_FUZZ_CASES=n the first n."""
    if "case_index" in metafunc.fixturenames:
        long = metafunc.config.getoption("fuzz_long")
        spec = os.environ.get("FASTDL_FUZZ_CASES")
        if spec:
            lo, _, hi = spec.rpartition(":")
            cases = range(int(lo or 0), int(hi))
        else:
            cases = range(LONG_CASES if long else FAST_CASES)
            # and, in every run, the cases fuzzing found bugs with (regression tests)
            found = FOUND.get(metafunc.function.__name__, ())
            cases = list(cases) + [c for c in found if c not in cases]
        metafunc.parametrize("case_index", cases)


@pytest.fixture
def fuzz_long(request):
    return request.config.getoption("fuzz_long")
