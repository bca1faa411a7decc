// max_pool2d and avg_pool2d CPU kernels. NCHW: parallel over the (N * C) planes, each plane's
// windows read from cache. Channels-last: parallel over (N * output rows), each window's taps
// are contiguous runs of C values, so the inner loop runs over channels (vectorised, summed in
// registers). Backward: max scatters into the task's own plane (channels-last: own image), so
// threads never share an output; avg scatters likewise for NCHW and, for channels-last,
// gathers for each input element the windows that cover it (vectorised over channels).
// float16/bfloat16 data (S) is computed in float (T = at::opmath_type<S>, common/cpu/half.h):
// vectors are converted as they are loaded and stored, NCHW planes that are read several times
// (overlapping windows) are converted once into a per-task buffer, and gradients are
// accumulated in a float buffer and converted once. For float/double (S = T) the code is the
// same as without half support: the buffers are not used.
#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/pooling/pooling.h"
#include "fastdl/pooling/pooling_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using cpu::load_as;
using cpu::row_in;
using cpu::row_out;
using cpu::row_target;
using cpu::RowBuffers;
using cpu::store_as;
using cpu::Vec;
using detail::Pool2dShape;

// Work items per parallel task: ~16k reads to pay for scheduling.
using cpu::grain;

// The covering output range of every input position along one dim (no dilation), computed
// once per call rather than (with its divisions) once per input element.
std::vector<detail::OutRange> covering_table(int64_t in, int64_t out, int64_t k, int64_t stride,
                                             int64_t pad) {
  std::vector<detail::OutRange> table(in);
  for (int64_t i = 0; i < in; ++i) table[i] = detail::covering_outputs(i, out, k, stride, pad, 1);
  return table;
}

// Channels-last gather: out[c] = sum over taps of weight * src[c] for c in [0, C), channel
// vectors accumulated in registers (four at a time, in T) before one store. for_each_tap(f)
// calls f(src, weight) for every tap; it is inlined, so no tap list is built.
template <typename T, typename S, typename ForEachTap>
inline void weighted_channel_sum(S* out, int64_t C, const ForEachTap& for_each_tap) {
  using V = Vec<T>;
  constexpr int64_t L = V::size();
  int64_t c = 0;
  for (; c + 4 * L <= C; c += 4 * L) {
    V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    for_each_tap([&](const S* src, T weight) {
      const S* p = src + c;
      const V w(weight);
      a0 = at::vec::fmadd(w, load_as<T>(p), a0);
      a1 = at::vec::fmadd(w, load_as<T>(p + L), a1);
      a2 = at::vec::fmadd(w, load_as<T>(p + 2 * L), a2);
      a3 = at::vec::fmadd(w, load_as<T>(p + 3 * L), a3);
    });
    store_as<T>(a0, out + c);
    store_as<T>(a1, out + c + L);
    store_as<T>(a2, out + c + 2 * L);
    store_as<T>(a3, out + c + 3 * L);
  }
  for (; c + L <= C; c += L) {
    V a(T(0));
    for_each_tap(
        [&](const S* src, T weight) { a = at::vec::fmadd(V(weight), load_as<T>(src + c), a); });
    store_as<T>(a, out + c);
  }
  for (; c < C; ++c) {
    T a = 0;
    for_each_tap([&](const S* src, T weight) { a += weight * static_cast<T>(src[c]); });
    out[c] = static_cast<S>(a);
  }
}

// A half plane is converted once into the task's buffer: windows overlap, and the loop then
// reads float.
template <typename S, typename T = at::opmath_type<S>>
void max_forward_nchw(const S* x, S* y, int64_t* idx, const Pool2dShape& s) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w;
  at::parallel_for(0, s.batch * s.channels, grain(OH * OW * s.kh * s.kw),
                   [&](int64_t begin, int64_t end) {
                     RowBuffers<T, S> in_buffer(1, H * W), out_buffer(1, OH * OW);
                     for (int64_t p = begin; p < end; ++p) {
                       const T* xp = row_in(x, p, H * W, in_buffer.row(0));
                       T* yp = row_target(y, p, OH * OW, out_buffer.row(0));
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
                       row_out(yp, y, p, OH * OW);
                     }
                   });
}

// Channels-last: L channels at a time in vector registers; the running argmax is kept as the
// flat input index in T (exact while H * W < 2^24) and converted once per window. The scalar
// tail (and planes too large for that) does the same with one channel.
template <typename S, typename T = at::opmath_type<S>>
void max_forward_nhwc(const S* x, S* y, int64_t* idx, const Pool2dShape& s) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, C = s.channels;
  constexpr int64_t L = Vec<T>::size();
  const bool vectorise = H * W < (int64_t(1) << 24);
  at::parallel_for(0, s.batch * OH, grain(OW * C * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      const auto hr = detail::max_pool_range(oh, H, s.kh, s.sh, s.ph, s.dh);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const auto wr = detail::max_pool_range(ow, W, s.kw, s.sw, s.pw, s.dw);
        S* yp = y + (r * OW + ow) * C;
        int64_t* ip = idx + (r * OW + ow) * C;
        // NV channel vectors at a time: independent max/argmax chains hide the compare latency.
        const auto vector_block = [&](int64_t c, auto nv) {
          constexpr int NV = decltype(nv)::value;
          Vec<T> best[NV], arg[NV];
          for (int v = 0; v < NV; ++v) {
            best[v] = Vec<T>(-std::numeric_limits<T>::infinity());
            arg[v] = Vec<T>(T(hr.begin * W + wr.begin));
          }
          for (int64_t ih = hr.begin; ih < hr.end; ih += s.dh) {
            for (int64_t iw = wr.begin; iw < wr.end; iw += s.dw) {
              const S* xp = x + ((n * H + ih) * W + iw) * C + c;
              const Vec<T> here(T(ih * W + iw));
              for (int v = 0; v < NV; ++v) {
                const auto val = load_as<T>(xp + v * L);
                const auto take = (val > best[v]) | val.isnan();
                best[v] = Vec<T>::blendv(best[v], val, take);
                arg[v] = Vec<T>::blendv(arg[v], here, take);
              }
            }
          }
          T args[NV * L];
          for (int v = 0; v < NV; ++v) {
            store_as<T>(best[v], yp + c + v * L);
            arg[v].store(args + v * L);
          }
          for (int64_t l = 0; l < NV * L; ++l) ip[c + l] = static_cast<int64_t>(args[l]);
        };
        int64_t c = 0;
        for (; vectorise && c + 4 * L <= C; c += 4 * L)
          vector_block(c, std::integral_constant<int, 4>{});
        for (; vectorise && c + L <= C; c += L) vector_block(c, std::integral_constant<int, 1>{});
        for (; c < C; ++c) {
          T best = -std::numeric_limits<T>::infinity();
          int64_t arg = hr.begin * W + wr.begin;
          for (int64_t ih = hr.begin; ih < hr.end; ih += s.dh) {
            for (int64_t iw = wr.begin; iw < wr.end; iw += s.dw) {
              const T v = static_cast<T>(x[((n * H + ih) * W + iw) * C + c]);
              if (detail::max_pool_takes(v, best)) {
                best = v;
                arg = ih * W + iw;
              }
            }
          }
          yp[c] = static_cast<S>(best);
          ip[c] = arg;
        }
      }
    }
  });
}

// dx = dy scattered to each saved argmax. NCHW: one plane per task; channels-last: one image
// per task (its channels interleave); each task zeroes its own part first, so it is cached
// for the scatter (half: its float buffer, converted once at the end, so overlapping windows
// add in float). Indices outside the plane (a window with no valid tap, possible only with
// dilation) are skipped.
template <typename S, typename T = at::opmath_type<S>>
void max_backward(const S* dy, const int64_t* idx, S* dx, const Pool2dShape& s) {
  const int64_t HW = s.in_h * s.in_w, OHW = s.out_h * s.out_w, C = s.channels;
  if (!s.channels_last) {
    at::parallel_for(0, s.batch * C, grain(OHW), [&](int64_t begin, int64_t end) {
      RowBuffers<T, S> buffer(1, HW);
      for (int64_t p = begin; p < end; ++p) {
        const S* dyp = dy + p * OHW;
        const int64_t* ip = idx + p * OHW;
        T* dxp = row_target(dx, p, HW, buffer.row(0));
        std::fill(dxp, dxp + HW, T(0));
        for (int64_t o = 0; o < OHW; ++o) {
          const int64_t i = ip[o];
          if (i >= 0 && i < HW) dxp[i] += static_cast<T>(dyp[o]);
        }
        row_out(dxp, dx, p, HW);
      }
    });
    return;
  }
  at::parallel_for(0, s.batch, grain(OHW * C), [&](int64_t begin, int64_t end) {
    RowBuffers<T, S> buffer(1, HW * C);
    for (int64_t n = begin; n < end; ++n) {
      const S* dyp = dy + n * OHW * C;
      const int64_t* ip = idx + n * OHW * C;
      T* dxp = row_target(dx, n, HW * C, buffer.row(0));
      std::fill(dxp, dxp + HW * C, T(0));
      for (int64_t o = 0; o < OHW; ++o) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = ip[o * C + c];
          if (i >= 0 && i < HW) dxp[i * C + c] += static_cast<T>(dyp[o * C + c]);
        }
      }
      row_out(dxp, dx, n, HW * C);
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

// Sums in T; a half plane is converted once into the task's buffer (windows overlap).
template <typename S, typename T = at::opmath_type<S>>
void avg_forward_nchw(const S* x, S* y, const Pool2dShape& s, const AvgOptions& opt) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w;
  at::parallel_for(
      0, s.batch * s.channels, grain(OH * OW * s.kh * s.kw), [&](int64_t begin, int64_t end) {
        RowBuffers<T, S> in_buffer(1, H * W);
        for (int64_t p = begin; p < end; ++p) {
          const T* xp = row_in(x, p, H * W, in_buffer.row(0));
          S* yp = y + p * OH * OW;
          for (int64_t oh = 0; oh < OH; ++oh) {
            for (int64_t ow = 0; ow < OW; ++ow) {
              const auto win = avg_window<T>(s, opt, oh, ow);
              T sum = 0;
              for (int64_t ih = win.h0; ih < win.h1; ++ih) {
                for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += xp[ih * W + iw];
              }
              yp[oh * OW + ow] = static_cast<S>(win.divisor == 0 ? T(0) : sum / T(win.divisor));
            }
          }
        }
      });
}

// Channels-last: each output position is the weighted sum (weight 1 / divisor) of its window's
// taps, gathered over channel vectors in registers.
template <typename S, typename T = at::opmath_type<S>>
void avg_forward_nhwc(const S* x, S* y, const Pool2dShape& s, const AvgOptions& opt) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, C = s.channels;
  at::parallel_for(0, s.batch * OH, grain(OW * C * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      for (int64_t ow = 0; ow < OW; ++ow) {
        const auto win = avg_window<T>(s, opt, oh, ow);
        const T inv = win.divisor == 0 ? T(0) : T(1) / T(win.divisor);
        weighted_channel_sum<T>(y + (r * OW + ow) * C, C, [&](const auto& add) {
          if (win.divisor == 0) return;
          for (int64_t ih = win.h0; ih < win.h1; ++ih) {
            for (int64_t iw = win.w0; iw < win.w1; ++iw) add(x + ((n * H + ih) * W + iw) * C, inv);
          }
        });
      }
    }
  });
}

// dx = for each window, dy / divisor on each of its taps, summed in T.
template <typename S, typename T = at::opmath_type<S>>
void avg_backward(const S* dy, S* dx, const Pool2dShape& s, const AvgOptions& opt) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, C = s.channels;
  // Every window's clipped bounds and 1 / divisor, computed once per call.
  std::vector<detail::AvgWindow> windows(OH * OW);
  std::vector<T> inv(OH * OW);
  for (int64_t oh = 0; oh < OH; ++oh) {
    for (int64_t ow = 0; ow < OW; ++ow) {
      const auto win = avg_window<T>(s, opt, oh, ow);
      windows[oh * OW + ow] = win;
      inv[oh * OW + ow] = win.divisor == 0 ? T(0) : T(1) / T(win.divisor);
    }
  }
  if (!s.channels_last) {
    // NCHW: a plane per task, each window adds dy / divisor to its taps (no race: the plane
    // is the task's own), cheaper than recomputing every covering window per input element.
    // A half plane is summed in the task's float buffer and converted once.
    at::parallel_for(0, s.batch * C, grain(OH * OW * s.kh * s.kw), [&](int64_t begin, int64_t end) {
      RowBuffers<T, S> buffer(1, H * W);
      for (int64_t p = begin; p < end; ++p) {
        const S* dyp = dy + p * OH * OW;
        T* dxp = row_target(dx, p, H * W, buffer.row(0));
        std::fill(dxp, dxp + H * W, T(0));
        for (int64_t o = 0; o < OH * OW; ++o) {
          const auto& win = windows[o];
          const T g = static_cast<T>(dyp[o]) * inv[o];
          for (int64_t ih = win.h0; ih < win.h1; ++ih) {
            for (int64_t iw = win.w0; iw < win.w1; ++iw) dxp[ih * W + iw] += g;
          }
        }
        row_out(dxp, dx, p, H * W);
      }
    });
    return;
  }
  // Channels-last: each input position gathers dy / divisor of the windows covering it.
  const auto cols = covering_table(W, OW, s.kw, s.sw, s.pw);
  at::parallel_for(0, s.batch * H, grain(W * C * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, ih = r % H;
      const auto hr = detail::covering_outputs(ih, OH, s.kh, s.sh, s.ph, 1);
      for (int64_t iw = 0; iw < W; ++iw) {
        const auto wr = cols[iw];
        weighted_channel_sum<T>(dx + (r * W + iw) * C, C, [&](const auto& add) {
          for (int64_t oh = hr.first; oh < hr.last; ++oh) {
            for (int64_t ow = wr.first; ow < wr.last; ++ow)
              add(dy + ((n * OH + oh) * OW + ow) * C, inv[oh * OW + ow]);
          }
        });
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cpu(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const auto s =
      detail::check_max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode);
  const auto x = detail::pool2d_kernel_layout(input, s);
  auto output = detail::pool2d_empty(s, s.out_h, s.out_w, x.options());
  auto indices = detail::pool2d_empty(s, s.out_h, s.out_w, x.options().dtype(at::kLong));
  if (output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_forward_cpu", [&] {
          auto fn = s.channels_last ? max_forward_nhwc<scalar_t> : max_forward_nchw<scalar_t>;
          fn(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
             indices.mutable_data_ptr<int64_t>(), s);
        });
  }
  return {detail::pool2d_result(output, s), detail::pool2d_result(indices, s)};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& indices, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, bool ceil_mode) {
  const auto s = detail::check_max_pool2d_backward(grad_output, input, indices, kernel_size, stride,
                                                   padding, dilation, ceil_mode);
  const auto dy = detail::pool2d_kernel_layout(grad_output, s);
  const auto idx = detail::pool2d_kernel_layout(indices, s);
  // The kernel zeroes each part of grad_input before scattering into it.
  auto grad_input = detail::pool2d_empty(s, s.in_h, s.in_w, input.options());
  if (dy.numel() == 0) grad_input.zero_();
  if (dy.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_backward_cpu", [&] {
          max_backward<scalar_t>(dy.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                                 grad_input.mutable_data_ptr<scalar_t>(), s);
        });
  }
  return detail::pool2d_result(grad_input, s);
}

at::Tensor avg_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                                  bool count_include_pad, std::optional<int64_t> divisor_override) {
  const auto s = detail::check_avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode,
                                                  count_include_pad, divisor_override);
  const auto x = detail::pool2d_kernel_layout(input, s);
  auto output = detail::pool2d_empty(s, s.out_h, s.out_w, x.options());
  const AvgOptions opt{count_include_pad, divisor_override.value_or(0)};
  if (output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "avg_pool2d_forward_cpu", [&] {
          auto fn = s.channels_last ? avg_forward_nhwc<scalar_t> : avg_forward_nchw<scalar_t>;
          fn(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), s, opt);
        });
  }
  return detail::pool2d_result(output, s);
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override) {
  const auto s = detail::check_avg_pool2d_backward(grad_output, input, kernel_size, stride, padding,
                                                   ceil_mode, count_include_pad, divisor_override);
  const auto dy = detail::pool2d_kernel_layout(grad_output, s);
  auto grad_input = detail::pool2d_empty(s, s.in_h, s.in_w, input.options());
  const AvgOptions opt{count_include_pad, divisor_override.value_or(0)};
  if (grad_input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "avg_pool2d_backward_cpu", [&] {
          avg_backward<scalar_t>(dy.const_data_ptr<scalar_t>(),
                                 grad_input.mutable_data_ptr<scalar_t>(), s, opt);
        });
  }
  return detail::pool2d_result(grad_input, s);
}

}  // namespace

FASTDL_CPU_KERNELS(pooling, m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
}

}  // namespace fastdl::CPU_CAPABILITY
