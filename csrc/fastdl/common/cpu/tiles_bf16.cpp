// The AMX tile products of tiles_bf16.h, on bf16_units.h's 32 x 32 micro-kernel.
#include "fastdl/common/cpu/tiles_bf16.h"

#include "fastdl/common/cpu/bf16_units.h"
#include "fastdl/common/cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>

// Compiled once per ISA (common/cpu_isa.h); only the AVX-512 copy has the kernels.
namespace fastdl::cpu::inline CPU_CAPABILITY {

bool tile_products_available() {
#ifdef FASTDL_BF16_UNITS
  static const bool available = selected_isa() == Isa::amx;
  return available;
#else
  return false;
#endif
}

void pack_rows_as_columns(const c10::BFloat16* m, int64_t ld, int64_t n, int64_t d, uint16_t* out) {
  TORCH_INTERNAL_ASSERT(d % 32 == 0);
  const auto* src = reinterpret_cast<const uint16_t*>(m);
  const int64_t blocks = d / 32, n_pad = tile_padded(n);
  for (int64_t j0 = 0; j0 < n_pad; j0 += 32) {
    for (int64_t kb = 0; kb < blocks; ++kb) {
      uint16_t* block = out + j0 * d + kb * 1024;  // 16 pair rows x 32 columns x 2
      for (int64_t j = 0; j < 32; ++j) {
        if (j0 + j >= n) {
          for (int64_t p = 0; p < 16; ++p) block[p * 64 + 2 * j] = block[p * 64 + 2 * j + 1] = 0;
          continue;
        }
        const uint16_t* row = src + (j0 + j) * ld + kb * 32;  // steps 2p, 2p + 1 of the pair row p
        for (int64_t p = 0; p < 16; ++p) std::memcpy(block + p * 64 + 2 * j, row + 2 * p, 4);
      }
    }
  }
}

void pack_rows_as_steps(const c10::BFloat16* m, int64_t ld, int64_t n, int64_t d, uint16_t* out) {
  TORCH_INTERNAL_ASSERT(d % 32 == 0);
  const auto* src = reinterpret_cast<const uint16_t*>(m);
  const int64_t n_pad = tile_padded(n), blocks = n_pad / 32;
  for (int64_t j0 = 0; j0 < d; j0 += 32) {  // panels of 32 columns
    for (int64_t kb = 0; kb < blocks; ++kb) {
      uint16_t* block = out + (j0 / 32) * (n_pad * 32) + kb * 1024;
      for (int64_t p = 0; p < 16; ++p) {
        for (int64_t e = 0; e < 2; ++e) {
          const int64_t r = kb * 32 + 2 * p + e;
          for (int64_t j = 0; j < 32; ++j) {
            block[p * 64 + 2 * j + e] = r < n ? src[r * ld + j0 + j] : uint16_t(0);
          }
        }
      }
    }
  }
}

void tile_product(int64_t n, int64_t k, const c10::BFloat16* a, int64_t lda,
                  const uint16_t* b_packed, int64_t panel_stride, float* c, int64_t ldc,
                  bool accumulate) {
  TORCH_INTERNAL_ASSERT(n % 32 == 0 && k % 32 == 0);
#ifdef FASTDL_BF16_UNITS
  const auto* a16 = reinterpret_cast<const uint16_t*>(a);
  for (int64_t j = 0; j < n; j += 32) {
    bf16_units::tiles_32x32(k / 32, a16, lda, 32, b_packed + (j / 32) * panel_stride, c + j, ldc,
                            accumulate);
  }
#else
  (void)n, (void)k, (void)a, (void)lda, (void)b_packed, (void)panel_stride, (void)c, (void)ldc,
      (void)accumulate;
#endif
}

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
