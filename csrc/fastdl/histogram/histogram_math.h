// The histogram kernels' values and derivatives, shared by the CPU (scalar tails) and CUDA
// kernels so they cannot drift apart. d = x - c, w = the bin's width parameter,
// s = sharpness (sigmoid only).
//   sigmoid: v = sig(s (d + w/2)) - sig(s (d - w/2))      w = bin width
//   soft:    v = max(0, 1 - w |d|)                          w = slope (1 / half-width)
//   rbf:     v = exp(-(w d)^2)
//   hard:    v = [|d| < w]; gradient of the surrogate 1.01^(w - |d|) on |d| < w (HistNetQ)
// The derivatives follow torch's conventions at kinks: d|d|/dd = 0 at d = 0, relu' = 0 at 0.
// NaN propagates as in the pure-PyTorch reference: the soft kernel's relu keeps a NaN (so the
// bin's sum is NaN) and passes it to dv/dw; sign(NaN) = 0 (so dv/dd = 0 there, as torch's
// d|d|/dd). The hard kernel's indicator of a NaN is 0 and so is its surrogate gradient (the
// reference's NaN there is torch.where's 0 * NaN of the branch it did not take).
#pragma once

#include "fastdl/histogram/histogram.h"

#include <c10/macros/Macros.h>

#include <cmath>

namespace fastdl::detail {

// ln(1.01): the hard kernel's surrogate 1.01^y has derivative ln(1.01) * 1.01^y.
constexpr double kHardSurrogateLog = 0.00995033085316808;

// exp and |.| for float and double, host and device.
C10_HOST_DEVICE inline float hist_exp(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double hist_exp(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float hist_abs(float x) { return ::fabsf(x); }
C10_HOST_DEVICE inline double hist_abs(double x) { return ::fabs(x); }

template <typename A>
C10_HOST_DEVICE inline A hist_sign(A d) {
  return d > A(0) ? A(1) : (d < A(0) ? A(-1) : A(0));
}

template <typename A>
C10_HOST_DEVICE inline A hist_sigmoid(A z) {
  return A(1) / (A(1) + hist_exp(-z));
}

template <HistogramKernel K, typename A>
C10_HOST_DEVICE inline A hist_value(A d, A w, A s) {
  if constexpr (K == HistogramKernel::Sigmoid) {
    return hist_sigmoid(s * (d + w / 2)) - hist_sigmoid(s * (d - w / 2));
  } else if constexpr (K == HistogramKernel::Soft) {
    const A t = A(1) - w * hist_abs(d);
    return t < A(0) ? A(0) : t;  // relu that keeps NaN
  } else if constexpr (K == HistogramKernel::Rbf) {
    const A z = w * d;
    return hist_exp(-z * z);
  } else {
    return hist_abs(d) < w ? A(1) : A(0);
  }
}

// dv/dd and dv/dw (dv/dc = -dv/dd).
template <HistogramKernel K, typename A>
C10_HOST_DEVICE inline void hist_derivatives(A d, A w, A s, A& dv_dd, A& dv_dw) {
  if constexpr (K == HistogramKernel::Sigmoid) {
    const A a = hist_sigmoid(s * (d + w / 2));
    const A b = hist_sigmoid(s * (d - w / 2));
    const A da = a * (A(1) - a), db = b * (A(1) - b);
    dv_dd = s * (da - db);
    dv_dw = s / 2 * (da + db);
  } else if constexpr (K == HistogramKernel::Soft) {
    const bool active = !(A(1) - w * hist_abs(d) <= A(0));  // NaN is active, as torch's relu
    dv_dd = active ? -w * hist_sign(d) : A(0);
    dv_dw = active ? -hist_abs(d) : A(0);
  } else if constexpr (K == HistogramKernel::Rbf) {
    const A v = hist_exp(-(w * d) * (w * d));
    // Where v underflowed to 0 both derivatives are 0 (as in float64): w * d or w * w may
    // have overflowed (d ~ 1e30, w ~ 1e20), and inf * 0 would be NaN. NaN stays NaN.
    // v first: d * v is 0 where d * d would overflow.
    const A dv = d * v;
    dv_dd = v == A(0) ? A(0) : -2 * w * w * dv;
    dv_dw = v == A(0) ? A(0) : -2 * (w * d) * dv;
  } else {
    const A ad = hist_abs(d);
    const A g = ad < w ? hist_exp((w - ad) * A(kHardSurrogateLog)) * A(kHardSurrogateLog) : A(0);
    dv_dd = -g * hist_sign(d);
    dv_dw = g;
  }
}

// Calls f.template operator()<K>() for the runtime kernel: one switch, kernels as templates.
template <typename F>
inline void dispatch_histogram_kernel(HistogramKernel k, F&& f) {
  switch (k) {
    case HistogramKernel::Sigmoid:
      f.template operator()<HistogramKernel::Sigmoid>();
      break;
    case HistogramKernel::Soft:
      f.template operator()<HistogramKernel::Soft>();
      break;
    case HistogramKernel::Rbf:
      f.template operator()<HistogramKernel::Rbf>();
      break;
    case HistogramKernel::Hard:
      f.template operator()<HistogramKernel::Hard>();
      break;
  }
}

}  // namespace fastdl::detail
