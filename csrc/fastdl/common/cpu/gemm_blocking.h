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

// gemm_bf16.cpp's product, which gemm() calls for GemmInputs::bfloat16 when
// bf16_gemm_available(): A and B rounded to bfloat16 while packed, float32 sums into C.
void gemm_bf16(int64_t M, int64_t N, int64_t K, const MatrixRef& A, const MatrixRef& B,
               const MatrixRef& C, bool accumulate);

}  // namespace fastdl::cpu::inline CPU_CAPABILITY::gemm_blocking
