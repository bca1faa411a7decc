// The CPU's one entry point for a matrix product of tensors: out (+)= a @ b, choosing the
// kernel for the shape (see matmul.cpp). Kernels that multiply raw blocks inside their own
// parallel loops call small_gemm.h (cache-resident tiles) or gemm.h (packed) directly.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include <ATen/core/Tensor.h>

namespace fastdl::cpu::inline CPU_CAPABILITY {

// out (M, N) = a (M, K) @ b (K, N), or += when `accumulate`; float32 or float64, any strides
// (out's last stride 1). Parallel inside: call it outside parallel regions.
void matmul(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate);

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
