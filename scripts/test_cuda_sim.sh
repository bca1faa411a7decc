#!/usr/bin/env bash
# The CUDA kernels' tests without a GPU: every test case of the cuda_sim device (the CUDA test
# cases, run by the CUDA emulator on CPU tensors) and the emulator's own tests, under
# AddressSanitizer so that global memory is checked too. Builds first (scripts/setup.sh with
# FASTDL_CUDA_SIM=ON) unless FASTDL_SKIP_SETUP=1. Extra arguments go to pytest. The emulator
# runs a launch on one CPU thread, so the cases are spread over FASTDL_SIM_WORKERS pytest-xdist
# processes (default: the CPU count, at most 4; 0 runs them in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${FASTDL_SKIP_SETUP:-0}" != 1 ]; then
  FASTDL_CUDA_SIM=ON bash scripts/setup.sh
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -c "import fastdl.testing as t, sys; sys.exit(0 if t.cuda_sim_available() else 'this build has no CUDA emulator: run FASTDL_CUDA_SIM=ON bash scripts/setup.sh')"
asan=$(gcc -print-file-name=libasan.so)
# libstdc++ too, so that AddressSanitizer finds the real __cxa_throw when it intercepts it.
stdcxx=$(gcc -print-file-name=libstdc++.so)
echo "test_cuda_sim: the CUDA test cases in the emulator, under AddressSanitizer ($asan)"
# Leaks are Python's and torch's to keep; the emulator reports its own errors as exceptions.
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:detect_stack_use_after_return=0:${ASAN_OPTIONS:-}"
export FASTDL_CUDA_SIM_TESTS=1
workers=${FASTDL_SIM_WORKERS:-$(python -c "import os; print(min(4, os.cpu_count() or 1))")}
LD_PRELOAD="$asan $stdcxx" python -m pytest -q -m cuda_sim -p no:cacheprovider -n "$workers" "$@"
