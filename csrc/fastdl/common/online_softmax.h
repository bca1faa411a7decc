// The online softmax both attention families (attention/, sets/) compute with, on CPU and
// CUDA, so the conventions cannot drift apart.
//
// A softmax over keys is a running state (m, l, acc): m the largest score seen, l the sum of
// exp(s_j - m), acc the sum of exp(s_j - m) v_j; an empty state has m = -inf and l = 0. A state
// whose maximum grows from m_old to m_new is rescaled by exp_shifted(m_old, m_new); two states
// (key chunks) merge the same way. The row's log-sum-exp is log_sum_exp(m, l), its output
// acc * inverse_or_zero(l). Masked keys score -inf; a row whose keys are all masked gives 0
// (torch's safe softmax), never NaN. A NaN score (from a NaN or an infinity in the inputs) makes
// its row NaN, as torch's softmax: the maximum, log-sum-exp and 1 / l below let NaN through.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace fastdl::softmax {

template <typename A>
C10_HOST_DEVICE constexpr A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

C10_HOST_DEVICE inline float exp_of(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double exp_of(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float log_of(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double log_of(double x) { return ::log(x); }

// max(a, b) that keeps a NaN of either (std::max, fmaxf and max drop a NaN in some positions).
template <typename A>
C10_HOST_DEVICE inline A max_nan(A a, A b) {
  return (a > b || a != a) ? a : b;
}

// exp(s - m) for m >= s, and 0 when m is -inf (no -inf - -inf = NaN): a probability given
// the row maximum or log-sum-exp m, the factor rescaling a state from maximum s to m, and the
// weight of a partial result of log-sum-exp s in a row of log-sum-exp m.
template <typename A>
C10_HOST_DEVICE inline A exp_shifted(A s, A m) {
  return m == neg_inf<A>() ? A(0) : exp_of(s - m);
}

// The row's log-sum-exp from its state; -inf for a row that saw no key.
template <typename A>
C10_HOST_DEVICE inline A log_sum_exp(A m, A l) {
  return (l > A(0) || l != l) ? m + log_of(l) : neg_inf<A>();
}

// 1 / l, or 0 for a row that saw no key (its output is 0); NaN stays NaN.
template <typename A>
C10_HOST_DEVICE inline A inverse_or_zero(A l) {
  return (l > A(0) || l != l) ? A(1) / l : A(0);
}

}  // namespace fastdl::softmax
