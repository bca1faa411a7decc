"""Side builds of libfastdl for the test-strength tools (scripts/mutate.py, scripts/coverage.sh).

A side build is a plain CMake build of the C++ library alone (target ``fastdl``, CPU only) in a
folder of its own under build/, so the editable install's build is left alone. Tests run on it
through ``LD_PRELOAD``: the dynamic loader then takes the side build's ``libfastdl.so`` for
the library that ``fastdl._C`` needs (the same soname), in the pytest process and in the
processes it starts (the C++ example, subprocess tests). :func:`check_loaded` proves that
the side build is what a test process loads.

Compiles go through ccache with ``CCACHE_BASEDIR`` at the repository root, so a side build
in ``build/<name>`` reuses the objects of the editable build when its flags are the same
(its compiler and CUDA architectures are copied from that build's cache for this reason).

Used as a module; ``python scripts/lib_build.py DIR [-D...]`` configures and builds DIR.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    """A build tool next to this interpreter (the venv's cmake and ninja), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        sys.exit(f"lib_build: {name} not found (run scripts/setup.sh first)")
    return found


def build_env() -> dict:
    """The environment of a side build's compiles: ccache paths relative to the repository."""
    return dict(os.environ, CCACHE_BASEDIR=str(REPO))


def _editable_cache_value(name: str) -> str | None:
    """A value from the editable build's CMakeCache.txt (build/<wheel tag>/), if there is one."""
    for cache in glob.glob(str(REPO / "build" / "cp*" / "CMakeCache.txt")):
        match = re.search(rf"^{name}:\w+=(.*)$", Path(cache).read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return None


def configure(build_dir: Path, defines: list[str] = ()) -> None:
    """Configures ``build_dir`` (once: later builds re-run CMake by themselves when needed)."""
    if (build_dir / "build.ninja").exists():
        return
    # The editable build's compiler (by the same path) and CUDA architectures (a compile
    # definition of every file), so that ccache serves its objects.
    archs = _editable_cache_value("FASTDL_CUDA_ARCHS") or "90"
    cxx = _editable_cache_value("CMAKE_CXX_COMPILER")
    defines = ([f"-DCMAKE_CXX_COMPILER={cxx}"] if cxx else []) + list(defines)
    cmd = [
        _tool("cmake"),
        "-S",
        str(REPO),
        "-B",
        str(build_dir),
        "-G",
        "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DFASTDL_CUDA=OFF",
        "-DFASTDL_CUDA_SIM=OFF",
        "-DFASTDL_BUILD_PYTHON=OFF",
        f"-DFASTDL_CUDA_ARCHS={archs}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        *defines,
    ]
    subprocess.run(cmd, check=True, env=build_env(), stdout=subprocess.DEVNULL)


def build(build_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Builds libfastdl in ``build_dir`` incrementally; returns the finished process (its
    output captured), raising on failure when ``check``."""
    result = subprocess.run(
        [_tool("ninja"), "-C", str(build_dir), "fastdl"],
        env=build_env(),
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        sys.exit(f"lib_build: building {build_dir} failed:\n{result.stdout[-3000:]}")
    return result


def library(build_dir: Path) -> Path:
    return build_dir / "libfastdl.so"


def test_env(lib: Path, **extra: str) -> dict:
    """The environment of a test process that loads ``lib`` instead of the installed libfastdl."""
    return dict(os.environ, LD_PRELOAD=str(lib), **extra)


def check_loaded(lib: Path) -> None:
    """Exits unless a Python process started with :func:`test_env` maps ``lib`` as its
    libfastdl once fastdl is imported."""
    probe = (
        "import fastdl; "
        "print([l.split()[-1] for l in open('/proc/self/maps') if 'libfastdl.so' in l][0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=test_env(lib), capture_output=True, text=True
    )
    loaded = out.stdout.strip()
    if out.returncode != 0 or Path(loaded).resolve() != lib.resolve():
        sys.exit(f"lib_build: the tests would not load {lib} (loaded: {loaded!r})\n{out.stderr}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    target = Path(sys.argv[1]).resolve()
    configure(target, sys.argv[2:])
    build(target)
    print(library(target))
