#!/usr/bin/env bash
# Line and branch coverage of csrc/fastdl by the CPU suite: builds libfastdl with gcov
# instrumentation in build/coverage (FASTDL_COVERAGE=ON; the normal build is untouched), runs
# the CPU suite on it and prints coverage per file and the uncovered lines of the CPU kernel
# and front files (scripts/coverage.py). Extra arguments go to pytest; --report-only
# reprints the last report. Needs the venv of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/coverage.py "$@"
