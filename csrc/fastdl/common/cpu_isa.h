// The CPU kernels' vector ISA, chosen at run time. Every CPU kernel file (<family>/cpu/*.cpp and
// common/cpu/*.cpp) is compiled once per ISA of the build (CMake's FASTDL_CPU_ISAS: portable
// code, AVX2+FMA, AVX-512), each copy with that ISA's compiler flags and inside its own
// namespace, fastdl::DEFAULT, fastdl::AVX2 or fastdl::AVX512 (the names at::vec gives its
// CPU_CAPABILITY namespaces), so the copies never meet at link time. When the library loads,
// the widest ISA this CPU runs is chosen once (cpuid), or a lower one named by the environment
// (FASTDL_CPU_ISA=portable|avx2|avx512|avx512_bf16|amx), and each op registers that copy's CPU
// kernels; code of a copy the CPU cannot run is never called. As in ATen's DispatchStub, but per
// op registration. The two levels above avx512 run the AVX-512 copy, whose bfloat16 matrix
// products then use the CPU's bfloat16 units (common/cpu/gemm_bf16.cpp: AVX512_BF16 dot
// products, or AMX tiles); those instructions are compiled into that file's functions alone and
// reached only when selected_isa() says the CPU (and, for AMX, the operating system) has them.
//
// In a kernel file (inside namespace fastdl::CPU_CAPABILITY):
//   FASTDL_CPU_KERNELS(layer_norm, m) { m.impl("layer_norm_forward", &forward_cpu); ... }
// In the op's front file (inside namespace fastdl, compiled once, for the baseline ISA):
//   FASTDL_REGISTER_CPU_KERNELS(layer_norm)
#pragma once

#include <torch/library.h>

#include <array>
#include <string>
#include <vector>

namespace fastdl::cpu {

// Ordered: a CPU that runs one runs every lower one.
enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx = 4 };

// The ISA whose kernels run: chosen once, at the first call (the library's load).
Isa selected_isa();

// "portable", "avx2", "avx512", "avx512_bf16" or "amx": the names FASTDL_CPU_ISA takes and
// build_info() reports.
const char* isa_name(Isa isa);

// The ISAs this build compiled kernels for, lowest first.
std::vector<std::string> compiled_isas();

// A kernel file's registration function for one ISA's copy.
using RegisterKernels = void (*)(torch::Library&);

// Calls the selected ISA's copy of a kernel file's registration: by_isa holds the portable, AVX2
// and AVX-512 copies (null where not compiled; the selected ISA's always is; avx512_bf16 and
// amx use the AVX-512 one).
void register_selected(torch::Library& m, const std::array<RegisterKernels, 3>& by_isa);

}  // namespace fastdl::cpu

// FASTDL_CPU_HAS_AVX2 / FASTDL_CPU_HAS_AVX512 (0 or 1) come from CMake: whether the copy exists.
#if FASTDL_CPU_HAS_AVX2
#define FASTDL_IF_CPU_AVX2(...) __VA_ARGS__
#else
#define FASTDL_IF_CPU_AVX2(...) nullptr
#endif
#if FASTDL_CPU_HAS_AVX512
#define FASTDL_IF_CPU_AVX512(...) __VA_ARGS__
#else
#define FASTDL_IF_CPU_AVX512(...) nullptr
#endif

// The registration function of kernel file `name` in this copy (fastdl::CPU_CAPABILITY).
#define FASTDL_CPU_KERNELS(name, m) void register_cpu_kernels_##name(torch::Library& m)

// TORCH_LIBRARY_IMPL(fastdl, CPU, ...) registering the selected ISA's copy of `name`'s kernels.
#define FASTDL_REGISTER_CPU_KERNELS(name)                                 \
  namespace DEFAULT {                                                     \
  void register_cpu_kernels_##name(torch::Library&);                      \
  }                                                                       \
  namespace AVX2 {                                                        \
  void register_cpu_kernels_##name(torch::Library&);                      \
  }                                                                       \
  namespace AVX512 {                                                      \
  void register_cpu_kernels_##name(torch::Library&);                      \
  }                                                                       \
  TORCH_LIBRARY_IMPL(fastdl, CPU, m) {                                    \
    ::fastdl::cpu::register_selected(                                     \
        m, {&DEFAULT::register_cpu_kernels_##name,                        \
            FASTDL_IF_CPU_AVX2(&AVX2::register_cpu_kernels_##name),       \
            FASTDL_IF_CPU_AVX512(&AVX512::register_cpu_kernels_##name)}); \
  }
