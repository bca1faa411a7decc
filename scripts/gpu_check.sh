#!/usr/bin/env bash
# One call on a lent GPU machine (no network; torch, cmake, ninja, scikit-build-core,
# pybind11, pytest, pytest-timeout and compute-sanitizer preinstalled), sized to the lease:
# 15 minutes in all (the machine's start included), 10 a command. Phases, each bounded by
# `timeout` and logging as it goes under $OUT (a killed run still leaves what ran):
#   1. build with the CUDA kernels (sm_90 unless FASTDL_CUDA_ARCHS says otherwise)   ~2 min
#   2. the CUDA tests, -m "cuda and not slow", one pytest per test file               ~3 min
#   3. compute-sanitizer (memcheck, racecheck) over a few small cases                ~1 min
#   4. the CUDA benchmarks at a short --min-time                                     ~3 min
# It runs on past a failure (one call should show every failure) and prints a summary last.
#
#   bash scripts/gpu_check.sh             everything
#   bash scripts/gpu_check.sh --tests     phases 1-3
# FASTDL_GPU_TEST_BUDGET / _BENCH_BUDGET (seconds) bound phases 2 and 4.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc
} > "$OUT/env.txt" 2>&1
note "env: $(tail -2 "$OUT/env.txt" | head -1)"

# 1. Build (against whatever torch is installed there).
timeout 300 env FASTDL_CUDA=ON FASTDL_CUDA_SIM=OFF FASTDL_CUDA_ARCHS="${FASTDL_CUDA_ARCHS:-90}" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
rc=$?
note "build: rc=$rc at $(elapsed) s"
if [ $rc -ne 0 ]; then
  tail -40 "$OUT/build.log"
  exit $rc
fi
python3 -c "import fastdl, torch; print(fastdl.build_info()); assert torch.cuda.is_available()" \
  >> "$OUT/env.txt" 2>&1 || note "build: fastdl does not import or sees no GPU"

# 2. CUDA tests, one file at a time so a hang or crash costs one file.
test_budget=${FASTDL_GPU_TEST_BUDGET:-210}
deadline=$(( $(date +%s) + test_budget ))
for f in tests/test_*.py; do
  name=$(basename "$f" .py)
  left=$(( deadline - $(date +%s) ))
  if [ $left -le 5 ]; then
    note "tests $name: not run (test budget spent)"
    continue
  fi
  timeout "$left" python3 -m pytest "$f" -q -m "cuda and not slow" -p no:cacheprovider \
    --timeout=120 --timeout-method=thread -x --maxfail=20 > "$OUT/tests-$name.log" 2>&1
  rc=$?
  # rc 5: no CUDA test in the file.
  [ $rc -eq 5 ] || note "tests $name: rc=$rc $(tail -1 "$OUT/tests-$name.log")"
done
note "tests: done at $(elapsed) s"

# 3. compute-sanitizer over a few small cases of every family.
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
      python3 scripts/gpu_sanitizer_cases.py > "$OUT/sanitizer-$tool.log" 2>&1
    note "compute-sanitizer $tool: rc=$? $(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log")"
  done
else
  note "compute-sanitizer: not found"
fi

# 4. Benchmarks.
if [ "${1:-}" != "--tests" ]; then
  timeout "${FASTDL_GPU_BENCH_BUDGET:-200}" python3 benchmarks/run.py --device cuda --min-time 0.1 \
    --json "$OUT/bench-cuda.json" > "$OUT/bench-cuda.md" 2> "$OUT/bench-cuda.err"
  note "bench: rc=$? at $(elapsed) s"
  tail -60 "$OUT/bench-cuda.md"
fi
echo
cat "$SUMMARY"
