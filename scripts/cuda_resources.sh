#!/usr/bin/env bash
# Compiles one .cu file for one architecture with ptxas' resource report and prints, per
# kernel, registers, stack frame, spills and shared memory: what costs no GPU time to read
# (local-memory arrays, spills) before a GPU is lent. Needs nvcc and the build's venv.
#
#   bash scripts/cuda_resources.sh csrc/fastdl/attention/cuda/sdpa.cu [90]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: cuda_resources.sh file.cu [arch]}
arch=${2:-90}
py=.venv/bin/python
torch_dir=$($py -c "import os, torch; print(os.path.dirname(torch.__file__))")
nv_include=$($py -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'include'))" 2>/dev/null || true)
abi=$($py -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$nvcc" -std=c++20 -O3 --expt-relaxed-constexpr -Xcompiler=-fPIC -DFASTDL_WITH_CUDA \
  -D_GLIBCXX_USE_CXX11_ABI="$abi" -Icsrc -isystem "$torch_dir/include" \
  -isystem "$torch_dir/include/torch/csrc/api/include" ${nv_include:+-isystem "$nv_include"} \
  "--generate-code=arch=compute_$arch,code=sm_$arch" -Xptxas -v -c "$src" -o /dev/null > "$log" 2>&1 || {
  grep -m 20 error "$log"
  exit 1
}
$py - "$log" <<'PY'
import re, subprocess, sys
name = None
for line in open(sys.argv[1]):
    m = re.search(r"Compiling entry function .(\S+). for", line)
    if m:
        name = subprocess.run(["c++filt"], input=m.group(1), capture_output=True, text=True).stdout.strip()
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and name:
        frame, stores, loads = m.groups()
        flag = "  <- local memory" if int(frame) or int(stores) else ""
        print(f"{name[:100]:100s} frame {frame:>5} spills {stores:>4}/{loads:<4}{flag}")
PY
