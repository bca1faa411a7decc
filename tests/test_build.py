"""The built package: build information, registered ops, the C++ package files."""

import os
import platform
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fastdl

# Every op the library registers, one line each: a new op adds its line here, and the contract
# tests below then check its kernels. test_every_registered_op_is_listed keeps the list true.
OPS = [
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "batch_norm_backward",
    "batch_norm_forward",
    "conv2d_backward",
    "conv2d_forward",
    "gru_backward",
    "gru_forward",
    "histogram_backward",
    "histogram_forward",
    "induced_attention_backward",
    "induced_attention_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "lstm_backward",
    "lstm_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "sdpa_backward",
    "sdpa_forward",
    "sdpa_weights",
    "sdpa_weights_backward",
]
CSRC = os.path.join(os.path.dirname(__file__), "..", "csrc")


def test_every_registered_op_is_listed():
    registered = {
        n.removeprefix("fastdl::")
        for n in torch._C._dispatch_get_all_op_names()
        if n.startswith("fastdl::")
    }
    assert registered == set(OPS), (
        f"registered but not in OPS: {sorted(registered - set(OPS))}; "
        f"in OPS but not registered: {sorted(set(OPS) - registered)}"
    )


def test_build_info_keys_and_types():
    info = fastdl.build_info()
    assert {"version", "torch", "cuda", "cuda_archs", "cpu_isa", "cpu_isas"} <= set(info)
    # The ISAs of the CPU kernels, lowest first: always the portable copy; on x86-64 the AVX2
    # and AVX-512 copies and the two bfloat16-unit levels of the latter.
    assert info["cpu_isas"][0] == "portable"
    assert set(info["cpu_isas"]) <= {"portable", "avx2", "avx512", "avx512_bf16", "amx"}
    if platform.machine() in ("x86_64", "AMD64"):
        assert info["cpu_isas"] == ["portable", "avx2", "avx512", "avx512_bf16", "amx"]
    assert info["cpu_isa"] in info["cpu_isas"]
    assert isinstance(info["version"], str) and re.match(r"^\d+\.\d+\.\d+", info["version"])
    assert info["version"] == fastdl.__version__
    assert isinstance(info["torch"], str)
    # Built against the torch that is running (the extension is tied to torch's C++ ABI).
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_archs"], list)
    assert all(isinstance(a, str) and a for a in info["cuda_archs"])
    assert bool(info["cuda_archs"]) == info["cuda"]


def test_build_info_is_a_copy():
    info = fastdl.build_info()
    info["cuda"] = "changed"
    assert fastdl.build_info()["cuda"] != "changed"


def test_version_matches_distribution_metadata():
    from importlib.metadata import PackageNotFoundError, version

    try:
        dist_version = version("fastdl")
    except PackageNotFoundError:
        pytest.skip("fastdl is not installed as a distribution")
    assert dist_version == fastdl.__version__


@pytest.mark.parametrize("op", OPS)
def test_op_contract(op):
    """Every op has a CPU kernel, an Autograd kernel, a fake kernel for torch.compile/export,
    and a CUDA kernel iff CUDA was built."""
    from torch._library.simple_registry import singleton

    assert isinstance(getattr(torch.ops.fastdl, op).default, torch._ops.OpOverload)
    qualname = f"fastdl::{op}"
    for key in ("CPU", "Autograd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key), (
            f"{op}: no {key} kernel"
        )
    assert singleton.find(qualname).fake_impl.kernel is not None, f"{op}: no fake kernel"
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA")
    assert has_cuda_kernel == fastdl.build_info()["cuda"], f"{op}: CUDA kernel {has_cuda_kernel}"


def _public_header_text() -> str:
    """fastdl.h and the headers it includes, as one text."""
    top = open(os.path.join(CSRC, "fastdl", "fastdl.h")).read()
    included = re.findall(r'#include "(fastdl/[^"]+)"', top)
    return top + "".join(open(os.path.join(CSRC, h)).read() for h in included)


@pytest.mark.parametrize("op", OPS)
def test_op_declared_in_public_headers(op):
    """C++ programs reach every op: its function is declared in a header fastdl.h includes."""
    assert re.search(rf"\b{op}\(", _public_header_text()), f"fastdl.h does not declare {op}"


# Ops torch's CPU autocast changes the precision of have an AutocastCPU kernel; those it
# leaves in the input's dtype have none (the key falls through).
CPU_AUTOCAST = {
    "layer_norm_forward": True,
    "conv2d_forward": True,
    "sdpa_forward": True,
    "sdpa_weights": True,
    "lstm_forward": True,
    "induced_attention_forward": True,
    "batch_norm_forward": False,
    "gru_forward": False,
    "max_pool2d_forward": False,
    "avg_pool2d_forward": False,
    "histogram_forward": False,
}


@pytest.mark.parametrize("op", sorted(CPU_AUTOCAST))
def test_autocast_kernel_registered(op):
    registered = torch._C._dispatch_has_kernel_for_dispatch_key(f"fastdl::{op}", "AutocastCPU")
    assert registered == CPU_AUTOCAST[op], f"{op}: AutocastCPU kernel {registered}"


def test_fake_kernels_registered():
    """Every op runs under FakeTensorMode (what torch.compile and torch.export trace with)."""
    with FakeTensorMode():
        x = torch.empty(4, 3, 5)
        w = torch.empty(3)
        out, mean, rstd = torch.ops.fastdl.layer_norm_forward(x, [5], None, None, 1e-5)
        assert out.shape == x.shape and mean.shape == (4, 3, 1) and rstd.shape == (4, 3, 1)
        gi, gw, gb = torch.ops.fastdl.layer_norm_backward(
            out, x, [5], mean, rstd, None, [True, False, False]
        )
        assert gi.shape == x.shape and gw is None and gb is None
        rm, rv = torch.empty(3), torch.empty(3)
        out, sm, si = torch.ops.fastdl.batch_norm_forward(x, w, w, rm, rv, True, 0.1, 1e-5)
        assert out.shape == x.shape and sm.shape == (3,) and si.shape == (3,)
        gi, gw, gb = torch.ops.fastdl.batch_norm_backward(
            out, x, w, sm, si, True, [True, True, True]
        )
        assert gi.shape == x.shape and gw.shape == (3,) and gb.shape == (3,)


def test_cmake_prefix_path_has_config():
    prefix = fastdl.cmake_prefix_path()
    assert os.path.isdir(prefix)
    found = [
        os.path.join(root, f)
        for root, _, files in os.walk(prefix)
        for f in files
        if f == "fastdlConfig.cmake"
    ]
    assert found, f"no fastdlConfig.cmake under {prefix}"
    assert any(
        f for root, _, files in os.walk(prefix) for f in files if f == "fastdlConfigVersion.cmake"
    )
    text = open(found[0]).read()
    assert "fastdl" in text


def test_public_api():
    import fastdl.functional as F
    import fastdl.nn as fnn

    for name in ("layer_norm", "batch_norm"):
        assert callable(getattr(F, name)) and getattr(F, name).__doc__
    for name in ("LayerNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "convert"):
        assert hasattr(fnn, name)
    assert fastdl.build_info.__doc__ and fastdl.cmake_prefix_path.__doc__
