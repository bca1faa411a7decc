// AMX tile products for CPU kernels that multiply their own cache-sized blocks inside parallel
// tasks (the attention kernels): bfloat16 operands, float32 sums, 32-row blocks of C. The
// B operands are packed once (pack_rows_as_columns / pack_rows_as_steps) into the layout the
// tiles read, and reused by every block product; A is read in place, 32 rows of bfloat16.
// Implemented in tiles_bf16.cpp, on the GEMM's micro-kernel (bf16_units.h).
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include "fastdl/common/cpu/gemm.h"

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace fastdl::cpu::inline CPU_CAPABILITY {

// Whether the products below run here (the AVX-512 copy with selected_isa() amx).
bool tile_products_available();

// n rounded up to the tiles' 32.
inline int64_t tile_padded(int64_t n) { return (n + 31) / 32 * 32; }

// The n rows (row stride ld) of an (n, d) bfloat16 matrix M as the B operand of A M^T (M's rows
// become the product's columns), d % 32 == 0; tile_padded(n) * d values, zero past n.
void pack_rows_as_columns(const c10::BFloat16* m, int64_t ld, int64_t n, int64_t d, uint16_t* out);

// The same matrix as the B operand of A M (M's rows are the reduction steps), d % 32 == 0;
// tile_padded(n) * d values, zero rows past n; steps k0.. (k0 % 32 == 0) of a column panel
// start k0 * 32 values into it.
void pack_rows_as_steps(const c10::BFloat16* m, int64_t ld, int64_t n, int64_t d, uint16_t* out);

// C (32 rows x n, ldc) (+)= A (32 rows x k, bfloat16, row stride lda) @ B, for B packed as above:
// b_packed the panel of C's first column at A's first step, panel_stride the values from one
// column panel to the next (32 d for pack_rows_as_columns, 32 tile_padded(n) for
// pack_rows_as_steps); n and k multiples of 32. Needs a Bf16UnitsScope (gemm.h) on this thread.
void tile_product(int64_t n, int64_t k, const c10::BFloat16* a, int64_t lda,
                  const uint16_t* b_packed, int64_t panel_stride, float* c, int64_t ldc,
                  bool accumulate);

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
