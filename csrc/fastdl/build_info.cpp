#include "fastdl/build_info.h"

namespace fastdl {

BuildInfo build_info() {
  BuildInfo info;
  info.version = FASTDL_VERSION;
  info.torch = FASTDL_TORCH_VERSION;
  info.cpu_isa = FASTDL_CPU_ISA;
#ifdef FASTDL_WITH_CUDA
  info.cuda = true;
  const std::string csv = FASTDL_CUDA_ARCHS;
  for (size_t start = 0; start < csv.size();) {
    size_t comma = csv.find(',', start);
    if (comma == std::string::npos) comma = csv.size();
    info.cuda_archs.push_back(csv.substr(start, comma - start));
    start = comma + 1;
  }
#endif
  return info;
}

}  // namespace fastdl
