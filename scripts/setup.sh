#!/usr/bin/env bash
# Prepares a machine for fastdl and builds it: a virtual environment in .venv (reused when
# present), torch and the build/test dependencies from PyPI, then an editable build with the
# CUDA kernels compiled whenever torch has CUDA and nvcc is found.
#
#   FASTDL_TORCH   torch requirement (default torch==2.14.1, the CUDA 13.0 build)
#   FASTDL_TORCHVISION  the matching torchvision (default torchvision==0.29.1)
#   FASTDL_CUDA    AUTO | ON | OFF (default AUTO)
#   FASTDL_CUDA_ARCHS  CUDA architectures (default 90 here: the H100/H200 we run on)
#   FASTDL_CUDA_SIM  ON | OFF (default ON): also build the CUDA emulator (libfastdl_cudasim),
#                  which runs the CUDA kernels' tests on the CPU (scripts/test_cuda_sim.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, where we may install them: ccache, and qemu's user-mode emulator for the
# test that runs the library on emulated CPUs without AVX-512 and without AVX
# (tests/test_cpu_isa.py; skipped without it).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  command -v ccache >/dev/null 2>&1 || missing="$missing ccache"
  command -v qemu-x86_64 >/dev/null 2>&1 || [ "$(uname -m)" != x86_64 ] || missing="$missing qemu-user"
  if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    (apt-get update -qq && apt-get install -y -qq $missing) >/dev/null 2>&1 \
      || echo "setup: could not install$missing (slower builds; the emulated-CPU test is skipped)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
echo "setup: installing dependencies"
python -m pip install -q --upgrade pip
python -m pip install -q "${FASTDL_TORCH:-torch==2.14.1}" numpy "cmake>=3.26" ninja \
  "scikit-build-core>=0.10" "pybind11>=2.12" pytest pytest-xdist expecttest scikit-learn \
  "quapy>=0.2.3" tqdm matplotlib  # the quantification extra: its tests and example
# The style checks of tests/test_style.py, pinned: another formatter version formats otherwise.
python -m pip install -q "ruff==0.17.6" "clang-format==23.1.5" "lizard==1.24.3"
# The integration tests' real models (tests/test_real_models.py, test_transformers.py);
# torchvision must be the release built for the torch above.
python -m pip install -q "${FASTDL_TORCH:-torch==2.14.1}" "${FASTDL_TORCHVISION:-torchvision==0.29.1}" \
  "timm>=1.0,<2" "transformers>=4.48,<6"

# Paths below the checkout are hashed relative to it, so ccache serves one checkout's objects
# to another (a fresh clone in CI, a worktree) when the sources and flags are the same.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
echo "setup: building fastdl (FASTDL_CUDA=${FASTDL_CUDA:-AUTO}, archs ${FASTDL_CUDA_ARCHS:-90}, CUDA emulator ${FASTDL_CUDA_SIM:-ON})"
start=$(date +%s)
FASTDL_CUDA_ARCHS="${FASTDL_CUDA_ARCHS:-90}" FASTDL_CUDA_SIM="${FASTDL_CUDA_SIM:-ON}" \
  python -m pip install -q --no-build-isolation --no-deps -e .
python -c "import fastdl; print('setup: built', fastdl.build_info())"
echo "setup: build took $(( $(date +%s) - start )) s"
