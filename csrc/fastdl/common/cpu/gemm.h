// Our float32 GEMM for the convolution's matrix products on CPU: packed A and B panels and a
// register-tiled micro-kernel (AVX-512: 8 x 32 tile; AVX2+FMA: 6 x 16), parallel over output
// tiles with at::parallel_for. BLAS (MKL) is slow on some x86 CPUs (AMD) for these shapes;
// this one reaches most of the FMA peak there. The AVX-512 copy of this code has the 8 x 32
// micro-kernel, the AVX2 copy the 6 x 16 one (common/cpu_isa.h chooses the copy at run time);
// in the portable copy gemm_available() is false and callers keep using at::mm. Operands that
// hold bfloat16 values (GemmInputs::bfloat16) run on the CPU's bfloat16 units where the ISA in
// use has them (gemm_bf16.cpp: AMX tiles, or AVX512_BF16 dot products), float32 sums.
//
// Operands are strided views with an optional grouping of the column index, so the
// convolution reads images of a batch in place: element (r, c) of an operand is at
//   data + r * row_stride + (c / group) * group_stride + (c % group) * col_stride.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include <cstdint>
#include <limits>

namespace fastdl::cpu::inline CPU_CAPABILITY {

struct MatrixRef {
  float* data;
  int64_t row_stride;
  int64_t col_stride = 1;
  int64_t group =
      std::numeric_limits<int64_t>::max();  // columns per group (no grouping by default)
  int64_t group_stride = 0;
  // Element offset of column c.
  int64_t col_offset(int64_t c) const {
    return (c / group) * group_stride + (c % group) * col_stride;
  }
};

// What A and B may be multiplied as. bfloat16: they may be rounded to bfloat16 and multiplied
// on the CPU's bfloat16 units with float32 sums, as a bfloat16 GEMM does (for values read from
// bfloat16 tensors the rounding changes nothing); float32 where the CPU has no such units.
enum class GemmInputs { float32, bfloat16 };

// Whether this copy has a micro-kernel (AVX-512 or AVX2+FMA). FASTDL_CPU_GEMM=blas in the
// environment turns ours off (for testing and comparing).
bool gemm_available();

// C[m, n] = (accumulate ? C[m, n] : 0) + sum_k A[m, k] B[k, n], for an (M, K) A, a (K, N) B and
// an (M, N) C (C's col_stride must be 1). Parallel inside (single-threaded when called from
// inside a parallel region); C must not overlap A or B.
void gemm(int64_t M, int64_t N, int64_t K, const MatrixRef& A, const MatrixRef& B,
          const MatrixRef& C, bool accumulate, GemmInputs inputs = GemmInputs::float32);

// Whether GemmInputs::bfloat16 products run on bfloat16 units here (the AVX-512 copy, with
// selected_isa() avx512_bf16 or amx).
bool bf16_gemm_available();

// A B operand multiplied by many A's (a recurrent weight, at every step of a sequence): packed
// once, rounded to bfloat16, in the layout of the bfloat16 units' panels over all of K, so a
// skinny product (a batch of hidden states) reads it in place instead of repacking it.
// prepacked_bf16_size(K, N) values of uint16 (bfloat16 bits) for prepack_bf16's `out`.
int64_t prepacked_bf16_size(int64_t K, int64_t N);
void prepack_bf16(int64_t K, int64_t N, const MatrixRef& B, uint16_t* out);

// C (M, N) (+)= A (M, K) @ B for a B prepacked above, A rounded to bfloat16, float32 sums, on
// the bfloat16 units (needs bf16_gemm_available()); C's col_stride 1, A any strides. Parallel
// over 32 x 32 blocks of C (single-threaded inside a parallel region).
void gemm_prepacked_bf16(int64_t M, int64_t N, int64_t K, const MatrixRef& A,
                         const uint16_t* B_packed, const MatrixRef& C, bool accumulate);

// The pieces of gemm_prepacked_bf16, for kernels that multiply its blocks inside their own
// parallel tasks (a recurrent step fused with its pointwise work). A (M, K) rounded to
// bfloat16 into 32-row panels: packed_rows_bf16_size(M, K) values.
int64_t packed_rows_bf16_size(int64_t M, int64_t K);
void pack_rows_bf16(int64_t M, int64_t K, const MatrixRef& A, uint16_t* out);

// The calling thread's bfloat16 units for prepacked_block_bf16 and tiles_bf16.h's products
// (with AMX its tile configuration, released when destroyed): one per parallel task, before
// its first product.
class Bf16UnitsScope {
 public:
  Bf16UnitsScope();
  ~Bf16UnitsScope();
  Bf16UnitsScope(const Bf16UnitsScope&) = delete;
  Bf16UnitsScope& operator=(const Bf16UnitsScope&) = delete;

 private:
  bool amx_;
};

// c (32 rows x 32 columns, row stride ldc) = row panel `a_panel` of packed rows (K steps)
// times column panel `b_panel` of a prepacked B: its first `rows` rows are the product (c must
// hold 32 rows: the tiles store whole blocks). Needs a Bf16UnitsScope on this thread.
void prepacked_block_bf16(int64_t K, const uint16_t* a_packed, int64_t a_panel,
                          const uint16_t* b_packed, int64_t b_panel, int64_t rows, float* c,
                          int64_t ldc);

// B as the columns of a convolution's images, read from the images while packed (no im2col
// buffer): for rows r = (c, ki, kj) over one group's input channels and columns j = (n, oh, ow)
// over the batch, B(r, j) = x[n, c0 + c, oh sh - ph + ki dh, ow sw - pw + kj dw], 0 outside.
struct ImageColumns {
  const void* x;  // the batch, NCHW contiguous, float32 or (x_is_bf16) bfloat16
  bool x_is_bf16;
  int64_t batch, channels, height, width;
  int64_t first_channel;  // c0: the group's first input channel
  int64_t out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw;
};

// Whether gemm_image_columns takes these images: bfloat16 units here, offsets within the
// batch that fit the units' 32-bit gathers (and, for bfloat16 images, at least two elements:
// a bfloat16 gather reads 32 bits around its element, inside the batch).
bool gemm_image_columns_available(const ImageColumns& B);

// C (M, N) (+)= A (M, K) @ B for the images' columns (K = channels of the group * kh * kw,
// N = batch * out_h * out_w), A and B rounded to bfloat16 (GemmInputs::bfloat16), on the
// bfloat16 units. Parallel inside, as gemm().
void gemm_image_columns(int64_t M, int64_t N, int64_t K, const MatrixRef& A, const ImageColumns& B,
                        const MatrixRef& C, bool accumulate);

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
