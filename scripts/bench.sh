#!/usr/bin/env bash
# Builds fastdl (scripts/setup.sh) and runs the benchmark suite: every op against the torch
# op it replaces, same inputs, same run. Extra arguments go to benchmarks/run.py
# (e.g. --quick, --ops layer_norm, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python benchmarks/run.py "$@"
