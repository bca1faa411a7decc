"""Builds examples/cpp with CMake against the installed fastdl package (find_package(fastdl)),
runs it, and checks every tensor it prints against torch.nn.functional in float64."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastdl

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp"
MIN_CMAKE = (3, 26)
TOL = dict(rtol=1e-10, atol=1e-12)  # float64: fastdl and torch differ only in summation order


def _tool(name):
    """`name` from the venv's bin folder (beside sys.executable) first, then from PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def _cmake():
    cmake = _tool("cmake")
    if cmake is None:
        return None
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return cmake if m and tuple(map(int, m.groups())) >= MIN_CMAKE else None


def _cxx():
    cxx = os.environ.get("CXX")
    return (
        shutil.which(cxx)
        if cxx
        else next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)
    )


def _run(cmd, what, timeout=600, **kwargs):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert r.returncode == 0, (
        f"{what} failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout}\n{r.stderr}"
    )
    return r.stdout


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The built example program."""
    cmake, cxx = _cmake(), _cxx()
    if cmake is None:
        pytest.skip(
            f"no cmake >= {'.'.join(map(str, MIN_CMAKE))} in {Path(sys.executable).parent} or on PATH"
        )
    if cxx is None:
        pytest.skip("no C++ compiler ($CXX, c++, g++ or clang++)")
    return build_example(
        tmp_path_factory.mktemp("cpp_example"), fastdl.cmake_prefix_path(), cmake, cxx
    )


def build_example(build, prefix, cmake, cxx):
    """examples/cpp configured in ``build`` with ``prefix`` on CMAKE_PREFIX_PATH, built;
    returns the program."""
    cmd = [
        cmake,
        "-S",
        EXAMPLE,
        "-B",
        build,
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={prefix}",
        f"-DCMAKE_CXX_COMPILER={cxx}",
    ]
    if ninja := _tool("ninja"):
        cmd += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    if ccache := shutil.which("ccache"):
        cmd += [f"-DCMAKE_CXX_COMPILER_LAUNCHER={ccache}"]
    _run(cmd, "cmake configure")
    _run([cmake, "--build", build, "--parallel"], "cmake build")
    return build / "fastdl_example"


def _devices():
    cuda = torch.cuda.is_available() and fastdl.build_info()["cuda"]
    return [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(
                    not cuda, reason="needs a CUDA device and a CUDA build of fastdl"
                ),
            ],
        ),
    ]


@pytest.fixture(scope="module", params=_devices())
def printed(request, example):
    """{name: tensor} from the program's output, plus the "version" line split in words."""
    # No LD_LIBRARY_PATH: the program must find libfastdl and libtorch through its RPATH.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = _run([example, request.param], "fastdl_example", env=env)
    tensors = {}
    for line in out.splitlines():
        name, shape, *values = line.split(" ")
        if name == "version":
            tensors[name] = [shape, *values]
            continue
        sizes = [int(s) for s in shape.split("x")]
        tensors[name] = torch.tensor([float(v) for v in values], dtype=torch.float64).reshape(sizes)
    return tensors


def wave(shape, scale, phase):
    """The example's deterministic inputs: sin(scale * i + phase) over the elements."""
    n = torch.Size(shape).numel()
    return torch.sin(torch.arange(n, dtype=torch.float64) * scale + phase).reshape(shape)


def _check_inputs(printed, prefix, inputs):
    assert any(k.startswith(f"{prefix}.") for k in printed), (
        f"the program printed no {prefix}.* tensors"
    )
    for name, expected in inputs.items():
        # The program's inputs are the formula's to the last bit (same libtorch, same kernels).
        torch.testing.assert_close(
            printed[f"{prefix}.{name}"],
            expected,
            rtol=0,
            atol=0,
            msg=lambda m: f"{prefix}.{name}: {m}",
        )


def _check(printed, name, expected):
    torch.testing.assert_close(
        printed[name], expected.detach(), **TOL, msg=lambda m: f"{name}: {m}"
    )


def test_version(printed):
    version, torch_version, device = printed["version"]
    info = fastdl.build_info()
    assert (version, torch_version, device == "cuda") == (
        info["version"],
        info["torch"],
        info["cuda"],
    )


def test_layer_norm(printed):
    inputs = {
        "input": wave((2, 3, 8), 0.37, 0.1),
        "weight": 1 + 0.5 * wave((3, 8), 0.21, 0.3),
        "bias": 0.1 * wave((3, 8), 0.45, 0.7),
        "grad_output": wave((2, 3, 8), 0.29, 0.5),
    }
    _check_inputs(printed, "layer_norm", inputs)
    x, w, b = (inputs[k].clone().requires_grad_() for k in ("input", "weight", "bias"))
    y = F.layer_norm(x, (3, 8), w, b, eps=1e-5)
    y.backward(inputs["grad_output"])
    _check(printed, "layer_norm.output", y)
    _check(printed, "layer_norm.input.grad", x.grad)
    _check(printed, "layer_norm.weight.grad", w.grad)
    _check(printed, "layer_norm.bias.grad", b.grad)


def test_batch_norm(printed):
    inputs = {
        "input": wave((4, 3, 5), 0.53, 0.2),
        "weight": 1 + 0.5 * wave((3,), 0.8, 0.4),
        "bias": 0.1 * wave((3,), 1.1, 0.9),
        "grad_output": wave((4, 3, 5), 0.31, 0.6),
        "running_mean": 0.1 * wave((3,), 0.7, 0.2),
        "running_var": 1 + 0.5 * wave((3,), 0.9, 0.5),
    }
    _check_inputs(printed, "batch_norm", inputs)
    x, w, b = (inputs[k].clone().requires_grad_() for k in ("input", "weight", "bias"))
    running_mean, running_var = inputs["running_mean"].clone(), inputs["running_var"].clone()
    y = F.batch_norm(x, running_mean, running_var, w, b, training=True, momentum=0.1, eps=1e-5)
    y.backward(inputs["grad_output"])
    _check(printed, "batch_norm.output", y)
    _check(printed, "batch_norm.input.grad", x.grad)
    _check(printed, "batch_norm.weight.grad", w.grad)
    _check(printed, "batch_norm.bias.grad", b.grad)
    _check(printed, "batch_norm.running_mean.updated", running_mean)
    _check(printed, "batch_norm.running_var.updated", running_var)
