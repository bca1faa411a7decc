// The per-channel formulas of batch norm, shared by the CPU and CUDA kernels so they cannot
// drift apart. A is the accumulation type (double on CPU, float or double on CUDA).
#pragma once

#include <c10/macros/Macros.h>

namespace fastdl::detail {

// r = (1 - momentum) * r + momentum * statistic (torch's running-average convention).
template <typename A>
C10_HOST_DEVICE inline A bn_running_update(A running, A statistic, A momentum) {
  return (A(1) - momentum) * running + momentum * statistic;
}

// y = (x - mean) * k1 + k3 with k1 = invstd * w, k3 = b. Centred: with a large |mean| against
// the spread, x * k1 + (b - mean * k1) would cancel and lose the digits that matter.
template <typename A>
C10_HOST_DEVICE inline void bn_output_coefficients(A invstd, A w, A b, A& k1, A& k3) {
  k1 = invstd * w;
  k3 = b;
}

// dx = dy * k1 + (x - mean) * k2 + k3 (centred, as above). Training (batch statistics over n
// values per channel):
//   dx = (dy - sum_dy / n - (x - mean) * invstd^2 * sum_dyx / n) * invstd * w,
// with sum_dy = sum(dy), sum_dyx = sum(dy * (x - mean)). Evaluation: dx = dy * invstd * w.
template <typename A>
C10_HOST_DEVICE inline void bn_input_grad_coefficients(A invstd, A w, A sum_dy, A sum_dyx, A n,
                                                       bool training, A& k1, A& k2, A& k3) {
  k1 = invstd * w;
  if (training) {
    k2 = -invstd * invstd * invstd * w * sum_dyx / n;
    k3 = -invstd * w * sum_dy / n;
  } else {
    k2 = A(0);
    k3 = A(0);
  }
}

}  // namespace fastdl::detail
