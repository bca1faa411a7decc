// What this build of libfastdl contains.
#pragma once

#include <string>
#include <vector>

namespace fastdl {

struct BuildInfo {
  std::string version;                  // fastdl's version
  std::string torch;                    // the torch version it was built against
  bool cuda = false;                    // true when the CUDA kernels were compiled
  std::vector<std::string> cuda_archs;  // e.g. {"80", "90"}; empty without CUDA
  std::string cpu_isa;                  // the CPU kernels' ISA in use: portable, avx2 or avx512
  std::vector<std::string> cpu_isas;    // the ISAs the CPU kernels were compiled for
};

BuildInfo build_info();

}  // namespace fastdl
