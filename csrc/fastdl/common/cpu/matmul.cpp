// cpu::matmul: the kernel for the shape. Skinny products (up to 64 rows: a recurrent step's
// batch times a weight matrix) go to the register-tiled kernel, which reads the weights in
// place (a BLAS call or a packing pass costs most at these shapes); larger float32 products to
// our packed GEMM; what neither takes (float64 without it, odd layouts) to BLAS.
#include "fastdl/common/cpu/matmul.h"

#include "fastdl/common/cpu/gemm.h"
#include "fastdl/common/cpu/small_gemm.h"
#include "fastdl/common/cpu/vec.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

// Compiled once per ISA (common/cpu_isa.h).
namespace fastdl::cpu::inline CPU_CAPABILITY {

namespace {
// A float32 matrix as a MatrixRef (which holds a mutable pointer; operands are only read).
MatrixRef matrix_ref(const at::Tensor& t) {
  return {const_cast<float*>(t.const_data_ptr<float>()), t.stride(0), t.stride(1)};
}
}  // namespace

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
    gemm(M, N, K, matrix_ref(a), matrix_ref(b),
         MatrixRef{out.mutable_data_ptr<float>(), out.stride(0), 1}, accumulate);
    return;
  }
  if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

at::Tensor contiguous_matrix(const at::Tensor& m) {
  const bool transposed =
      m.dim() == 2 && m.stride(0) == 1 && m.stride(1) == m.size(0) && !m.is_contiguous();
  if (!transposed || (m.scalar_type() != at::kFloat && m.scalar_type() != at::kDouble)) {
    return m.contiguous();
  }
  const int64_t R = m.size(0), C = m.size(1), ld = m.stride(1);  // (r, c) at c * ld + r
  auto out = at::empty({R, C}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "fastdl_contiguous_matrix", [&] {
    const scalar_t* src = m.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    constexpr int64_t kBlock = 16;
    const int64_t blocks = (C + kBlock - 1) / kBlock;  // of 16 columns of out (rows of src)
    at::parallel_for(0, blocks, grain(kBlock * R), [&](int64_t begin, int64_t end) {
      for (int64_t cb = begin; cb < end; ++cb) {
        const int64_t c0 = cb * kBlock, nc = std::min(kBlock, C - c0);
        for (int64_t r0 = 0; r0 < R; r0 += kBlock) {
          const int64_t nr = std::min(kBlock, R - r0);
          at::vec::transpose_mxn<scalar_t>(src + c0 * ld + r0, ld, dst + r0 * C + c0, C,
                                           static_cast<int>(nc), static_cast<int>(nr));
        }
      }
    });
  });
  return out;
}

void matmul_bf16(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate) {
  const bool units = bf16_gemm_available() && out.scalar_type() == at::kFloat &&
                     a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                     out.stride(1) == 1;
  if (!units) return matmul(a, b, out, accumulate);
  gemm(a.size(0), b.size(1), a.size(1), matrix_ref(a), matrix_ref(b),
       MatrixRef{out.mutable_data_ptr<float>(), out.stride(0), 1}, accumulate,
       GemmInputs::bfloat16);
}

at::Tensor prepack_bf16(const at::Tensor& b) {
  if (!bf16_gemm_available() || b.scalar_type() != at::kFloat) return {};
  const int64_t K = b.size(0), N = b.size(1);
  // int16 storage of the bfloat16 bit patterns (never read as numbers)
  auto packed = at::empty({prepacked_bf16_size(K, N)}, b.options().dtype(at::kShort));
  prepack_bf16(K, N, matrix_ref(b),
               reinterpret_cast<uint16_t*>(packed.mutable_data_ptr<int16_t>()));
  return packed;
}

void matmul_prepacked_bf16(const at::Tensor& a, const at::Tensor& b_packed, int64_t N,
                           at::Tensor& out, bool accumulate) {
  TORCH_INTERNAL_ASSERT(a.scalar_type() == at::kFloat && out.is_contiguous() &&
                        out.scalar_type() == at::kFloat && out.size(1) == N);
  gemm_prepacked_bf16(a.size(0), N, a.size(1), matrix_ref(a),
                      reinterpret_cast<const uint16_t*>(b_packed.const_data_ptr<int16_t>()),
                      MatrixRef{out.mutable_data_ptr<float>(), N, 1}, accumulate);
}

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
