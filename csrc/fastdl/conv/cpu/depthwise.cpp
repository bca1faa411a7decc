// Depthwise convolution on the CPU: direct loops with branch-free inner loops over the valid
// output range of each tap (conv_math.h), vectorised with at::vec, parallel over planes.
#include "fastdl/conv/cpu/depthwise.h"

#include "fastdl/common/cpu/vec.h"
#include "fastdl/conv/conv_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h).
namespace fastdl::conv_cpu::inline CPU_CAPABILITY {

using cpu::axpy;
using cpu::dot;
using cpu::grain;
using detail::Conv2dShape;

// Each input plane is copied once into a zero-padded buffer (no bounds checks after that);
// for stride 1 each vector of outputs accumulates its kh * kw taps in a register.
template <typename T>
void depthwise_forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s) {
  using V = cpu::Vec<T>;
  constexpr int64_t VL = V::size();
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, K = s.out_channels,
                C = s.in_channels;
  const int64_t m = K / C, kk = s.kh * s.kw;
  const int64_t Hp = H + 2 * s.ph, Wp = W + 2 * s.pw;
  at::parallel_for(0, s.batch * K, grain(OH * OW * kk), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(Hp * Wp, T(0));
    std::vector<V> wv(kk);
    int64_t buffered = -1;  // the (n, c) plane in buf
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / K, k = p % K, c = k / m;
      if (buffered != n * C + c) {
        const T* xp = x + (n * C + c) * H * W;
        for (int64_t ih = 0; ih < H; ++ih)
          std::copy(xp + ih * W, xp + (ih + 1) * W, buf.data() + (ih + s.ph) * Wp + s.pw);
        buffered = n * C + c;
      }
      const T* wk = w + k * kk;
      for (int64_t t = 0; t < kk; ++t) wv[t] = V(wk[t]);
      const T b = bias ? bias[k] : T(0);
      T* yp = y + p * OH * OW;
      for (int64_t oh = 0; oh < OH; ++oh) {
        T* yr = yp + oh * OW;
        const T* base = buf.data() + oh * s.sh * Wp;
        int64_t ow = 0;
        if (s.sw == 1) {
          for (; ow + VL <= OW; ow += VL) {
            V acc(b);
            for (int64_t ki = 0; ki < s.kh; ++ki) {
              const T* xr = base + ki * s.dh * Wp + ow;
              for (int64_t kj = 0; kj < s.kw; ++kj)
                acc = at::vec::fmadd(wv[ki * s.kw + kj], V::loadu(xr + kj * s.dw), acc);
            }
            acc.store(yr + ow);
          }
        }
        for (; ow < OW; ++ow) {
          T acc = b;
          for (int64_t ki = 0; ki < s.kh; ++ki) {
            const T* xr = base + ki * s.dh * Wp + ow * s.sw;
            for (int64_t kj = 0; kj < s.kw; ++kj) acc += wk[ki * s.kw + kj] * xr[kj * s.dw];
          }
          yr[ow] = acc;
        }
      }
    }
  });
}

// Stride 1: grad_input is the convolution of grad_output (zero-padded by the dilated kernel
// extent into a buffer) with the flipped kernel, vectorised over the input row like the forward.
template <typename T>
void depthwise_grad_input_stride1(const T* gy, const T* w, T* gx, const Conv2dShape& s) {
  using V = cpu::Vec<T>;
  constexpr int64_t VL = V::size();
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, K = s.out_channels,
                C = s.in_channels;
  const int64_t m = K / C, kk = s.kh * s.kw;
  const int64_t Ah = (s.kh - 1) * s.dh, Aw = (s.kw - 1) * s.dw;
  const int64_t Hp = OH + 2 * Ah, Wp = OW + 2 * Aw;
  at::parallel_for(0, s.batch * C, grain(m * H * W * kk), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(Hp * Wp, T(0));
    std::vector<V> wv(kk);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / C, c = p % C;
      T* gp = gx + p * H * W;
      for (int64_t j = 0; j < m; ++j) {
        const int64_t k = c * m + j;
        const T* gyp = gy + (n * K + k) * OH * OW;
        for (int64_t oh = 0; oh < OH; ++oh)
          std::copy(gyp + oh * OW, gyp + (oh + 1) * OW, buf.data() + (oh + Ah) * Wp + Aw);
        const T* wk = w + k * kk;
        for (int64_t t = 0; t < kk; ++t) wv[t] = V(wk[t]);
        for (int64_t ih = 0; ih < H; ++ih) {
          T* xr = gp + ih * W;
          // buf row of tap ki: ih + ph - ki * dh + Ah; column of tap kj: iw + pw - kj * dw + Aw.
          const T* base = buf.data() + (ih + s.ph + Ah) * Wp + s.pw + Aw;
          int64_t iw = 0;
          for (; iw + VL <= W; iw += VL) {
            V acc = j == 0 ? V(T(0)) : V::loadu(xr + iw);
            for (int64_t ki = 0; ki < s.kh; ++ki) {
              const T* row = base - ki * s.dh * Wp + iw;
              for (int64_t kj = 0; kj < s.kw; ++kj)
                acc = at::vec::fmadd(wv[ki * s.kw + kj], V::loadu(row - kj * s.dw), acc);
            }
            acc.store(xr + iw);
          }
          for (; iw < W; ++iw) {
            T acc = j == 0 ? T(0) : xr[iw];
            for (int64_t ki = 0; ki < s.kh; ++ki) {
              const T* row = base - ki * s.dh * Wp + iw;
              for (int64_t kj = 0; kj < s.kw; ++kj) acc += wk[ki * s.kw + kj] * row[-kj * s.dw];
            }
            xr[iw] = acc;
          }
        }
      }
    }
  });
}

template <typename T>
void depthwise_grad_input(const T* gy, const T* w, T* gx, const Conv2dShape& s) {
  // The stride-1 kernel multiplies grad_output's zero padding by the weights: with a weight
  // that is not finite (0 * inf = NaN at the borders) the loops below, over valid taps only.
  const bool finite =
      std::all_of(w, w + s.out_channels * s.kh * s.kw, [](T v) { return std::isfinite(v); });
  if (s.sh == 1 && s.sw == 1 && finite) return depthwise_grad_input_stride1(gy, w, gx, s);
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, K = s.out_channels,
                C = s.in_channels;
  const int64_t m = K / C;
  at::parallel_for(0, s.batch * C, grain(m * OH * OW * s.kh * s.kw),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t p = begin; p < end; ++p) {
                       const int64_t n = p / C, c = p % C;
                       T* gp = gx + p * H * W;
                       std::fill(gp, gp + H * W, T(0));
                       for (int64_t j = 0; j < m; ++j) {
                         const int64_t k = c * m + j;
                         const T* gyp = gy + (n * K + k) * OH * OW;
                         const T* wk = w + k * s.kh * s.kw;
                         for (int64_t kj = 0; kj < s.kw; ++kj) {
                           const auto wr = detail::conv_valid_outputs(W, OW, s.sw, s.pw, kj * s.dw);
                           const int64_t off = kj * s.dw - s.pw;
                           for (int64_t oh = 0; oh < OH; ++oh) {
                             const T* gr = gyp + oh * OW;
                             for (int64_t ki = 0; ki < s.kh; ++ki) {
                               const int64_t ih = oh * s.sh - s.ph + ki * s.dh;
                               if (ih < 0 || ih >= H) continue;
                               const T wv = wk[ki * s.kw + kj];
                               T* xr = gp + ih * W + off;
                               if (s.sw == 1) {
                                 axpy(xr + wr.begin, gr + wr.begin, wv, wr.end - wr.begin);
                               } else {
                                 for (int64_t ow = wr.begin; ow < wr.end; ++ow)
                                   xr[ow * s.sw] += wv * gr[ow];
                               }
                             }
                           }
                         }
                       }
                     }
                   });
}

template <typename T>
void depthwise_grad_weight(const T* gy, const T* x, T* gw, const Conv2dShape& s) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, K = s.out_channels,
                C = s.in_channels;
  const int64_t m = K / C, kk = s.kh * s.kw;
  at::parallel_for(0, K * kk, grain(s.batch * OH * OW), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t k = q / kk, ki = (q % kk) / s.kw, kj = q % s.kw, c = k / m;
      const auto wr = detail::conv_valid_outputs(W, OW, s.sw, s.pw, kj * s.dw);
      const int64_t off = kj * s.dw - s.pw;
      double total = 0;
      for (int64_t n = 0; n < s.batch; ++n) {
        const T* gyp = gy + (n * K + k) * OH * OW;
        const T* xp = x + (n * C + c) * H * W;
        T partial = 0;
        for (int64_t oh = 0; oh < OH; ++oh) {
          const int64_t ih = oh * s.sh - s.ph + ki * s.dh;
          if (ih < 0 || ih >= H) continue;
          const T* gr = gyp + oh * OW;
          const T* xr = xp + ih * W + off;
          if (s.sw == 1) {
            partial += dot(gr + wr.begin, xr + wr.begin, wr.end - wr.begin);
          } else {
            for (int64_t ow = wr.begin; ow < wr.end; ++ow) partial += gr[ow] * xr[ow * s.sw];
          }
        }
        total += partial;
      }
      gw[q] = static_cast<T>(total);
    }
  });
}

template void depthwise_forward<float>(const float*, const float*, const float*, float*,
                                       const Conv2dShape&);
template void depthwise_forward<double>(const double*, const double*, const double*, double*,
                                        const Conv2dShape&);
template void depthwise_grad_input<float>(const float*, const float*, float*, const Conv2dShape&);
template void depthwise_grad_input<double>(const double*, const double*, double*,
                                           const Conv2dShape&);
template void depthwise_grad_weight<float>(const float*, const float*, float*, const Conv2dShape&);
template void depthwise_grad_weight<double>(const double*, const double*, double*,
                                            const Conv2dShape&);

}  // namespace fastdl::conv_cpu::inline CPU_CAPABILITY
