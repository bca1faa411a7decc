// A small register-tiled matrix product for the blocks CPU kernels keep in cache (attention
// tiles, a few dozen rows by a few hundred columns): C (+)= A * B with at::vec FMAs. For
// blocks this small it beats calling a BLAS (no dispatch or packing per call), and it runs
// inside at::parallel_for tasks without nesting threads.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include "fastdl/common/cpu/vec.h"

namespace fastdl::cpu::inline CPU_CAPABILITY {

namespace detail {

// One R x (NV vectors) tile of C: acc += sum_k a(r, k) * b(k, :).
template <typename T, int R, int NV>
inline void gemm_tile(int64_t k, const T* a, int64_t a_row_stride, int64_t a_k_stride, const T* b,
                      int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = accumulate ? Vec<T>::loadu(c + r * ldc + v * L) : Vec<T>(T(0));
    }
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    Vec<T> bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = Vec<T>::loadu(b + kk * ldb + v * L);
    for (int r = 0; r < R; ++r) {
      const Vec<T> av(a[r * a_row_stride + kk * a_k_stride]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v].store(c + r * ldc + v * L);
  }
}

// Rows of C per register tile: 8 x 2 vectors (16 accumulators) with AVX-512's 32 vector
// registers, 4 x 2 with AVX2's 16.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kTileRows = 8;
#else
constexpr int kTileRows = 4;
#endif

// Columns [j, j + NV * L) of every row of C, kTileRows rows at a time, then 4, 2, 1.
template <typename T, int NV>
inline void gemm_column_panel(int64_t m, int64_t k, const T* a, int64_t a_row_stride,
                              int64_t a_k_stride, const T* b, int64_t ldb, T* c, int64_t ldc,
                              bool accumulate) {
  int64_t i = 0;
  for (; i + kTileRows <= m; i += kTileRows) {
    gemm_tile<T, kTileRows, NV>(k, a + i * a_row_stride, a_row_stride, a_k_stride, b, ldb,
                                c + i * ldc, ldc, accumulate);
  }
  if (kTileRows > 4 && i + 4 <= m) {
    gemm_tile<T, 4, NV>(k, a + i * a_row_stride, a_row_stride, a_k_stride, b, ldb, c + i * ldc, ldc,
                        accumulate);
    i += 4;
  }
  if (i + 2 <= m) {
    gemm_tile<T, 2, NV>(k, a + i * a_row_stride, a_row_stride, a_k_stride, b, ldb, c + i * ldc, ldc,
                        accumulate);
    i += 2;
  }
  for (; i < m; ++i) {
    gemm_tile<T, 1, NV>(k, a + i * a_row_stride, a_row_stride, a_k_stride, b, ldb, c + i * ldc, ldc,
                        accumulate);
  }
}

}  // namespace detail

// C[m x n] = A * B, or C += A * B when `accumulate`. A's element (r, k) is
// a[r * a_row_stride + k * a_k_stride] (so A may be read transposed); B is row-major with
// leading dimension ldb, C with ldc. Single-threaded: call it from inside a parallel task.
template <typename T>
void small_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_row_stride,
                int64_t a_k_stride, const T* b, int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  constexpr int64_t L = Vec<T>::size();
  int64_t j = 0;
  if (m <= 2) {
    // One or two rows: four vectors of columns at a time, so enough independent FMAs are in
    // flight to hide their latency (1 x 2 tiles would leave the FMA units mostly idle).
    for (; j + 4 * L <= n; j += 4 * L) {
      detail::gemm_column_panel<T, 4>(m, k, a, a_row_stride, a_k_stride, b + j, ldb, c + j, ldc,
                                      accumulate);
    }
  }
  for (; j + 2 * L <= n; j += 2 * L) {
    detail::gemm_column_panel<T, 2>(m, k, a, a_row_stride, a_k_stride, b + j, ldb, c + j, ldc,
                                    accumulate);
  }
  for (; j + L <= n; j += L) {
    detail::gemm_column_panel<T, 1>(m, k, a, a_row_stride, a_k_stride, b + j, ldb, c + j, ldc,
                                    accumulate);
  }
  for (; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      T s = accumulate ? c[i * ldc + j] : T(0);
      for (int64_t kk = 0; kk < k; ++kk)
        s += a[i * a_row_stride + kk * a_k_stride] * b[kk * ldb + j];
      c[i * ldc + j] = s;
    }
  }
}

// dst[e * ld + j] = src[j * src_stride + e] for j < rows, e < dim: a block of rows (keys,
// values) transposed into the (dim x rows) B operand small_gemm reads row-major.
template <typename T>
void transpose_rows(const T* src, int64_t src_stride, int64_t rows, int64_t dim, T* dst,
                    int64_t ld) {
  for (int64_t j = 0; j < rows; ++j) {
    const T* row = src + j * src_stride;
    for (int64_t e = 0; e < dim; ++e) dst[e * ld + j] = row[e];
  }
}

// small_gemm over every thread: the columns of C are split into panels of four vectors, one
// contiguous range of panels per thread (the skinny products of a recurrent step: a batch of
// rows times a weight matrix). Call it outside parallel regions.
template <typename T>
void parallel_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                   int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  constexpr int64_t panel = 4 * Vec<T>::size();
  const int64_t panels = (n + panel - 1) / panel;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    const int64_t j0 = begin * panel, j1 = std::min(n, end * panel);
    small_gemm<T>(m, j1 - j0, k, a, lda, 1, b + j0, ldb, c + j0, ldc, accumulate);
  });
}

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
