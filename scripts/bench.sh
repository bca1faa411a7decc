#!/usr/bin/env bash
# Builds fastdl (scripts/setup.sh) and runs the benchmark suite: every op against the torch
# op it replaces, same inputs, same run. Extra arguments go to benchmarks/run.py
# (e.g. --quick, --ops layer_norm, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# This machine's VM makes first touches of fresh memory (page faults) slow and erratic; keep
# freed memory in the process so both torch and fastdl time their kernels, not the faults.
# Set FASTDL_BENCH_DEFAULT_MALLOC=1 to measure with glibc's defaults instead.
if [ -z "${FASTDL_BENCH_DEFAULT_MALLOC:-}" ]; then
  export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736
fi
python benchmarks/run.py "$@"
