// The run-time ISA choice (see cpu_isa.h). Compiled once, for the baseline ISA.
#include "fastdl/common/cpu_isa.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fastdl::cpu {
namespace {

// The bfloat16-unit levels live in the AVX-512 copy (common/cpu/gemm_bf16.cpp).
constexpr bool kCompiled[] = {true, FASTDL_CPU_HAS_AVX2 != 0, FASTDL_CPU_HAS_AVX512 != 0,
                              FASTDL_CPU_HAS_AVX512 != 0, FASTDL_CPU_HAS_AVX512 != 0};
constexpr Isa kAll[] = {Isa::portable, Isa::avx2, Isa::avx512, Isa::avx512_bf16, Isa::amx};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// AMX: the CPU has the tiles and their bfloat16 products (cpuid leaf 7: EDX bits 24 and 22),
// and Linux lets this process use them: the tile data state is enabled per process on request
// (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), which fails where the kernel or the
// hypervisor does not support it. Asked once, at load; harmless when already granted.
bool amx_usable() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool tiles = (edx >> 24) & 1u, bf16 = (edx >> 22) & 1u;
  if (!tiles || !bf16) return false;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

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
  // bfloat16 units: AMX tiles where the CPU and the OS have them. The AVX512_BF16 dot products
  // are chosen by themselves on AMD's CPUs only, where vdpbf16ps does twice an FMA's
  // multiply-adds per cycle; on Intel's it does as many, so without AMX the float32 kernels are
  // as fast and skip the rounding (FASTDL_CPU_ISA=avx512_bf16 still forces them, for tests).
  if (avx512 && __builtin_cpu_supports("avx512bf16")) {
    if (amx_usable()) return Isa::amx;
    if (__builtin_cpu_is("amd")) return Isa::avx512_bf16;
  }
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
    for (Isa candidate : kAll) {
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
                   "fastdl: FASTDL_CPU_ISA=%s is not one of portable, avx2, avx512, avx512_bf16, "
                   "amx; using %s\n",
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
    case Isa::amx:
      return "amx";
    case Isa::avx512_bf16:
      return "avx512_bf16";
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
  for (Isa isa : kAll) {
    if (kCompiled[static_cast<int>(isa)]) names.emplace_back(isa_name(isa));
  }
  return names;
}

void register_selected(torch::Library& m, const std::array<RegisterKernels, 3>& by_isa) {
  const int copy = std::min(static_cast<int>(selected_isa()), static_cast<int>(Isa::avx512));
  const RegisterKernels kernels = by_isa[copy];
  TORCH_INTERNAL_ASSERT(kernels, "fastdl: no CPU kernels compiled for ", isa_name(selected_isa()));
  kernels(m);
}

}  // namespace fastdl::cpu
