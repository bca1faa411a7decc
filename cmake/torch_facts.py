"""Print the facts about the installed torch that CMake needs, as CMake `set()` lines.

Run by CMakeLists.txt with the Python interpreter the package is built for, so the build
always matches the torch that will import it.
"""
import os
import sys

import torch
import torch.utils

facts = {
    "FASTDL_TORCH_CMAKE_PREFIX": torch.utils.cmake_prefix_path,
    "FASTDL_TORCH_VERSION": torch.__version__,
    "FASTDL_TORCH_CUDA_VERSION": torch.version.cuda or "",
    "FASTDL_TORCH_CXX11_ABI": "1" if torch._C._GLIBCXX_USE_CXX11_ABI else "0",
    "FASTDL_TORCH_LIB_DIR": os.path.join(os.path.dirname(torch.__file__), "lib"),
}

# torch's CUDA wheels ship the CUDA libraries (cuBLAS, cuSPARSE, NVRTC, ...) and their headers
# in nvidia-* packages; a bare nvcc toolkit may lack them, so the build takes them from there.
nvidia_root = ""
for base in sys.path:
    for sub in ("cu13", "cu12"):
        candidate = os.path.join(base, "nvidia", sub)
        if os.path.isdir(os.path.join(candidate, "include")):
            nvidia_root = candidate
            break
    if nvidia_root:
        break
facts["FASTDL_NVIDIA_WHEEL_ROOT"] = nvidia_root

for key, value in facts.items():
    print(f'set({key} "{value}")')
