// max_pool2d and avg_pool2d CPU kernels. NCHW: parallel over the (N * C) planes, each plane's
// windows read from cache. Channels-last: parallel over (N * output rows), each window's taps
// are contiguous runs of C values, so the inner loop runs over channels (vectorised, summed in
// registers). Backward: NCHW scatters into the task's own plane, so threads never share an
// output; channels-last gathers for each input element the windows that cover it (max: those
// whose argmax it is), vectorised over channels, parallel over input rows.
#include "fastdl/common/cpu_vec.h"
#include "fastdl/pooling/pooling.h"
#include "fastdl/pooling/pooling_math.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>
#include <vector>

namespace fastdl {
namespace {

using detail::Pool2dShape;
using cpu::Vec;

// Work items per parallel task: ~16k reads to pay for scheduling.
using cpu::grain;

// Channels-last gather: out[c] = sum_t weight[t] * src[t][c] for c in [0, C), channel vectors
// accumulated in registers (four at a time) over all taps before one store.
template <typename T>
void weighted_channel_sum(T* out, const T* const* src, const T* weight, int64_t taps, int64_t C) {
  using V = Vec<T>;
  constexpr int64_t L = V::size();
  int64_t c = 0;
  for (; c + 4 * L <= C; c += 4 * L) {
    V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    for (int64_t t = 0; t < taps; ++t) {
      const T* p = src[t] + c;
      const V w(weight[t]);
      a0 = at::vec::fmadd(w, V::loadu(p), a0);
      a1 = at::vec::fmadd(w, V::loadu(p + L), a1);
      a2 = at::vec::fmadd(w, V::loadu(p + 2 * L), a2);
      a3 = at::vec::fmadd(w, V::loadu(p + 3 * L), a3);
    }
    a0.store(out + c);
    a1.store(out + c + L);
    a2.store(out + c + 2 * L);
    a3.store(out + c + 3 * L);
  }
  for (; c + L <= C; c += L) {
    V a(T(0));
    for (int64_t t = 0; t < taps; ++t) a = at::vec::fmadd(V(weight[t]), V::loadu(src[t] + c), a);
    a.store(out + c);
  }
  for (; c < C; ++c) {
    T a = 0;
    for (int64_t t = 0; t < taps; ++t) a += weight[t] * src[t][c];
    out[c] = a;
  }
}

template <typename T>
void max_forward_nchw(const T* x, T* y, int64_t* idx, const Pool2dShape& s) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w;
  at::parallel_for(0, s.batch * s.channels, grain(OH * OW * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + p * H * W;
      T* yp = y + p * OH * OW;
      int64_t* ip = idx + p * OH * OW;
      for (int64_t oh = 0; oh < OH; ++oh) {
        const auto hr = detail::max_pool_range(oh, H, s.kh, s.sh, s.ph, s.dh);
        for (int64_t ow = 0; ow < OW; ++ow) {
          const auto wr = detail::max_pool_range(ow, W, s.kw, s.sw, s.pw, s.dw);
          T best = -std::numeric_limits<T>::infinity();
          int64_t arg = hr.begin * W + wr.begin;
          for (int64_t ih = hr.begin; ih < hr.end; ih += s.dh) {
            for (int64_t iw = wr.begin; iw < wr.end; iw += s.dw) {
              const T v = xp[ih * W + iw];
              if (detail::max_pool_takes(v, best)) {
                best = v;
                arg = ih * W + iw;
              }
            }
          }
          yp[oh * OW + ow] = best;
          ip[oh * OW + ow] = arg;
        }
      }
    }
  });
}

// Channels-last: L channels at a time in vector registers; the running argmax is kept as the
// window tap number (exact in T for any window under 2^24 taps) and turned into the flat
// index at the end. The scalar tail does the same with one channel.
template <typename T>
void max_forward_nhwc(const T* x, T* y, int64_t* idx, const Pool2dShape& s) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, C = s.channels;
  constexpr int64_t L = Vec<T>::size();
  const bool vectorise = s.kh * s.kw < (int64_t(1) << 24);
  at::parallel_for(0, s.batch * OH, grain(OW * C * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      const auto hr = detail::max_pool_range(oh, H, s.kh, s.sh, s.ph, s.dh);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const auto wr = detail::max_pool_range(ow, W, s.kw, s.sw, s.pw, s.dw);
        T* yp = y + (r * OW + ow) * C;
        int64_t* ip = idx + (r * OW + ow) * C;
        const int64_t taps_w = wr.end > wr.begin ? (wr.end - wr.begin + s.dw - 1) / s.dw : 0;
        const auto tap_index = [&](int64_t t) {
          return taps_w == 0 ? hr.begin * W + wr.begin
                             : (hr.begin + (t / taps_w) * s.dh) * W + wr.begin + (t % taps_w) * s.dw;
        };
        int64_t c = 0;
        for (; vectorise && c + L <= C; c += L) {
          Vec<T> best(-std::numeric_limits<T>::infinity()), tap(T(0));
          T t = 0;
          for (int64_t ih = hr.begin; ih < hr.end; ih += s.dh) {
            for (int64_t iw = wr.begin; iw < wr.end; iw += s.dw, t += 1) {
              const auto v = Vec<T>::loadu(x + ((n * H + ih) * W + iw) * C + c);
              const auto take = (v > best) | v.isnan();
              best = Vec<T>::blendv(best, v, take);
              tap = Vec<T>::blendv(tap, Vec<T>(t), take);
            }
          }
          best.store(yp + c);
          T taps[L];
          tap.store(taps);
          for (int64_t l = 0; l < L; ++l) ip[c + l] = tap_index(static_cast<int64_t>(taps[l]));
        }
        for (; c < C; ++c) {
          T best = -std::numeric_limits<T>::infinity();
          int64_t arg = hr.begin * W + wr.begin;
          for (int64_t ih = hr.begin; ih < hr.end; ih += s.dh) {
            for (int64_t iw = wr.begin; iw < wr.end; iw += s.dw) {
              const T v = x[((n * H + ih) * W + iw) * C + c];
              if (detail::max_pool_takes(v, best)) {
                best = v;
                arg = ih * W + iw;
              }
            }
          }
          yp[c] = best;
          ip[c] = arg;
        }
      }
    }
  });
}

// dx += dy at each saved argmax. NCHW: a scatter into the zeroed dx, one plane per task.
// Channels-last: a gather per input position (below); with dilation a scatter, one image per
// task (its channels interleave). Indices outside the plane (a window with no valid tap,
// possible only with dilation) are skipped.
template <typename T>
void max_backward(const T* dy, const int64_t* idx, T* dx, const Pool2dShape& s) {
  const int64_t HW = s.in_h * s.in_w, OHW = s.out_h * s.out_w, C = s.channels;
  if (!s.channels_last) {
    at::parallel_for(0, s.batch * C, grain(OHW), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const T* dyp = dy + p * OHW;
        const int64_t* ip = idx + p * OHW;
        T* dxp = dx + p * HW;
        for (int64_t o = 0; o < OHW; ++o) {
          const int64_t i = ip[o];
          if (i >= 0 && i < HW) dxp[i] += dyp[o];
        }
      }
    });
    return;
  }
  if (s.dh == 1 && s.dw == 1) {
    // Channels-last without dilation (every window has a tap): each input position gathers
    // dy of the windows covering it whose saved argmax is this position, over channel
    // vectors (a compare and a select the compiler vectorises); rows are independent tasks.
    const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w;
    at::parallel_for(0, s.batch * H, grain(W * C * s.kh * s.kw), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / H, ih = r % H;
        const auto hr = detail::covering_outputs(ih, OH, s.kh, s.sh, s.ph, 1);
        for (int64_t iw = 0; iw < W; ++iw) {
          const auto wr = detail::covering_outputs(iw, OW, s.kw, s.sw, s.pw, 1);
          const int64_t flat = ih * W + iw;
          T* __restrict__ dxp = dx + (r * W + iw) * C;
          std::fill(dxp, dxp + C, T(0));
          for (int64_t oh = hr.first; oh < hr.last; ++oh) {
            for (int64_t ow = wr.first; ow < wr.last; ++ow) {
              const int64_t o = (n * OH + oh) * OW + ow;
              const T* __restrict__ dyp = dy + o * C;
              const int64_t* __restrict__ ip = idx + o * C;
              for (int64_t c = 0; c < C; ++c) dxp[c] += ip[c] == flat ? dyp[c] : T(0);
            }
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, s.batch, grain(OHW * C), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* dyp = dy + n * OHW * C;
      const int64_t* ip = idx + n * OHW * C;
      T* dxp = dx + n * HW * C;
      for (int64_t o = 0; o < OHW; ++o) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = ip[o * C + c];
          if (i >= 0 && i < HW) dxp[i * C + c] += dyp[o * C + c];
        }
      }
    }
  });
}

struct AvgOptions {
  bool count_include_pad;
  int64_t divisor_override;  // 0: none
};

template <typename T>
detail::AvgWindow avg_window(const Pool2dShape& s, const AvgOptions& o, int64_t oh, int64_t ow) {
  return detail::avg_pool_window(oh, ow, s.in_h, s.in_w, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw,
                                 o.count_include_pad, o.divisor_override);
}

template <typename T>
void avg_forward_nchw(const T* x, T* y, const Pool2dShape& s, const AvgOptions& opt) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w;
  at::parallel_for(0, s.batch * s.channels, grain(OH * OW * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + p * H * W;
      T* yp = y + p * OH * OW;
      for (int64_t oh = 0; oh < OH; ++oh) {
        for (int64_t ow = 0; ow < OW; ++ow) {
          const auto win = avg_window<T>(s, opt, oh, ow);
          T sum = 0;
          for (int64_t ih = win.h0; ih < win.h1; ++ih) {
            for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += xp[ih * W + iw];
          }
          yp[oh * OW + ow] = win.divisor == 0 ? T(0) : sum / T(win.divisor);
        }
      }
    }
  });
}

// Channels-last: each output position is the weighted sum (weight 1 / divisor) of its window's
// taps, gathered over channel vectors in registers.
template <typename T>
void avg_forward_nhwc(const T* x, T* y, const Pool2dShape& s, const AvgOptions& opt) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, C = s.channels;
  at::parallel_for(0, s.batch * OH, grain(OW * C * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    std::vector<const T*> taps(s.kh * s.kw);
    std::vector<T> weights(s.kh * s.kw);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      for (int64_t ow = 0; ow < OW; ++ow) {
        const auto win = avg_window<T>(s, opt, oh, ow);
        int64_t t = 0;
        if (win.divisor != 0) {
          const T inv = T(1) / T(win.divisor);
          for (int64_t ih = win.h0; ih < win.h1; ++ih) {
            for (int64_t iw = win.w0; iw < win.w1; ++iw, ++t) {
              taps[t] = x + ((n * H + ih) * W + iw) * C;
              weights[t] = inv;
            }
          }
        }
        weighted_channel_sum(y + (r * OW + ow) * C, taps.data(), weights.data(), t, C);
      }
    }
  });
}

// dx = for each window, dy / divisor on each of its taps.
template <typename T>
void avg_backward(const T* dy, T* dx, const Pool2dShape& s, const AvgOptions& opt) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, C = s.channels;
  const auto covering = [&](int64_t ih, int64_t iw) {
    return std::make_pair(detail::covering_outputs(ih, OH, s.kh, s.sh, s.ph, 1),
                          detail::covering_outputs(iw, OW, s.kw, s.sw, s.pw, 1));
  };
  if (!s.channels_last) {
    // NCHW: a plane per task, each window adds dy / divisor to its taps (no race: the plane
    // is the task's own), cheaper than recomputing every covering window per input element.
    at::parallel_for(0, s.batch * C, grain(OH * OW * s.kh * s.kw), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const T* dyp = dy + p * OH * OW;
        T* dxp = dx + p * H * W;
        std::fill(dxp, dxp + H * W, T(0));
        for (int64_t oh = 0; oh < OH; ++oh) {
          for (int64_t ow = 0; ow < OW; ++ow) {
            const auto win = avg_window<T>(s, opt, oh, ow);
            if (win.divisor == 0) continue;
            const T g = dyp[oh * OW + ow] / T(win.divisor);
            for (int64_t ih = win.h0; ih < win.h1; ++ih) {
              for (int64_t iw = win.w0; iw < win.w1; ++iw) dxp[ih * W + iw] += g;
            }
          }
        }
      }
    });
    return;
  }
  // Channels-last: each input position gathers dy / divisor of the windows covering it.
  at::parallel_for(0, s.batch * H, grain(W * C * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    std::vector<const T*> taps(s.kh * s.kw);
    std::vector<T> weights(s.kh * s.kw);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, ih = r % H;
      for (int64_t iw = 0; iw < W; ++iw) {
        const auto [hr, wr] = covering(ih, iw);
        int64_t t = 0;
        for (int64_t oh = hr.first; oh < hr.last; ++oh) {
          for (int64_t ow = wr.first; ow < wr.last; ++ow) {
            const auto win = avg_window<T>(s, opt, oh, ow);
            if (win.divisor == 0) continue;
            taps[t] = dy + ((n * OH + oh) * OW + ow) * C;
            weights[t++] = T(1) / T(win.divisor);
          }
        }
        weighted_channel_sum(dx + (r * W + iw) * C, taps.data(), weights.data(), t, C);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                                          at::IntArrayRef dilation, bool ceil_mode) {
  const auto s = detail::check_max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode);
  const auto x = detail::pool2d_kernel_layout(input, s);
  auto output = detail::pool2d_empty(s, s.out_h, s.out_w, x.options());
  auto indices = detail::pool2d_empty(s, s.out_h, s.out_w, x.options().dtype(at::kLong));
  if (output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool2d_forward_cpu", [&] {
      auto fn = s.channels_last ? max_forward_nhwc<scalar_t> : max_forward_nchw<scalar_t>;
      fn(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(), s);
    });
  }
  return {detail::pool2d_result(output, s), detail::pool2d_result(indices, s)};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, bool ceil_mode) {
  const auto s = detail::check_max_pool2d_backward(grad_output, input, indices, kernel_size, stride, padding,
                                                   dilation, ceil_mode);
  const auto dy = detail::pool2d_kernel_layout(grad_output, s);
  const auto idx = detail::pool2d_kernel_layout(indices, s);
  // The scatter adds into zeros; the channels-last gather writes every element itself.
  auto grad_input = detail::pool2d_empty(s, s.in_h, s.in_w, input.options());
  if (!(s.channels_last && s.dh == 1 && s.dw == 1) || dy.numel() == 0) grad_input.zero_();
  if (dy.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d_backward_cpu", [&] {
      max_backward<scalar_t>(dy.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                             grad_input.mutable_data_ptr<scalar_t>(), s);
    });
  }
  return detail::pool2d_result(grad_input, s);
}

at::Tensor avg_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                  std::optional<int64_t> divisor_override) {
  const auto s = detail::check_avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode,
                                                  count_include_pad, divisor_override);
  const auto x = detail::pool2d_kernel_layout(input, s);
  auto output = detail::pool2d_empty(s, s.out_h, s.out_w, x.options());
  const AvgOptions opt{count_include_pad, divisor_override.value_or(0)};
  if (output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "avg_pool2d_forward_cpu", [&] {
      auto fn = s.channels_last ? avg_forward_nhwc<scalar_t> : avg_forward_nchw<scalar_t>;
      fn(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), s, opt);
    });
  }
  return detail::pool2d_result(output, s);
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const auto s = detail::check_avg_pool2d_backward(grad_output, input, kernel_size, stride, padding, ceil_mode,
                                                   count_include_pad, divisor_override);
  const auto dy = detail::pool2d_kernel_layout(grad_output, s);
  auto grad_input = detail::pool2d_empty(s, s.in_h, s.in_w, input.options());
  const AvgOptions opt{count_include_pad, divisor_override.value_or(0)};
  if (grad_input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "avg_pool2d_backward_cpu", [&] {
      avg_backward<scalar_t>(dy.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), s, opt);
    });
  }
  return detail::pool2d_result(grad_input, s);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
}

}  // namespace fastdl
