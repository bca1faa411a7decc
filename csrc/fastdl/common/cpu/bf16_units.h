// The micro-kernels of the CPU's bfloat16 units, shared by the bfloat16 GEMM (gemm_bf16.cpp)
// and the tile products (tiles_bf16.cpp): 32 x 32 blocks of float32 C from panels of bfloat16
// A and B in the layouts of gemm_bf16.cpp's header comment, on the AMX tiles (tdpbf16ps) or
// with AVX512_BF16 dot products (vdpbf16ps). Their instructions are in functions with target
// attributes, compiled into the AVX-512 copy only, and run only when selected_isa() is
// avx512_bf16 or amx (common/cpu_isa.h).
#pragma once

#ifndef CPU_CAPABILITY
#error "only CPU kernel files (common/cpu/), compiled once per ISA, include this header"
#endif

#include "fastdl/common/cpu/gemm_blocking.h"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(CPU_CAPABILITY_AVX512)
#define FASTDL_BF16_UNITS 1
#include <immintrin.h>

namespace fastdl::cpu::inline CPU_CAPABILITY::bf16_units {

#define FASTDL_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define FASTDL_TARGET_AMX \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

using gemm_blocking::ceil_div;
using gemm_blocking::round_up;

constexpr int64_t kMR = 32;               // rows of an A panel (two AMX tiles of 16)
constexpr int64_t kNR = 32;               // columns of a B panel
constexpr int64_t kSteps = 32;            // steps of K per block of a panel (one AMX tile's depth)
constexpr int64_t kBlock = kMR * kSteps;  // values of one block of a panel

// Round to nearest even; NaN stays NaN.
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// 16 (column, pair of steps) values: bfloat16(lo[j]) in the low half of lane j, hi[j] in the high.
FASTDL_TARGET_BF16 inline __attribute__((always_inline)) __m512i pairs(__m512 lo, __m512 hi) {
  const __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
  const __m512i h = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
  return _mm512_or_si512(l, _mm512_slli_epi32(h, 16));
}

// AMX: C's block in tiles 0-3 (rows 0-15 / 16-31 x columns 0-15 / 16-31), A in 4-5, B in 6-7.
// A's block kb for rows 0-15 starts at a + kb * a_step, its rows a_row values apart (a packed
// panel: 32 and kBlock; rows read in place: their stride and 32).
FASTDL_TARGET_AMX inline void tiles_32x32(int64_t blocks, const uint16_t* a, int64_t a_row,
                                          int64_t a_step, const uint16_t* b, float* c, int64_t ldc,
                                          bool accumulate) {
  const int64_t stride = ldc * static_cast<int64_t>(sizeof(float));
  const int64_t a_stride = a_row * static_cast<int64_t>(sizeof(uint16_t));
  float* c1 = c + 16 * ldc;
  if (accumulate) {
    _tile_loadd(0, c, stride);
    _tile_loadd(1, c + 16, stride);
    _tile_loadd(2, c1, stride);
    _tile_loadd(3, c1 + 16, stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t kb = 0; kb < blocks; ++kb) {
    const uint16_t* ak = a + kb * a_step;
    const uint16_t* bk = b + kb * kBlock;
    _tile_loadd(4, ak, a_stride);
    _tile_loadd(5, ak + 16 * a_row, a_stride);
    _tile_loadd(6, bk, kNR * 4);
    _tile_loadd(7, bk + 32, kNR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, stride);
  _tile_stored(1, c + 16, stride);
  _tile_stored(2, c1, stride);
  _tile_stored(3, c1 + 16, stride);
}

// The same for a block of at most 16 rows (a small batch): C in tiles 0-1, A in 4, B in 6-7.
FASTDL_TARGET_AMX inline void tiles_16x32(int64_t blocks, const uint16_t* a, int64_t a_step,
                                          const uint16_t* b, float* c, int64_t ldc,
                                          bool accumulate) {
  const int64_t stride = ldc * static_cast<int64_t>(sizeof(float));
  if (accumulate) {
    _tile_loadd(0, c, stride);
    _tile_loadd(1, c + 16, stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
  }
  for (int64_t kb = 0; kb < blocks; ++kb) {
    const uint16_t* bk = b + kb * kBlock;
    _tile_loadd(4, a + kb * a_step, kSteps * 2);
    _tile_loadd(6, bk, kNR * 4);
    _tile_loadd(7, bk + 32, kNR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
  }
  _tile_stored(0, c, stride);
  _tile_stored(1, c + 16, stride);
}

// Every tile 16 rows of 64 bytes (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

FASTDL_TARGET_AMX inline void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  // gcc does not see that ldtilecfg reads the struct and drops the stores above without this.
  asm volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

FASTDL_TARGET_AMX inline void release_tiles() { _tile_release(); }

// AVX512_BF16: rows r0..r0 + 7 of the block (a points at row r0 of the A panel), 16 zmm sums.
FASTDL_TARGET_BF16 inline void rows_8x32(int64_t blocks, const uint16_t* a, const uint16_t* b,
                                         float* c, int64_t ldc, bool accumulate) {
  constexpr int R = 8;
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    acc0[i] = accumulate ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
    acc1[i] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t kb = 0; kb < blocks; ++kb) {
    const uint16_t* ak = a + kb * kBlock;
    const uint16_t* bk = b + kb * kBlock;
    for (int64_t q = 0; q < kSteps / 2; ++q) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bk + q * 2 * kNR);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bk + q * 2 * kNR + 32);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        int32_t pair;
        std::memcpy(&pair, ak + i * kSteps + 2 * q, sizeof(pair));
        const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
        acc0[i] = _mm512_dpbf16_ps(acc0[i], ai, b0);
        acc1[i] = _mm512_dpbf16_ps(acc1[i], ai, b1);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    _mm512_storeu_ps(c + i * ldc, acc0[i]);
    _mm512_storeu_ps(c + i * ldc + 16, acc1[i]);
  }
}

// One 32 x 32 block of C (+)= an A panel times a B panel of `blocks` blocks, its first `rows`
// rows: on the tiles (16 rows of them when that covers the rows) or, for the dot products, in
// groups of 8 rows.
inline void block_product(bool amx, int64_t blocks, const uint16_t* a, const uint16_t* b,
                          int64_t rows, float* c, int64_t ldc, bool accumulate) {
  if (amx && rows <= 16) {  // half the products of a whole block
    tiles_16x32(blocks, a, kBlock, b, c, ldc, accumulate);
    return;
  }
  if (amx) {
    tiles_32x32(blocks, a, kSteps, kBlock, b, c, ldc, accumulate);
    return;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    rows_8x32(blocks, a + r0 * kSteps, b, c + r0 * ldc, ldc, accumulate);
  }
}

}  // namespace fastdl::cpu::inline CPU_CAPABILITY::bf16_units
#endif  // CPU_CAPABILITY_AVX512 on x86-64
