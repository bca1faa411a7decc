#include "fastdl/build_info.h"

#include "fastdl/common/cpu_isa.h"

namespace fastdl {

BuildInfo build_info() {
  BuildInfo info;
  info.version = FASTDL_VERSION;
  info.torch = FASTDL_TORCH_VERSION;
  info.cpu_isa = cpu::isa_name(cpu::selected_isa());
  info.cpu_isas = cpu::compiled_isas();
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
