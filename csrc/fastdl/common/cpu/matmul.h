// The CPU's one entry point for a matrix product of tensors: out (+)= a @ b, choosing the
// kernel for the shape (see matmul.cpp). Kernels that multiply raw blocks inside their own
// parallel loops call small_gemm.h (cache-resident tiles) or gemm.h (packed) directly.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include <ATen/core/Tensor.h>

namespace fastdl::cpu::inline CPU_CAPABILITY {

// out (M, N) = a (M, K) @ b (K, N), or += when `accumulate`; float32 or float64, any strides
// (out's last stride 1). Parallel inside: call it outside parallel regions.
void matmul(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate);

// m as a contiguous matrix: a transposed float32/float64 one (a weight's .t()) by 16 x 16
// vector transposes across threads (aten's strided copy is ~10x slower); others as
// m.contiguous().
at::Tensor contiguous_matrix(const at::Tensor& m);

// The same for float32 tensors that hold bfloat16 values (converted from bfloat16 inputs): a and
// b rounded to bfloat16 and multiplied on the CPU's bfloat16 units, float32 sums, as a bfloat16
// matrix product does, where the ISA in use has them (bf16_gemm_available()); else matmul().
void matmul_bf16(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate);

// b (K, N) float32 packed once for many matmul_prepacked_bf16 calls (an int16 tensor of its
// bfloat16 panels' bits), or an undefined tensor where there are no bfloat16 units.
at::Tensor prepack_bf16(const at::Tensor& b);

// out (M, N) (+)= a (M, K) @ b for b prepacked above (b_packed; K and N its shape), a rounded
// to bfloat16; out contiguous, a any strides.
void matmul_prepacked_bf16(const at::Tensor& a, const at::Tensor& b_packed, int64_t N,
                           at::Tensor& out, bool accumulate);

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
