#!/usr/bin/env bash
# One call on a lent GPU machine (no network; torch, cmake, ninja, scikit-build-core,
# pybind11 and pytest preinstalled): build with the CUDA kernels, run the CUDA tests and the
# CUDA benchmarks, and leave the logs and the benchmark JSON under $OUT (default ./gpu-out).
#
#   run: bash scripts/gpu_check.sh            (everything)
#        bash scripts/gpu_check.sh --tests    (build + tests only)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
{
  nvidia-smi || true
  python -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1

start=$(date +%s)
FASTDL_CUDA=ON FASTDL_CUDA_ARCHS="${FASTDL_CUDA_ARCHS:-90}" \
  pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || { tail -50 "$OUT/build.log"; exit $rc; }

python -m pytest tests -q -m cuda --maxfail=200 -p no:cacheprovider > "$OUT/tests-cuda.log" 2>&1
echo "cuda tests rc=$? $(tail -1 "$OUT/tests-cuda.log")" | tee -a "$OUT/summary.txt"

if [ "${1:-}" != "--tests" ]; then
  python benchmarks/run.py --device cuda --json "$OUT/bench-cuda.json" > "$OUT/bench-cuda.md" 2> "$OUT/bench-cuda.err"
  echo "bench rc=$?" | tee -a "$OUT/summary.txt"
  cat "$OUT/bench-cuda.md"
fi
tail -30 "$OUT/tests-cuda.log"
