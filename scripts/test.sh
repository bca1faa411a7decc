#!/usr/bin/env bash
# Builds fastdl (scripts/setup.sh: the library with its CUDA kernels compiled, and the CUDA
# emulator) and runs the tests: the CPU suite (and the CUDA cases on a GPU), then every CUDA
# test case through the emulator (scripts/test_cuda_sim.sh). Extra arguments go to both
# pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest tests -q -m "not cuda_sim" "$@"
FASTDL_SKIP_SETUP=1 bash scripts/test_cuda_sim.sh "$@"
