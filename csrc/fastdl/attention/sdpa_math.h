// Formulas shared by the CPU and CUDA attention kernels so they cannot drift apart: the
// dropout keep mask (a counter-based hash, identical on both devices and regenerated in
// backward) and the masked-score conventions.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

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

// The score a masked-out key gets. Rows where every key is masked produce zeros (torch's
// safe softmax), which the kernels detect by a running maximum still at -inf.
template <typename A>
C10_HOST_DEVICE constexpr A sdpa_neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

// exp(s - m), zero when the row maximum m is still -inf (every key so far masked).
template <typename A>
C10_HOST_DEVICE inline A sdpa_exp_shifted(A s, A m);

template <>
C10_HOST_DEVICE inline float sdpa_exp_shifted<float>(float s, float m) {
  return m == sdpa_neg_inf<float>() ? 0.0f : ::expf(s - m);
}

template <>
C10_HOST_DEVICE inline double sdpa_exp_shifted<double>(double s, double m) {
  return m == sdpa_neg_inf<double>() ? 0.0 : ::exp(s - m);
}

}  // namespace fastdl::detail
