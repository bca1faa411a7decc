"""pytest configuration shared by every fastdl test: markers and a fixed random seed.

The reusable helpers (device/dtype parametrisation, reference comparison, gradcheck, opcheck,
torch.compile and bad-input checks) live in ``helpers.py``; test files do
``from helpers import ...`` (pytest puts this folder on ``sys.path``).
"""

import pytest
import torch


def pytest_configure(config):
    # Also declared in pyproject.toml; registered here so the suite runs from any rootdir.
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still run by default)")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so a failure reproduces alone."""
    torch.manual_seed(0)
    yield
