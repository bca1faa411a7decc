// Packed float32 GEMM (see gemm.h). The loops follow the usual blocked scheme: the output is
// cut into one rectangular block per task (split so that tasks repack as little as possible);
// inside a task, for each block of (at most kKc) reduction steps, a (kc, nc) block of B is
// packed into NR-wide panels, then for each block of at most kMc rows of A an (mc, kc) block is packed
// into MR-tall panels (it stays in L2), and the micro-kernel runs over every (MR, NR) tile,
// one B panel (in L1) against every A panel. Partial tiles (edges, a tile crossing a column
// group of C) are computed into a small buffer and copied out.
#include "fastdl/common/cpu/gemm.h"

#include "fastdl/common/cpu/gemm_blocking.h"

#include <ATen/Parallel.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// The micro-kernels need AVX2+FMA (this file's AVX2 copy) or AVX-512 (its AVX-512 copy).
#if defined(__x86_64__) && (defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512))
#define FASTDL_X86_GEMM 1
#include <immintrin.h>
#endif

// Compiled once per ISA (common/cpu_isa.h).
namespace fastdl::cpu::inline CPU_CAPABILITY {
namespace {

constexpr int64_t kKc = 320;   // most reduction steps per packed block: a (kKc, NR) B panel fits L1
constexpr int64_t kMc = 192;   // rows of A per packed block (multiple of both MRs): fits L2
constexpr int64_t kNc = 2048;  // columns of B per packed block, bounding the per-task buffer

using gemm_blocking::ceil_div;
using gemm_blocking::round_up;

using KernelFn = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                          bool accumulate);

// Whether this copy has a micro-kernel (the AVX2 and AVX-512 copies do); FASTDL_CPU_GEMM=blas
// in the environment turns ours off (for testing and comparing).
bool use_our_gemm() {
#ifdef FASTDL_X86_GEMM
  const char* env = std::getenv("FASTDL_CPU_GEMM");
  return !(env && std::string(env) == "blas");
#else
  return false;
#endif
}

#ifdef FASTDL_X86_GEMM
// c[i, j] (row stride ldc) = (accumulate ? c[i, j] : 0) + sum_k a[k, i] b[k, j] for an 8 x 32
// tile: a holds kc steps of 8 values, b kc steps of 32 values. 16 zmm accumulators.
#ifdef CPU_CAPABILITY_AVX512
void kernel_avx512_8x32(int64_t kc, const float* __restrict__ a, const float* __restrict__ b,
                        float* c, int64_t ldc, bool accumulate) {
  constexpr int MR = 8;
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(ai, b1, acc1[i]);
    }
    a += MR;
    b += 32;
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* row = c + i * ldc;
    if (accumulate) {
      acc0[i] = _mm512_add_ps(acc0[i], _mm512_loadu_ps(row));
      acc1[i] = _mm512_add_ps(acc1[i], _mm512_loadu_ps(row + 16));
    }
    _mm512_storeu_ps(row, acc0[i]);
    _mm512_storeu_ps(row + 16, acc1[i]);
  }
}

#else
// The same for a 6 x 16 tile in ymm registers (12 accumulators): the AVX2 copy's.
void kernel_avx2_6x16(int64_t kc, const float* __restrict__ a, const float* __restrict__ b,
                      float* c, int64_t ldc, bool accumulate) {
  constexpr int MR = 6;
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc0[i] = _mm256_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(ai, b1, acc1[i]);
    }
    a += MR;
    b += 16;
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    float* row = c + i * ldc;
    if (accumulate) {
      acc0[i] = _mm256_add_ps(acc0[i], _mm256_loadu_ps(row));
      acc1[i] = _mm256_add_ps(acc1[i], _mm256_loadu_ps(row + 8));
    }
    _mm256_storeu_ps(row, acc0[i]);
    _mm256_storeu_ps(row + 8, acc1[i]);
  }
}

#endif

// dst[j * dst_stride + i] = src[i * src_stride + j] for an 8 x 8 block (the transposing packs).
void transpose_8x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// Packs rows [m0, m0 + mc) x columns [k0, k0 + kc) of A into MR-tall panels:
// out[p][k][i] = A(m0 + p MR + i, k0 + k), zero for rows past M.
template <int MR>
void pack_a(const MatrixRef& A, int64_t M, int64_t m0, int64_t mc, int64_t k0, int64_t kc,
            const int64_t* koff, float* out) {
  for (int64_t p = 0; p < mc; p += MR) {
    float* panel = out + p * kc;
    const int64_t rows = std::min<int64_t>(MR, M - (m0 + p));
    if (A.row_stride == 1) {  // a column of the panel is contiguous in memory
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = A.data + (m0 + p) + koff[k];
        float* dst = panel + k * MR;
        int64_t i = 0;
        for (; i < rows; ++i) dst[i] = src[i];
        for (; i < MR; ++i) dst[i] = 0.f;
      }
    } else {
      int64_t k_done = 0;  // 8 x 8 blocks whose 8 columns are consecutive: a register transpose
      if (MR == 8 && rows == MR) {
        const float* src = A.data + (m0 + p) * A.row_stride;
        for (; k_done + 8 <= kc && koff[k_done + 7] - koff[k_done] == 7; k_done += 8) {
          transpose_8x8(src + koff[k_done], A.row_stride, panel + k_done * MR, MR);
        }
      }
      for (int64_t i = 0; i < MR; ++i) {
        if (i >= rows) {
          for (int64_t k = k_done; k < kc; ++k) panel[k * MR + i] = 0.f;
          continue;
        }
        const float* src = A.data + (m0 + p + i) * A.row_stride;
        for (int64_t k = k_done; k < kc; ++k) panel[k * MR + i] = src[koff[k]];
      }
    }
  }
}

// Packs rows [k0, k0 + kc) x columns [n0, n0 + nc) of B into NR-wide panels:
// out[p][k][j] = B(k0 + k, n0 + p NR + j), zero for columns past N.
template <int NR>
void pack_b(const MatrixRef& B, int64_t N, int64_t n0, int64_t nc, int64_t k0, int64_t kc,
            float* out) {
  int64_t noff[NR];
  for (int64_t p = 0; p < nc; p += NR) {
    float* panel = out + p * kc;
    const int64_t cols = std::min<int64_t>(NR, N - (n0 + p));
    for (int64_t j = 0; j < cols; ++j) noff[j] = B.col_offset(n0 + p + j);
    const float* base = B.data + k0 * B.row_stride;
    const bool contiguous = cols == NR && noff[NR - 1] - noff[0] == NR - 1;
    if (contiguous) {  // each row of the panel is NR consecutive floats
      for (int64_t k = 0; k < kc; ++k)
        std::memcpy(panel + k * NR, base + k * B.row_stride + noff[0], NR * sizeof(float));
    } else if (B.row_stride == 1) {  // each column is contiguous: read down the columns
      // 8 columns evenly spaced: 8 x 8 register transposes
      int64_t j_done = 0;
      for (; j_done + 8 <= cols; j_done += 8) {
        const int64_t step = noff[j_done + 1] - noff[j_done];
        bool even = true;
        for (int64_t jj = 2; jj < 8; ++jj)
          even = even && noff[j_done + jj] - noff[j_done] == jj * step;
        if (!even) break;
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8)
          transpose_8x8(base + noff[j_done] + k, step, panel + k * NR + j_done, NR);
        for (; k < kc; ++k) {
          for (int64_t jj = 0; jj < 8; ++jj)
            panel[k * NR + j_done + jj] = base[noff[j_done + jj] + k];
        }
      }
      for (int64_t j = j_done; j < NR; ++j) {
        if (j >= cols) {
          for (int64_t k = 0; k < kc; ++k) panel[k * NR + j] = 0.f;
          continue;
        }
        const float* src = base + noff[j];
        for (int64_t k = 0; k < kc; ++k) panel[k * NR + j] = src[k];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = base + k * B.row_stride;
        float* dst = panel + k * NR;
        int64_t j = 0;
        for (; j < cols; ++j) dst[j] = src[noff[j]];
        for (; j < NR; ++j) dst[j] = 0.f;
      }
    }
  }
}

template <int MR, int NR>
void gemm_blocked(KernelFn kernel, int64_t M, int64_t N, int64_t K, const MatrixRef& A,
                  const MatrixRef& B, const MatrixRef& C, bool accumulate) {
  const gemm_blocking::Tasks tasks = gemm_blocking::plan_tasks(M, N, K, MR, NR, kKc, /*k_round=*/8);
  const auto nothing = [] {};
  gemm_blocking::blocked_product<float, MR, NR>(
      M, N, K, A, C, accumulate, tasks, kMc, kNc, /*k_align=*/1,
      [&](int64_t m0, int64_t mc, int64_t k0, int64_t kc, const int64_t* koff, float* out) {
        pack_a<MR>(A, M, m0, mc, k0, kc, koff, out);
      },
      [&](int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* out) {
        pack_b<NR>(B, N, n0, nc, k0, kc, out);
      },
      kernel, nothing, nothing);
}

#endif  // FASTDL_X86_GEMM

}  // namespace

bool gemm_available() {
  static const bool available = use_our_gemm();
  return available;
}

void gemm(int64_t M, int64_t N, int64_t K, const MatrixRef& A, const MatrixRef& B,
          const MatrixRef& C, bool accumulate, GemmInputs inputs) {
  TORCH_INTERNAL_ASSERT(gemm_available() && C.col_stride == 1);
  if (gemm_blocking::nothing_to_multiply(M, N, K, C, accumulate)) return;
  if (inputs == GemmInputs::bfloat16 && bf16_gemm_available()) {
    return gemm_blocking::gemm_bf16(M, N, K, A, B, C, accumulate);
  }
#ifdef FASTDL_X86_GEMM
#ifdef CPU_CAPABILITY_AVX512
  return gemm_blocked<8, 32>(&kernel_avx512_8x32, M, N, K, A, B, C, accumulate);
#else
  return gemm_blocked<6, 16>(&kernel_avx2_6x16, M, N, K, A, B, C, accumulate);
#endif
#endif
}

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
