// What the packed GEMMs (gemm.cpp for float32, gemm_bf16.cpp for the bfloat16 units) share:
// how the output is cut into one block per thread, and the per-thread packing buffers.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include "fastdl/common/cpu/gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastdl::cpu::inline CPU_CAPABILITY::gemm_blocking {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

// The output cut into tm x tn task blocks of mc x nc (multiples of MR and NR), one per thread,
// and K into equal blocks of k_block steps.
struct Tasks {
  int64_t tm, tn, mc, nc, k_block;
};

// The split that packs the least (every task packs its rows of A, M K / tm, and its columns of
// B, N K / tn); single-threaded for small products and inside a parallel region. K in equal
// blocks of at most k_max steps, rounded up to k_round (1024 with k_max 320 = four of 256), so
// no block is a short remainder that reloads and stores the C tiles for little work.
inline Tasks plan_tasks(int64_t M, int64_t N, int64_t K, int64_t MR, int64_t NR, int64_t k_max,
                        int64_t k_round) {
  const int64_t m_panels = ceil_div(M, MR), n_panels = ceil_div(N, NR);
  const int64_t threads =
      2.0 * M * N * K < 4e6 || at::in_parallel_region() ? 1 : at::get_num_threads();
  int64_t tm = 1, tn = 1;
  double best = -1;
  for (int64_t a = 1; a <= threads; ++a) {
    if (threads % a != 0) continue;
    const int64_t b = threads / a;
    if (a > m_panels || b > n_panels) continue;
    const double cost = double(b) * M + double(a) * N;
    if (best < 0 || cost < best) best = cost, tm = a, tn = b;
  }
  if (best < 0) {  // too few panels to split evenly: split the longer side as far as it goes
    tm = m_panels >= n_panels ? std::min(threads, m_panels) : 1;
    tn = m_panels >= n_panels ? 1 : std::min(threads, n_panels);
  }
  Tasks t;
  t.mc = ceil_div(m_panels, tm) * MR;
  t.nc = ceil_div(n_panels, tn) * NR;
  t.k_block = round_up(ceil_div(K, ceil_div(K, k_max)), k_round);
  t.tm = ceil_div(M, t.mc);
  t.tn = ceil_div(N, t.nc);
  return t;
}

// Per-thread packing buffers (slot 0: A, 1: B) of n elements of T, 64-byte aligned, kept
// between calls: they are bounded (a block of A or B), and reusing them saves allocating,
// zeroing and faulting in up to 2 MiB per call.
template <typename T>
T* packing_buffer(int slot, int64_t n) {
  thread_local std::vector<T> buffers[2];
  auto& buffer = buffers[slot];
  const int64_t pad = 64 / sizeof(T);
  if (static_cast<int64_t>(buffer.size()) < n + pad) buffer.resize(n + pad);
  auto p = reinterpret_cast<std::uintptr_t>(buffer.data());
  return reinterpret_cast<T*>((p + 63) & ~std::uintptr_t(63));
}

// A product with no element (M or N zero: done) or an empty sum (K zero: C zeroed unless
// accumulating): true when it is one of those, which the packed loops do not handle.
inline bool nothing_to_multiply(int64_t M, int64_t N, int64_t K, const MatrixRef& C,
                                bool accumulate) {
  if (M == 0 || N == 0) return true;
  if (K > 0) return false;
  if (!accumulate) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) C.data[m * C.row_stride + C.col_offset(n)] = 0.f;
  }
  return true;
}

// The blocked loops of a packed GEMM (see gemm.cpp): each task packs its blocks of B
// (pack_b(n0, nc, k0, kc, out), nc a multiple of NR) and of A (pack_a(m0, mc, k0, kc, koff,
// out), mc a multiple of MR, koff[k] A's offset of step k0 + k) into panels of
// round_up(kc, k_align) steps, and runs tile(kc, a_panel, b_panel, c, ldc, accumulate) over
// every MR x NR tile: on C in place where the tile lies inside it with consecutive columns,
// else into a buffer added to C. chunk_begin() and chunk_end() run around each thread's chunk
// of tasks (a thread's tile configuration). Buffers of Packed values, per thread.
template <typename Packed, int64_t MR, int64_t NR, typename PackA, typename PackB, typename Tile,
          typename ChunkBegin, typename ChunkEnd>
void blocked_product(int64_t M, int64_t N, int64_t K, const MatrixRef& A, const MatrixRef& C,
                     bool accumulate, const Tasks& tasks, int64_t mc_most, int64_t nc_most,
                     int64_t k_align, const PackA& pack_a, const PackB& pack_b, const Tile& tile,
                     const ChunkBegin& chunk_begin, const ChunkEnd& chunk_end) {
  const int64_t tn = tasks.tn, mc_task = tasks.mc, nc_task = tasks.nc, k_block = tasks.k_block;
  at::parallel_for(0, tasks.tm * tn, 1, [&](int64_t begin, int64_t end) {
    chunk_begin();
    std::vector<int64_t> koff(std::min(K, k_block));
    alignas(64) float c_tile[MR * NR];
    const int64_t k_padded = round_up(std::min(K, k_block), k_align);
    Packed* ap = packing_buffer<Packed>(0, std::min(mc_most, mc_task) * k_padded);
    Packed* bp = packing_buffer<Packed>(1, std::min(nc_most, nc_task) * k_padded);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tm0 = (task / tn) * mc_task, tn0 = (task % tn) * nc_task;
      const int64_t tm1 = std::min(M, tm0 + mc_task), tn1 = std::min(N, tn0 + nc_task);
      for (int64_t n0 = tn0; n0 < tn1; n0 += nc_most) {
        const int64_t nc = std::min(nc_most, tn1 - n0), nc_pad = round_up(nc, NR);
        for (int64_t k0 = 0; k0 < K; k0 += k_block) {
          const int64_t kc = std::min(k_block, K - k0), panel = round_up(kc, k_align);
          const bool acc = accumulate || k0 > 0;
          pack_b(n0, nc_pad, k0, kc, bp);
          for (int64_t k = 0; k < kc; ++k) koff[k] = A.col_offset(k0 + k);
          for (int64_t m0 = tm0; m0 < tm1; m0 += mc_most) {
            const int64_t mc = std::min(mc_most, tm1 - m0), mc_pad = round_up(mc, MR);
            pack_a(m0, mc_pad, k0, kc, koff.data(), ap);
            for (int64_t j = 0; j < nc_pad; j += NR) {
              const int64_t n = n0 + j, cols = std::min<int64_t>(NR, N - n);
              const int64_t c_col = C.col_offset(n);
              const bool cols_direct = cols == NR && C.col_offset(n + NR - 1) - c_col == NR - 1;
              for (int64_t i = 0; i < mc_pad; i += MR) {
                const int64_t m = m0 + i, rows = std::min<int64_t>(MR, M - m);
                if (cols_direct && rows == MR) {
                  tile(kc, ap + i * panel, bp + j * panel, C.data + m * C.row_stride + c_col,
                       C.row_stride, acc);
                  continue;
                }
                tile(kc, ap + i * panel, bp + j * panel, c_tile, NR, false);
                for (int64_t jj = 0; jj < cols; ++jj) {
                  float* dst = C.data + m * C.row_stride + C.col_offset(n + jj);
                  for (int64_t ii = 0; ii < rows; ++ii) {
                    float& out = dst[ii * C.row_stride];
                    out = (acc ? out : 0.f) + c_tile[ii * NR + jj];
                  }
                }
              }
            }
          }
        }
      }
    }
    chunk_end();
  });
}

// gemm_bf16.cpp's product, which gemm() calls for GemmInputs::bfloat16 when
// bf16_gemm_available(): A and B rounded to bfloat16 while packed, float32 sums into C.
void gemm_bf16(int64_t M, int64_t N, int64_t K, const MatrixRef& A, const MatrixRef& B,
               const MatrixRef& C, bool accumulate);

}  // namespace fastdl::cpu::inline CPU_CAPABILITY::gemm_blocking
