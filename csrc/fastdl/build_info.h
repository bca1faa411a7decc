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
  std::string cpu_isa;                  // vector ISA of the CPU kernels: AVX512, AVX2 or NONE
};

BuildInfo build_info();

}  // namespace fastdl
