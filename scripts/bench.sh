#!/usr/bin/env bash
# Builds fastdl (scripts/setup.sh) and runs the benchmark suite: every op against the torch
# op it replaces, same inputs, same run. Extra arguments go to benchmarks/run.py
# (e.g. --quick, --ops layer_norm, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# By default glibc's allocator settings, as users run. On this project's VMs the first touch
# of fresh memory (page faults) is slow and erratic; FASTDL_BENCH_KEEP_MEMORY=1 keeps freed
# memory in the process, for torch and fastdl alike, so the kernels are timed rather than
# the faults (it favours ops that allocate a lot, such as the histogram reference).
if [ -n "${FASTDL_BENCH_KEEP_MEMORY:-}" ]; then
  export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736
fi
python benchmarks/run.py "$@"
