// cpu::matmul: the kernel for the shape. Skinny products (up to 64 rows: a recurrent step's
// batch times a weight matrix) go to the register-tiled kernel, which reads the weights in
// place (a BLAS call or a packing pass costs most at these shapes); larger float32 products to
// our packed GEMM; what neither takes (float64 without it, odd layouts) to BLAS.
#include "fastdl/common/cpu/matmul.h"

#include "fastdl/common/cpu/gemm.h"
#include "fastdl/common/cpu/small_gemm.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/mm.h>

// Compiled once per ISA (common/cpu_isa.h).
namespace fastdl::cpu::inline CPU_CAPABILITY {

void matmul(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  if (M <= 64 && a.stride(1) == 1 && b.is_contiguous() && out.is_contiguous()) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastdl_cpu_matmul", [&] {
      parallel_gemm<scalar_t>(M, N, K, a.const_data_ptr<scalar_t>(), a.stride(0),
                              b.const_data_ptr<scalar_t>(), N, out.mutable_data_ptr<scalar_t>(), N,
                              accumulate);
    });
    return;
  }
  if (out.scalar_type() == at::kFloat && gemm_available() && out.stride(1) == 1) {
    // MatrixRef holds mutable pointers; A and B are only read.
    const MatrixRef A{const_cast<float*>(a.const_data_ptr<float>()), a.stride(0), a.stride(1)};
    const MatrixRef B{const_cast<float*>(b.const_data_ptr<float>()), b.stride(0), b.stride(1)};
    const MatrixRef C{out.mutable_data_ptr<float>(), out.stride(0), 1};
    gemm(M, N, K, A, B, C, accumulate);
    return;
  }
  if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
