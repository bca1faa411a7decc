// The run-time ISA choice (see cpu_isa.h). Compiled once, for the baseline ISA.
#include "fastdl/common/cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace fastdl::cpu {
namespace {

constexpr bool kCompiled[] = {true, FASTDL_CPU_HAS_AVX2 != 0, FASTDL_CPU_HAS_AVX512 != 0};

// The widest ISA this CPU (and its operating system, which must save the wider registers)
// runs. gcc's __builtin_cpu_supports checks both.
Isa supported_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  // The AVX-512 copy is compiled with -mavx512{f,bw,vl,dq}: all four must be there.
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  if (avx512) return Isa::avx512;
  if (avx2) return Isa::avx2;
#endif
  return Isa::portable;
}

// Runs at the library's load, where an exception would abort the process: a request this CPU
// cannot honour, or an unknown name, warns on stderr and falls back to what the CPU runs.
Isa choose_isa() {
  Isa isa = supported_isa();
  if (const char* env = std::getenv("FASTDL_CPU_ISA"); env && *env) {
    const std::string_view requested(env);
    bool known = false;
    for (Isa candidate : {Isa::portable, Isa::avx2, Isa::avx512}) {
      if (requested != isa_name(candidate)) continue;
      known = true;
      if (candidate <= isa) {
        isa = candidate;
      } else {
        std::fprintf(stderr,
                     "fastdl: FASTDL_CPU_ISA=%s, but this CPU runs only up to %s; using %s\n", env,
                     isa_name(isa), isa_name(isa));
      }
    }
    if (!known) {
      std::fprintf(stderr,
                   "fastdl: FASTDL_CPU_ISA=%s is not one of portable, avx2, avx512; using %s\n",
                   env, isa_name(isa));
    }
  }
  while (!kCompiled[static_cast<int>(isa)]) isa = static_cast<Isa>(static_cast<int>(isa) - 1);
  return isa;
}

}  // namespace

Isa selected_isa() {
  static const Isa isa = choose_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::portable:
      break;
  }
  return "portable";
}

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512}) {
    if (kCompiled[static_cast<int>(isa)]) names.emplace_back(isa_name(isa));
  }
  return names;
}

void register_selected(torch::Library& m, const std::array<RegisterKernels, 3>& by_isa) {
  const RegisterKernels kernels = by_isa[static_cast<int>(selected_isa())];
  TORCH_INTERNAL_ASSERT(kernels, "fastdl: no CPU kernels compiled for ", isa_name(selected_isa()));
  kernels(m);
}

}  // namespace fastdl::cpu
