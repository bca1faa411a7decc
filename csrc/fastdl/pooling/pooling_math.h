// Pooling window geometry shared by the CPU and CUDA kernels (host and device), so the two
// cannot drift apart. Conventions are torch's (aten/src/ATen/native/Pool.h and the
// MaxPooling/AveragePool kernels).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace fastdl::detail {

C10_HOST_DEVICE inline int64_t pool_min(int64_t a, int64_t b) { return a < b ? a : b; }
C10_HOST_DEVICE inline int64_t pool_max(int64_t a, int64_t b) { return a > b ? a : b; }

// The valid taps of a max-pool window along one dim: first in-bounds position `begin`
// (start + a multiple of the dilation) and the end `end` (exclusive), stepping by dilation.
struct MaxRange {
  int64_t begin, end;
};
C10_HOST_DEVICE inline MaxRange max_pool_range(int64_t o, int64_t in, int64_t k, int64_t s,
                                               int64_t p, int64_t d) {
  int64_t begin = o * s - p;
  const int64_t end = pool_min(begin + (k - 1) * d + 1, in);
  while (begin < 0) begin += d;
  return {begin, end};
}

// Max is NaN-propagating as torch: a NaN always replaces the running maximum.
template <typename A>
C10_HOST_DEVICE inline bool max_pool_takes(A value, A current) {
  return value > current || value != value;
}

// Output positions whose window (with dilation) covers input position i along one dim:
// [first, last) — the gather of the backward kernels.
struct OutRange {
  int64_t first, last;
};
C10_HOST_DEVICE inline OutRange covering_outputs(int64_t i, int64_t out, int64_t k, int64_t s,
                                                 int64_t p, int64_t d) {
  const int64_t span = (k - 1) * d + 1;
  const int64_t first = (i + p < span) ? 0 : (i + p - span) / s + 1;
  const int64_t last = pool_min((i + p) / s + 1, out);
  return {first, last};
}

// An average-pool window: clipped bounds [h0, h1) x [w0, w1) and the divisor (the padded
// window size, the clipped one, or divisor_override; 0 for an empty clipped window).
struct AvgWindow {
  int64_t h0, h1, w0, w1, divisor;
};
C10_HOST_DEVICE inline AvgWindow avg_pool_window(int64_t oh, int64_t ow, int64_t H, int64_t W,
                                                 int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                                 int64_t ph, int64_t pw, bool count_include_pad,
                                                 int64_t divisor_override) {
  int64_t h0 = oh * sh - ph, w0 = ow * sw - pw;
  int64_t h1 = pool_min(h0 + kh, H + ph), w1 = pool_min(w0 + kw, W + pw);
  const int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = pool_max(h0, 0);
  w0 = pool_max(w0, 0);
  h1 = pool_min(h1, H);
  w1 = pool_min(w1, W);
  const int64_t clipped = (h1 > h0 && w1 > w0) ? (h1 - h0) * (w1 - w0) : 0;
  const int64_t divisor =
      divisor_override != 0 ? divisor_override : (count_include_pad ? padded : clipped);
  return {h0, h1, w0, w1, clipped == 0 ? 0 : divisor};
}

}  // namespace fastdl::detail
