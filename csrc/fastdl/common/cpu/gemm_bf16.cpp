// The GEMM on the CPU's bfloat16 units (gemm.h, GemmInputs::bfloat16): C (float32) (+)= A B,
// A and B rounded to bfloat16 while they are packed. The blocking is gemm.cpp's
// (gemm_blocking.h); the panels hold bfloat16 values in the layouts the units read:
//   A: 32-row panels; each block of 32 steps of K is 32 rows of 32 values (an AMX A tile is 16
//      of those rows);
//   B: 32-column panels; each block of 32 steps is 16 rows of (column, pair of steps): row p
//      holds B(2p, j), B(2p + 1, j) for j = 0..31 (an AMX B tile is 16 columns of it; a
//      vdpbf16ps operand 16 columns of one row).
// With AMX the micro-kernel holds a 32 x 32 block of C in four tiles (tdpbf16ps: a 16 x 16 x 32
// product per instruction); with AVX512_BF16 four 8 x 32 register tiles run over the same
// panels (vdpbf16ps: 16 lanes x 2 steps); those micro-kernels are bf16_units.h's. The unit
// instructions are compiled into the AVX-512 copy only (function target attributes, namespace
// bf16_units), which runs them only when selected_isa() is avx512_bf16 or amx (cpu_isa.h).
#include "fastdl/common/cpu/bf16_units.h"
#include "fastdl/common/cpu/gemm_blocking.h"
#include "fastdl/common/cpu_isa.h"

#include <ATen/Parallel.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h); only the AVX-512 copy has the kernels.
namespace fastdl::cpu::inline CPU_CAPABILITY {

#ifdef FASTDL_BF16_UNITS
namespace bf16_units {
namespace {

constexpr int64_t kKc = 512;   // most steps per packed block: a (kKc, 32) B panel is 32 KiB (L1)
constexpr int64_t kMc = 192;   // rows of A per packed block: fits L2
constexpr int64_t kNc = 2048;  // columns of B per packed block, bounding the per-task buffer

// Rows [m0, m0 + mc) x steps [k0, k0 + kc) of A (koff[k]: the offset of step k0 + k) into
// 32-row panels of ceil(kc / 32) blocks, zero past M and past kc.
FASTDL_TARGET_BF16 void pack_a(const MatrixRef& A, int64_t M, int64_t m0, int64_t mc,
                               const int64_t* koff, int64_t kc, uint16_t* out) {
  const int64_t blocks = ceil_div(kc, kSteps);
  for (int64_t p = 0; p < mc; p += kMR) {
    uint16_t* panel = out + p * blocks * kSteps;
    const int64_t rows = std::min<int64_t>(kMR, M - (m0 + p));
    for (int64_t kb = 0; kb < blocks; ++kb) {
      uint16_t* block = panel + kb * kBlock;
      const int64_t k_lo = kb * kSteps, steps = std::min(kSteps, kc - k_lo);
      const bool contiguous = steps == kSteps && koff[k_lo + kSteps - 1] - koff[k_lo] == kSteps - 1;
      for (int64_t r = 0; r < kMR; ++r) {
        uint16_t* dst = block + r * kSteps;
        if (r >= rows) {
          std::memset(dst, 0, kSteps * sizeof(uint16_t));
          continue;
        }
        const float* src = A.data + (m0 + p + r) * A.row_stride;
        if (contiguous) {
          const float* s = src + koff[k_lo];
          _mm512_storeu_si512(
              dst, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(s)));
          continue;
        }
        int64_t k = 0;
        for (; k < steps; ++k) dst[k] = to_bf16(src[koff[k_lo + k]]);
        for (; k < kSteps; ++k) dst[k] = 0;
      }
    }
  }
}

// Steps [k0, k0 + kc) x columns [n0, n0 + nc) of B into 32-column panels of ceil(kc / 32)
// blocks, zero past N and past kc.
FASTDL_TARGET_BF16 void pack_b(const MatrixRef& B, int64_t N, int64_t n0, int64_t nc, int64_t k0,
                               int64_t kc, uint16_t* out) {
  const int64_t blocks = ceil_div(kc, kSteps);
  int64_t noff[kNR];
  // lane j -> 32-bit word j * 32 of a block's (column, pair) rows: the scatter of one column
  const __m512i down_a_column =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(32));
  for (int64_t p = 0; p < nc; p += kNR) {
    uint16_t* panel = out + p * blocks * kSteps;
    const int64_t cols = std::min<int64_t>(kNR, N - (n0 + p));
    for (int64_t j = 0; j < cols; ++j) noff[j] = B.col_offset(n0 + p + j);
    const bool contiguous = cols == kNR && noff[kNR - 1] - noff[0] == kNR - 1;
    for (int64_t kb = 0; kb < blocks; ++kb) {
      uint16_t* block = panel + kb * kBlock;
      const int64_t k_lo = k0 + kb * kSteps, steps = std::min(kSteps, k0 + kc - k_lo);
      if (contiguous) {  // each step is 32 consecutive floats: two rows per pair of steps
        for (int64_t q = 0; q < kSteps / 2; ++q) {
          const int64_t k = 2 * q;
          for (int64_t half = 0; half < 2; ++half) {
            const float* s = B.data + (k_lo + k) * B.row_stride + noff[0] + 16 * half;
            const __m512 lo = k < steps ? _mm512_loadu_ps(s) : _mm512_setzero_ps();
            const __m512 hi =
                k + 1 < steps ? _mm512_loadu_ps(s + B.row_stride) : _mm512_setzero_ps();
            _mm512_storeu_si512(block + q * 2 * kNR + 32 * half, pairs(lo, hi));
          }
        }
        continue;
      }
      if (B.row_stride == 1 && steps == kSteps) {  // each column's 32 steps are consecutive
        auto* words = reinterpret_cast<int32_t*>(block);
        for (int64_t j = 0; j < kNR; ++j) {
          __m512i column = _mm512_setzero_si512();
          if (j < cols) {
            const float* s = B.data + k_lo + noff[j];
            column = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(s));
          }
          _mm512_i32scatter_epi32(words + j, down_a_column, column, 4);
        }
        continue;
      }
      for (int64_t q = 0; q < kSteps / 2; ++q) {
        uint16_t* dst = block + q * 2 * kNR;
        for (int64_t j = 0; j < kNR; ++j) {
          for (int64_t e = 0; e < 2; ++e) {
            const int64_t k = 2 * q + e;
            dst[2 * j + e] =
                j < cols && k < steps ? to_bf16(B.data[(k_lo + k) * B.row_stride + noff[j]]) : 0;
          }
        }
      }
    }
  }
}

// The same panels read from the images (ImageColumns). With unit horizontal stride the 32
// columns of a panel are a few runs of consecutive positions of one output row each (one run
// for wide images, several for small ones), and each run reads a segment of an image row:
// per run, two masked loads whose lanes are the run's columns with their input inside the
// image (a masked lane is never read, so reads at the padding cannot fault). Otherwise (strided
// convolutions, panels of many short runs) each lane gathers its element, masked likewise.
constexpr int kMostRuns = 8;

// A panel's columns: each lane's first input row and column and its offset in the batch (for
// the tap (0, 0) of channel 0 of the group), and the runs.
struct PanelColumns {
  alignas(64) int32_t ih0[kNR], iw0[kNR], base[kNR];
  int64_t run_begin[kMostRuns + 1];  // runs: lanes [run_begin[i], run_begin[i + 1])
  int runs = 0;
  bool by_runs = false;
};

// One step of K (a row of the columns, r = (c, ki, kj)): where its tap reads, relative to a
// column's first element.
struct Tap {
  int64_t offset;  // c * H * W + ki * dh * W + kj * dw
  int32_t dih, diw;
};

// The lanes of a run whose input lies inside the image for one tap (bit j: lane j), 0 if none.
inline uint32_t run_lanes(const ImageColumns& B, const PanelColumns& P, int i, const Tap& tap) {
  const int64_t a = P.run_begin[i], len = P.run_begin[i + 1] - a;
  const int64_t row = P.ih0[a] + tap.dih, first = P.iw0[a] + tap.diw;
  if (row < 0 || row >= B.height) return 0;
  const int64_t lo = a + std::max<int64_t>(0, -first);
  const int64_t hi = a + std::min<int64_t>(len, B.width - first);
  if (hi <= lo) return 0;
  return static_cast<uint32_t>(((uint64_t(1) << hi) - 1) >> lo << lo);
}

// The address lane 0 of a run's loads starts at, so that lane j reads element
// base[a] + offset + (j - a): computed as an integer, as the masked lanes' addresses may lie
// outside the batch (they are never read).
template <typename S>
inline const S* run_start(const ImageColumns& B, const PanelColumns& P, int i, const Tap& tap) {
  const int64_t a = P.run_begin[i];
  return reinterpret_cast<const S*>(reinterpret_cast<std::uintptr_t>(B.x) +
                                    (P.base[a] + tap.offset - a) * int64_t(sizeof(S)));
}

// Which lanes of a half of the panel read inside the image for one tap, and where (elements
// of the batch). Unsigned compares: a negative row or column is out too.
FASTDL_TARGET_BF16 inline __attribute__((always_inline)) __mmask16
gather_lanes(const ImageColumns& B, const __m512i& ih, const __m512i& iw, const __m512i& at,
             const Tap& tap, __m512i& index) {
  const __m512i dy = _mm512_set1_epi32(tap.dih), dx = _mm512_set1_epi32(tap.diw);
  index = _mm512_add_epi32(at, _mm512_set1_epi32(static_cast<int32_t>(tap.offset)));
  return _mm512_cmplt_epu32_mask(_mm512_add_epi32(ih, dy),
                                 _mm512_set1_epi32(static_cast<int32_t>(B.height))) &
         _mm512_cmplt_epu32_mask(_mm512_add_epi32(iw, dx),
                                 _mm512_set1_epi32(static_cast<int32_t>(B.width)));
}

// A row of the panel for one tap from float32 images: two vectors of 16 columns.
FASTDL_TARGET_BF16 inline __attribute__((always_inline)) void panel_row(
    const ImageColumns& B, const PanelColumns& P, const Tap& tap, const __m512i (&ih)[2],
    const __m512i (&iw)[2], const __m512i (&at)[2], __m512& v0, __m512& v1) {
  v0 = v1 = _mm512_setzero_ps();
  if (P.by_runs) {
    for (int i = 0; i < P.runs; ++i) {
      const uint32_t lanes = run_lanes(B, P, i, tap);
      if (!lanes) continue;
      const float* src = run_start<float>(B, P, i, tap);
      if (lanes & 0xffffu) v0 = _mm512_mask_loadu_ps(v0, static_cast<__mmask16>(lanes), src);
      if (lanes >> 16) v1 = _mm512_mask_loadu_ps(v1, static_cast<__mmask16>(lanes >> 16), src + 16);
    }
    return;
  }
  __m512i index;
  const __mmask16 in0 = gather_lanes(B, ih[0], iw[0], at[0], tap, index);
  v0 = _mm512_mask_i32gather_ps(v0, in0, index, B.x, 4);
  const __mmask16 in1 = gather_lanes(B, ih[1], iw[1], at[1], tap, index);
  v1 = _mm512_mask_i32gather_ps(v1, in1, index, B.x, 4);
}

// The same from bfloat16 images: the 32 columns' values in one vector of 16-bit lanes. The
// gathers read 32 bits: those ending at the element (its upper half), or for element 0 those
// starting at it, so no read leaves the batch.
FASTDL_TARGET_BF16 inline __attribute__((always_inline)) __m512i
panel_row_bf16(const ImageColumns& B, const PanelColumns& P, const Tap& tap, const __m512i (&ih)[2],
               const __m512i (&iw)[2], const __m512i (&at)[2]) {
  __m512i v = _mm512_setzero_si512();
  if (P.by_runs) {
    for (int i = 0; i < P.runs; ++i) {
      const uint32_t lanes = run_lanes(B, P, i, tap);
      if (lanes) v = _mm512_mask_loadu_epi16(v, lanes, run_start<uint16_t>(B, P, i, tap));
    }
    return v;
  }
  __m256i halves[2];
  for (int h = 0; h < 2; ++h) {
    __m512i index;
    const __mmask16 in = gather_lanes(B, ih[h], iw[h], at[h], tap, index);
    const __mmask16 above_0 = _mm512_cmpgt_epi32_mask(index, _mm512_setzero_si512());
    const __m512i from = _mm512_mask_sub_epi32(index, above_0, index, _mm512_set1_epi32(1));
    const __m512i words = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), in, from, B.x, 2);
    const __m512i shift = _mm512_maskz_mov_epi32(above_0, _mm512_set1_epi32(16));
    halves[h] = _mm512_cvtepi32_epi16(_mm512_srlv_epi32(words, shift));
  }
  return _mm512_inserti64x4(_mm512_castsi256_si512(halves[0]), halves[1], 1);
}

FASTDL_TARGET_BF16 void pack_b(const ImageColumns& B, int64_t N, int64_t n0, int64_t nc, int64_t k0,
                               int64_t kc, uint16_t* out) {
  const int64_t blocks = ceil_div(kc, kSteps);
  const int64_t L = B.out_h * B.out_w, plane = B.height * B.width, taps = B.kh * B.kw;
  const int64_t image = B.channels * plane;
  Tap tap[kKc];  // the block's steps, decoded once for all its panels
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t r = k0 + k, c = r / taps, ki = (r % taps) / B.kw, kj = r % B.kw;
    tap[k].dih = static_cast<int32_t>(ki * B.dh);
    tap[k].diw = static_cast<int32_t>(kj * B.dw);
    tap[k].offset = c * plane + tap[k].dih * B.width + tap[k].diw;
  }
  // 16-bit lanes [a0, b0, a1, b1, ...]: columns 0-15 of two steps, then columns 16-31
  alignas(64) int16_t low[32], high[32];
  for (int j = 0; j < 16; ++j) {
    low[2 * j] = static_cast<int16_t>(j), low[2 * j + 1] = static_cast<int16_t>(32 + j);
    high[2 * j] = static_cast<int16_t>(16 + j), high[2 * j + 1] = static_cast<int16_t>(48 + j);
  }
  const __m512i interleave_low = _mm512_load_si512(low), interleave_high = _mm512_load_si512(high);
  PanelColumns P;
  for (int64_t p = 0; p < nc; p += kNR) {
    uint16_t* panel = out + p * blocks * kSteps;
    const int64_t cols = std::min<int64_t>(kNR, N - (n0 + p));
    P.runs = 0;
    P.by_runs = B.sw == 1 && cols > 0;
    for (int64_t j = 0; j < kNR; ++j) {
      if (j >= cols) {  // past the last column: a row no image has
        P.ih0[j] = -(1 << 30), P.iw0[j] = 0, P.base[j] = 0;
        continue;
      }
      const int64_t col = n0 + p + j;
      const int64_t n = col / L, l = col % L, oh = l / B.out_w, ow = l % B.out_w;
      P.ih0[j] = static_cast<int32_t>(oh * B.sh - B.ph);
      P.iw0[j] = static_cast<int32_t>(ow * B.sw - B.pw);
      P.base[j] =
          static_cast<int32_t>(n * image + B.first_channel * plane + P.ih0[j] * B.width + P.iw0[j]);
      if (j == 0 || P.ih0[j] != P.ih0[j - 1] || P.base[j] != P.base[j - 1] + 1) {  // a new run
        if (P.runs == kMostRuns) P.by_runs = false;
        if (P.by_runs) P.run_begin[P.runs++] = j;
      }
    }
    P.run_begin[P.runs] = cols;
    __m512i ih[2], iw[2], at[2];
    for (int h = 0; h < 2; ++h) {
      ih[h] = _mm512_load_si512(P.ih0 + 16 * h);
      iw[h] = _mm512_load_si512(P.iw0 + 16 * h);
      at[h] = _mm512_load_si512(P.base + 16 * h);
    }
    for (int64_t kb = 0; kb < blocks; ++kb) {
      uint16_t* block = panel + kb * kBlock;
      for (int64_t q = 0; q < kSteps / 2; ++q) {
        const int64_t k = kb * kSteps + 2 * q;  // the pair of steps k, k + 1
        uint16_t* dst = block + q * 2 * kNR;
        if (B.x_is_bf16) {
          const __m512i zero = _mm512_setzero_si512();
          const __m512i a = k < kc ? panel_row_bf16(B, P, tap[k], ih, iw, at) : zero;
          const __m512i b = k + 1 < kc ? panel_row_bf16(B, P, tap[k + 1], ih, iw, at) : zero;
          _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(a, interleave_low, b));
          _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi16(a, interleave_high, b));
          continue;
        }
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
        if (k < kc) panel_row(B, P, tap[k], ih, iw, at, a0, a1);
        if (k + 1 < kc) panel_row(B, P, tap[k + 1], ih, iw, at, b0, b1);
        _mm512_storeu_si512(dst, pairs(a0, b0));
        _mm512_storeu_si512(dst + 32, pairs(a1, b1));
      }
    }
  }
}

// c (row stride ldc) (+)= the 32 x 32 product of an A panel and a B panel of `blocks` blocks.
using TileKernel = void (*)(int64_t blocks, const uint16_t* a, const uint16_t* b, float* c,
                            int64_t ldc, bool accumulate);

FASTDL_TARGET_AMX void tile_amx(int64_t blocks, const uint16_t* a, const uint16_t* b, float* c,
                                int64_t ldc, bool accumulate) {
  tiles_32x32(blocks, a, kSteps, kBlock, b, c, ldc, accumulate);
}

FASTDL_TARGET_BF16 void tile_avx512_bf16(int64_t blocks, const uint16_t* a, const uint16_t* b,
                                         float* c, int64_t ldc, bool accumulate) {
  for (int64_t r0 = 0; r0 < kMR; r0 += 8) {
    rows_8x32(blocks, a + r0 * kSteps, b, c + r0 * ldc, ldc, accumulate);
  }
}

// B is a MatrixRef or ImageColumns (its pack_b).
template <typename BSource>
void gemm(bool amx, int64_t M, int64_t N, int64_t K, const MatrixRef& A, const BSource& B,
          const MatrixRef& C, bool accumulate) {
  const TileKernel kernel = amx ? &tile_amx : &tile_avx512_bf16;
  const gemm_blocking::Tasks tasks =
      gemm_blocking::plan_tasks(M, N, K, kMR, kNR, kKc, /*k_round=*/kSteps);
  gemm_blocking::blocked_product<uint16_t, kMR, kNR>(
      M, N, K, A, C, accumulate, tasks, kMc, kNc, /*k_align=*/kSteps,
      [&](int64_t m0, int64_t mc, int64_t, int64_t kc, const int64_t* koff, uint16_t* out) {
        pack_a(A, M, m0, mc, koff, kc, out);
      },
      [&](int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint16_t* out) {
        pack_b(B, N, n0, nc, k0, kc, out);
      },
      [&](int64_t kc, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc, bool acc) {
        kernel(ceil_div(kc, kSteps), a, b, c, ldc, acc);
      },
      [amx] {
        if (amx) configure_tiles();  // the tile configuration is per thread
      },
      [amx] {
        if (amx) release_tiles();
      });
}

// Every row of A (M, K) into 32-row panels over all of K.
void pack_all_rows(const MatrixRef& A, int64_t M, int64_t K, uint16_t* out) {
  std::vector<int64_t> koff(K);
  for (int64_t k = 0; k < K; ++k) koff[k] = A.col_offset(k);
  pack_a(A, M, 0, round_up(M, kMR), koff.data(), K, out);
}

// C (+)= A B for a B prepacked over all of K (prepack_bf16): A's rows packed once into 32-row
// panels, then each 32 x 32 block of C is one A panel against one B panel, the blocks shared
// out among the threads. A block whose rows or columns the kernel would write past C (columns
// past N; rows past M other than a 16-row block on the tiles, or not a multiple of the dot
// products' 8) is computed into a buffer and added.
void gemm_prepacked(bool amx, int64_t M, int64_t N, int64_t K, const MatrixRef& A,
                    const uint16_t* B, const MatrixRef& C, bool accumulate) {
  const int64_t blocks = ceil_div(K, kSteps), panel = blocks * kBlock;
  const int64_t m_panels = ceil_div(M, kMR), n_panels = ceil_div(N, kNR);
  uint16_t* a_panels = gemm_blocking::packing_buffer<uint16_t>(0, m_panels * panel);
  pack_all_rows(A, M, K, a_panels);
  const int64_t tasks = m_panels * n_panels;
  // Below ~1 MFLOP a second thread costs more to wake than it saves.
  const int64_t grain = 2.0 * M * N * K < 1e6 ? tasks : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    if (amx) configure_tiles();
    alignas(64) float c_tile[kMR * kNR];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m = (task / n_panels) * kMR, n = (task % n_panels) * kNR;
      const int64_t rows = std::min(kMR, M - m), cols = std::min(kNR, N - n);
      const bool direct = cols == kNR && (amx ? rows == kMR || rows == 16 : rows % 8 == 0);
      float* dst = direct ? C.data + m * C.row_stride + n : c_tile;
      block_product(amx, blocks, a_panels + (m / kMR) * panel, B + (n / kNR) * panel, rows, dst,
                    direct ? C.row_stride : kNR, direct && accumulate);
      if (direct) continue;
      for (int64_t i = 0; i < rows; ++i) {
        float* out = C.data + (m + i) * C.row_stride + n;
        for (int64_t j = 0; j < cols; ++j) {
          out[j] = (accumulate ? out[j] : 0.f) + c_tile[i * kNR + j];
        }
      }
    }
    if (amx) release_tiles();
  });
}

}  // namespace
}  // namespace bf16_units
#endif  // FASTDL_BF16_UNITS

bool bf16_gemm_available() {
#ifdef FASTDL_BF16_UNITS
  static const bool available = gemm_available() && selected_isa() >= Isa::avx512_bf16;
  return available;
#else
  return false;
#endif
}

namespace gemm_blocking {

void gemm_bf16(int64_t M, int64_t N, int64_t K, const MatrixRef& A, const MatrixRef& B,
               const MatrixRef& C, bool accumulate) {
  TORCH_INTERNAL_ASSERT(bf16_gemm_available());
#ifdef FASTDL_BF16_UNITS
  bf16_units::gemm(selected_isa() == Isa::amx, M, N, K, A, B, C, accumulate);
#endif
}

}  // namespace gemm_blocking

bool gemm_image_columns_available(const ImageColumns& B) {
  const int64_t elements = B.batch * B.channels * B.height * B.width;
  return bf16_gemm_available() && elements < (int64_t(1) << 31) && (!B.x_is_bf16 || elements >= 2);
}

void gemm_image_columns(int64_t M, int64_t N, int64_t K, const MatrixRef& A, const ImageColumns& B,
                        const MatrixRef& C, bool accumulate) {
  TORCH_INTERNAL_ASSERT(gemm_image_columns_available(B) && C.col_stride == 1);
  TORCH_INTERNAL_ASSERT(N == B.batch * B.out_h * B.out_w && K % (B.kh * B.kw) == 0);
  if (gemm_blocking::nothing_to_multiply(M, N, K, C, accumulate)) return;
#ifdef FASTDL_BF16_UNITS
  bf16_units::gemm(selected_isa() == Isa::amx, M, N, K, A, B, C, accumulate);
#endif
}

int64_t prepacked_bf16_size(int64_t K, int64_t N) {
  return gemm_blocking::round_up(K, 32) * gemm_blocking::round_up(N, 32);
}

void prepack_bf16(int64_t K, int64_t N, const MatrixRef& B, uint16_t* out) {
  TORCH_INTERNAL_ASSERT(bf16_gemm_available());
#ifdef FASTDL_BF16_UNITS
  if (K > 0 && N > 0) bf16_units::pack_b(B, N, 0, gemm_blocking::round_up(N, 32), 0, K, out);
#else
  (void)K, (void)N, (void)B, (void)out;
#endif
}

void gemm_prepacked_bf16(int64_t M, int64_t N, int64_t K, const MatrixRef& A,
                         const uint16_t* B_packed, const MatrixRef& C, bool accumulate) {
  TORCH_INTERNAL_ASSERT(bf16_gemm_available() && C.col_stride == 1 &&
                        C.group == std::numeric_limits<int64_t>::max());
  if (gemm_blocking::nothing_to_multiply(M, N, K, C, accumulate)) return;
#ifdef FASTDL_BF16_UNITS
  bf16_units::gemm_prepacked(selected_isa() == Isa::amx, M, N, K, A, B_packed, C, accumulate);
#else
  (void)B_packed;
#endif
}

int64_t packed_rows_bf16_size(int64_t M, int64_t K) {
  return gemm_blocking::round_up(M, 32) * gemm_blocking::round_up(K, 32);
}

void pack_rows_bf16(int64_t M, int64_t K, const MatrixRef& A, uint16_t* out) {
  TORCH_INTERNAL_ASSERT(bf16_gemm_available());
#ifdef FASTDL_BF16_UNITS
  if (M > 0 && K > 0) bf16_units::pack_all_rows(A, M, K, out);
#else
  (void)M, (void)K, (void)A, (void)out;
#endif
}

Bf16UnitsScope::Bf16UnitsScope() : amx_(false) {
#ifdef FASTDL_BF16_UNITS
  TORCH_INTERNAL_ASSERT(selected_isa() >= Isa::avx512_bf16);
  amx_ = selected_isa() == Isa::amx;
  if (amx_) bf16_units::configure_tiles();
#else
  TORCH_INTERNAL_ASSERT(false, "no bfloat16 units in this copy");
#endif
}

Bf16UnitsScope::~Bf16UnitsScope() {
#ifdef FASTDL_BF16_UNITS
  if (amx_) bf16_units::release_tiles();
#endif
}

void prepacked_block_bf16(int64_t K, const uint16_t* a_packed, int64_t a_panel,
                          const uint16_t* b_packed, int64_t b_panel, int64_t rows, float* c,
                          int64_t ldc) {
#ifdef FASTDL_BF16_UNITS
  const int64_t blocks = gemm_blocking::ceil_div(K, 32), panel = blocks * bf16_units::kBlock;
  bf16_units::block_product(selected_isa() == Isa::amx, blocks, a_packed + a_panel * panel,
                            b_packed + b_panel * panel, rows, c, ldc, false);
#else
  (void)K, (void)a_packed, (void)a_panel, (void)b_packed, (void)b_panel, (void)rows, (void)c,
      (void)ldc;
#endif
}

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
