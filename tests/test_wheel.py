"""The installable wheel: ``pip wheel .`` builds one; installed into a fresh virtual
environment that holds only torch (and what torch requires), it gives a working
``import fastdl`` and a working ``find_package(fastdl)`` for examples/cpp.

The throwaway environment gets torch the way ``pip install torch`` would lay it out, beside
the packages pip installs, but as symbolic links to this environment's torch distribution and
its requirements (a copy of a CUDA build of torch is 5 GB). It sees nothing else of this
environment (no system site-packages, no fastdl source tree on its path), and pip installs the
wheel with no index, so the wheel's torch requirement must be met by the torch there.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastdl
from test_cpp_example import _cmake, _cxx, _run, build_example, wave

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Beside the editable build's folder (build/<wheel tag>), so ccache sees the same relative
# paths and the wheel's compilation is mostly cache hits.
BUILD_DIR = ROOT / "build" / "wheel-test"


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _torch_closure() -> list[md.Distribution]:
    """torch's distribution and every distribution it requires, with the requirements of the
    extras asked for (``cuda-toolkit[cublas,...]``), markers evaluated here."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [Requirement("torch")]
    while todo:
        req = todo.pop()
        try:
            dist = seen.get(_key(req.name)) or md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # not installed here, so not required here either
        seen[_key(req.name)] = dist
        for extra in {"", *req.extras} - {e for n, e in done if n == _key(req.name)}:
            done.add((_key(req.name), extra))
            for spec in dist.requires or []:
                dep = Requirement(spec)
                if dep.marker is None or dep.marker.evaluate({"extra": extra}):
                    todo.append(dep)
    return list(seen.values())


def _link_torch(site: Path) -> None:
    """Symbolic links in ``site`` to the top-level files and folders of torch's closure."""
    for dist in _torch_closure():
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if Path(f).parts[0] != ".."}:
            if top.endswith(".pth") or (site / top).exists():
                continue  # shared namespace folders (nvidia/) are linked once
            if (base / top).exists():
                (site / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip wheel .`` builds from this source tree (CPU kernels only)."""
    dist = tmp_path_factory.mktemp("dist")
    # ccache hashes paths below the checkout relative to it, so a fresh clone's wheel build
    # reuses an earlier checkout's objects.
    env = dict(
        os.environ, FASTDL_CUDA="OFF", CCACHE_BASEDIR=os.environ.get("CCACHE_BASEDIR", str(ROOT))
    )
    # A full build where ccache has not seen these sources (each CPU kernel file is compiled
    # once per ISA): up to ~20 minutes on 2 busy cores.
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-build-isolation",
            "--no-deps",
            "-w",
            str(dist),
            f"--config-settings=build-dir={BUILD_DIR}",
        ],
        "pip wheel",
        env=env,
        timeout=1800,
    )
    wheels = list(dist.glob("fastdl-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh virtual environment holding torch, with the wheel installed by pip (this
    environment's pip, run for the new one: the new one has nothing but torch)."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], "python -m venv")
    python = root / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            "site-packages",
        ).strip()
    )
    _link_torch(site)
    probe = "import importlib.util as u; print(u.find_spec('fastdl'), u.find_spec('pytest'))"
    assert _run([str(python), "-I", "-c", probe], "probe").split() == ["None", "None"]
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", str(wheel)],
        "pip install the wheel",
    )
    return root


def test_wheel_metadata_and_contents(wheel):
    """The wheel requires the torch release it was built against, and holds the Python
    package, libfastdl, its headers and its CMake package."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    release = torch.__version__.split("+")[0]
    assert f"Requires-Dist: torch=={release}" in meta.splitlines()
    for field in ("Summary: ", "License: ", "Classifier: ", "Project-URL: ", "Requires-Python: "):
        assert field in meta, field
    assert "Provides-Extra: transformers" in meta
    for required in (
        "fastdl/__init__.py",
        "fastdl/patch.py",
        "fastdl/integrations/transformers.py",
        "fastdl/lib/libfastdl.so",
        "fastdl/include/fastdl/fastdl.h",
        "fastdl/share/cmake/fastdl/fastdlConfig.cmake",
    ):
        assert required in names, required
    assert any(re.fullmatch(r"fastdl/_C\..*\.so", n) for n in names)


_SMOKE = """
import sys, torch, fastdl
import torch.nn.functional as F
x = torch.randn(4, 3, 8, dtype=torch.float64, requires_grad=True)
y = fastdl.functional.layer_norm(x, (8,))
y.sum().backward()
torch.testing.assert_close(y, F.layer_norm(x, (8,)), rtol=1e-12, atol=1e-12)
with fastdl.patch():
    img = torch.randn(2, 3, 9, 9)
    out = F.max_pool2d(F.conv2d(img, torch.randn(4, 3, 3, 3)), 2)
assert fastdl.patch_stats().fastdl == {"conv2d": 1, "max_pool2d": 1}, fastdl.patch_stats()
print(fastdl.__file__)
print(fastdl.build_info()["version"], fastdl.build_info()["torch"])
print(fastdl.cmake_prefix_path())
"""


def test_import_in_fresh_venv(venv):
    """``import fastdl`` in the new environment loads the installed copy, and its ops work."""
    out = _run([str(venv / "bin" / "python"), "-I", "-c", _SMOKE], "smoke test").splitlines()
    assert Path(out[0]).resolve().is_relative_to(venv.resolve())
    assert out[1] == f"{fastdl.__version__} {fastdl.build_info()['torch']}"
    assert Path(out[2]).resolve().is_relative_to(venv.resolve())


def test_find_package_from_wheel(venv, tmp_path):
    """examples/cpp builds with CMAKE_PREFIX_PATH from the installed wheel, runs (finding
    libfastdl and libtorch through its RPATH) and prints layer_norm's results."""
    cmake, cxx = _cmake(), _cxx()
    if cmake is None or cxx is None:
        pytest.skip("no cmake >= 3.26 or no C++ compiler")
    prefix = _run(
        [
            str(venv / "bin" / "python"),
            "-I",
            "-c",
            "import fastdl; print(fastdl.cmake_prefix_path())",
        ],
        "prefix",
    ).strip()
    build = tmp_path / "example"
    program = build_example(build, prefix, cmake, cxx)
    found = re.search(r"^fastdl_DIR:PATH=(.*)$", (build / "CMakeCache.txt").read_text(), re.M)
    assert found and Path(found.group(1)).resolve().is_relative_to(venv.resolve()), found
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = _run([program, "cpu"], "fastdl_example", env=env)
    lines = {line.split(" ")[0]: line.split(" ")[1:] for line in out.splitlines()}
    assert lines["version"][:2] == [fastdl.__version__, fastdl.build_info()["torch"]]
    shape, *values = lines["layer_norm.output"]
    x = wave((2, 3, 8), 0.37, 0.1)
    w, b = 1 + 0.5 * wave((3, 8), 0.21, 0.3), 0.1 * wave((3, 8), 0.45, 0.7)
    expected = F.layer_norm(x, (3, 8), w, b, eps=1e-5)
    got = torch.tensor([float(v) for v in values], dtype=torch.float64).reshape(expected.shape)
    assert shape == "x".join(map(str, expected.shape))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
