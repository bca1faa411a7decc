"""pytest configuration shared by every fastdl test: markers and a fixed random seed.

The reusable helpers (device/dtype parametrisation, reference comparison, gradcheck, opcheck,
torch.compile and bad-input checks) live in ``helpers.py``; test files do
``from helpers import ...`` (pytest puts this folder on ``sys.path``).
"""

import pytest
import torch

# float32 means float32: torch's own CUDA matmuls and convolutions (the references) may not use
# TF32, whose ~1e-3 error would loosen the bar for fastdl's float32 CUDA kernels.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        default=False,
        help="run the long differential-fuzzing profile (tests/fuzz; about an hour)",
    )


def pytest_configure(config):
    # Also declared in pyproject.toml; registered here so the suite runs from any rootdir.
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line(
        "markers", "cuda_sim: runs the CUDA kernels in the emulator (scripts/test_cuda_sim.sh)"
    )
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still run by default)")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so a failure reproduces alone."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _cuda_sim(request):
    """Tests of the cuda_sim device run inside fastdl.testing.cuda_sim(): their fastdl ops run
    the CUDA kernels, in the emulator, on the test's CPU tensors."""
    if request.node.get_closest_marker("cuda_sim") is None:
        yield
        return
    import fastdl.testing

    with fastdl.testing.cuda_sim():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Tags each report with its test module's FAMILY (the op family it covers), which reaches
    the terminal summary from pytest-xdist workers too."""
    outcome = yield
    family = getattr(getattr(item, "module", None), "FAMILY", None)
    if family:
        outcome.get_result().user_properties.append(("fastdl_family", family))


def _cuda_kernels_in_tree():
    """{(family, kernel name)} of every __global__ function under csrc/fastdl/<family>/cuda/."""
    import glob
    import os
    import re

    root = os.path.join(os.path.dirname(__file__), "..", "csrc", "fastdl")
    found = set()
    pattern = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(")
    for path in glob.glob(os.path.join(root, "*", "cuda", "*.cu")):
        family = os.path.basename(os.path.dirname(os.path.dirname(path)))
        with open(path) as f:
            found |= {(family, name) for name in pattern.findall(f.read())}
    return found


def _launched_kernels():
    """{(family, kernel name): launches} from the emulator, in this process."""
    import re

    import torch

    launched = {}
    for line in torch.ops.fastdl_cudasim._kernel_launches():
        symbol, count = line.rsplit("\t", 1)
        location = symbol.rsplit(" ", 1)[-1]
        family = re.search(r"csrc/fastdl/(\w+)/cuda/", location)
        head = (
            symbol.split("(", 1)[0]
            if "(anonymous" not in symbol
            else symbol.replace("(anonymous namespace)", "anon").split("(", 1)[0]
        )
        name = re.sub(r"<.*", "", head).rsplit("::", 1)[-1]
        if family:
            key = (family.group(1), name)
            launched[key] = launched.get(key, 0) + int(count)
    return launched


def pytest_sessionfinish(session):
    """Under pytest-xdist, a worker hands its emulator launch counts to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is None:
        return
    try:
        workeroutput["fastdl_kernel_launches"] = [
            [f, n, c] for (f, n), c in _launched_kernels().items()
        ]
    except (AttributeError, RuntimeError):
        pass


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent without pytest-xdist
def pytest_testnodedown(node, error):
    """The controller side of pytest_sessionfinish: sums the workers' launch counts."""
    total = node.config.__dict__.setdefault("_fastdl_kernel_launches", {})
    for family, name, count in getattr(node, "workeroutput", {}).get("fastdl_kernel_launches", []):
        total[(family, name)] = total.get((family, name), 0) + count


def pytest_terminal_summary(terminalreporter):
    """After a run with emulated CUDA tests: the test cases that passed in the emulator per op
    family, and every CUDA kernel of the tree with the number of times it was launched."""
    passed = [r for r in terminalreporter.stats.get("passed", []) if "cuda_sim" in r.keywords]
    if not passed:
        return
    import collections
    import os

    per_family = collections.Counter()
    for r in passed:
        stem = (
            os.path.basename(r.nodeid.split("::", 1)[0]).removeprefix("test_").removesuffix(".py")
        )
        per_family[dict(r.user_properties).get("fastdl_family", stem)] += 1
    write = terminalreporter.write_line
    write("")
    write(
        "cuda-sim: test cases passed in the emulator, per family: "
        + ", ".join(f"{k} {v}" for k, v in sorted(per_family.items()))
    )
    launched = terminalreporter.config.__dict__.get("_fastdl_kernel_launches")
    if launched is None:  # not under xdist: this process ran the kernels
        try:
            launched = _launched_kernels()
        except (AttributeError, RuntimeError):
            return
    kernels = _cuda_kernels_in_tree()
    never = sorted(k for k in kernels if k not in launched)
    for family in sorted({f for f, _ in kernels}):
        names = sorted(n for f, n in kernels if f == family)
        write(
            f"cuda-sim: {family}: "
            + ", ".join(f"{n} x{launched.get((family, n), 0)}" for n in names)
        )
    write(
        f"cuda-sim: {len(kernels) - len(never)} of {len(kernels)} CUDA kernels launched"
        + (f"; never launched: {', '.join(f'{f}/{n}' for f, n in never)}" if never else "")
    )
