// Formulas shared by the CPU and CUDA attention kernels so they cannot drift apart: the
// dropout keep mask (a counter-based hash, identical on both devices and regenerated in
// backward). The softmax conventions are common/online_softmax.h's.
#pragma once

#include "fastdl/common/online_softmax.h"

#include <c10/macros/Macros.h>

#include <cstdint>

namespace fastdl::detail {

// splitmix64's finaliser: a bijective 64-bit mix with good avalanche, enough for dropout.
C10_HOST_DEVICE inline uint64_t sdpa_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Whether dropout keeps the probability at flat position `index` = ((b * Hq + h) * L + i) * S + j:
// a uniform in [0, 1) from 24 hashed bits, kept when >= p.
C10_HOST_DEVICE inline bool sdpa_dropout_keep(uint64_t seed, uint64_t index, float p) {
  const uint64_t bits = sdpa_mix64(index + sdpa_mix64(seed));
  const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
  return u >= p;
}

}  // namespace fastdl::detail
