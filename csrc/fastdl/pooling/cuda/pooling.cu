// max_pool2d and avg_pool2d CUDA kernels: one thread per output (forward) or input (backward)
// element, 64-bit indices, grid-stride loops; NCHW and channels-last (consecutive threads take
// consecutive channels, so reads are coalesced). Both backwards are gathers — each input
// element sums the windows that cover it (max: those whose saved argmax is this element) —
// so they are deterministic and need no atomics. Half types accumulate in float.
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/pooling/pooling.h"
#include "fastdl/pooling/pooling_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

namespace fastdl {
namespace {

using detail::Pool2dShape;

constexpr int kThreads = 256;

// Geometry passed by value to the kernels.
struct Geometry {
  int64_t N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw;
};

Geometry geometry(const Pool2dShape& s) {
  return {s.batch, s.channels, s.in_h, s.in_w, s.out_h, s.out_w, s.kh,
          s.kw,    s.sh,       s.sw,   s.ph,   s.pw,    s.dh,    s.dw};
}

unsigned grid_for(int64_t n) { return cuda::grid_stride_blocks(n, kThreads); }

// (n, c, y, x) of flat element e of an (N, C, Y, X) tensor in NCHW or channels-last order,
// and the offset of its plane (n, c) and its channel stride, so [plane + (y * X + x) * cs].
struct Position {
  int64_t n, c, y, x, plane, cs;
};
template <bool CL>
__device__ __forceinline__ Position position(int64_t e, int64_t C, int64_t Y, int64_t X,
                                             int64_t inY, int64_t inX) {
  Position p;
  if (CL) {
    p.c = e % C;
    e /= C;
    p.x = e % X;
    e /= X;
    p.y = e % Y;
    p.n = e / Y;
    p.plane = p.n * inY * inX * C + p.c;  // offset of (n, c, 0, 0) in a (N, inY, inX, C) tensor
    p.cs = C;
  } else {
    p.x = e % X;
    e /= X;
    p.y = e % Y;
    e /= Y;
    p.c = e % C;
    p.n = e / C;
    p.plane = (p.n * C + p.c) * inY * inX;
    p.cs = 1;
  }
  return p;
}

template <typename T, bool CL>
__global__ void max_forward_kernel(const T* __restrict__ x, T* __restrict__ y,
                                   int64_t* __restrict__ idx, Geometry g, int64_t total) {
  using A = at::opmath_type<T>;
  FASTDL_GRID_STRIDE(e, total) {
    const auto p = position<CL>(e, g.C, g.OH, g.OW, g.H, g.W);
    const auto hr = detail::max_pool_range(p.y, g.H, g.kh, g.sh, g.ph, g.dh);
    const auto wr = detail::max_pool_range(p.x, g.W, g.kw, g.sw, g.pw, g.dw);
    A best = -std::numeric_limits<A>::infinity();
    int64_t arg = hr.begin * g.W + wr.begin;
    for (int64_t ih = hr.begin; ih < hr.end; ih += g.dh) {
      for (int64_t iw = wr.begin; iw < wr.end; iw += g.dw) {
        const A v = static_cast<A>(x[p.plane + (ih * g.W + iw) * p.cs]);
        if (detail::max_pool_takes(v, best)) {
          best = v;
          arg = ih * g.W + iw;
        }
      }
    }
    y[e] = static_cast<T>(best);
    idx[e] = arg;
  }
}

template <typename T, bool CL>
__global__ void max_backward_kernel(const T* __restrict__ dy, const int64_t* __restrict__ idx,
                                    T* __restrict__ dx, Geometry g, int64_t total) {
  using A = at::opmath_type<T>;
  FASTDL_GRID_STRIDE(e, total) {
    const auto p = position<CL>(e, g.C, g.H, g.W, g.OH, g.OW);
    const auto hr = detail::covering_outputs(p.y, g.OH, g.kh, g.sh, g.ph, g.dh);
    const auto wr = detail::covering_outputs(p.x, g.OW, g.kw, g.sw, g.pw, g.dw);
    const int64_t here = p.y * g.W + p.x;
    A sum = 0;
    for (int64_t oh = hr.first; oh < hr.last; ++oh) {
      for (int64_t ow = wr.first; ow < wr.last; ++ow) {
        const int64_t o = p.plane + (oh * g.OW + ow) * p.cs;
        if (idx[o] == here) sum += static_cast<A>(dy[o]);
      }
    }
    dx[e] = static_cast<T>(sum);
  }
}

template <typename T, bool CL>
__global__ void avg_forward_kernel(const T* __restrict__ x, T* __restrict__ y, Geometry g,
                                   bool count_include_pad, int64_t divisor_override,
                                   int64_t total) {
  using A = at::opmath_type<T>;
  FASTDL_GRID_STRIDE(e, total) {
    const auto p = position<CL>(e, g.C, g.OH, g.OW, g.H, g.W);
    const auto win = detail::avg_pool_window(p.y, p.x, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
                                             count_include_pad, divisor_override);
    A sum = 0;
    for (int64_t ih = win.h0; ih < win.h1; ++ih) {
      for (int64_t iw = win.w0; iw < win.w1; ++iw)
        sum += static_cast<A>(x[p.plane + (ih * g.W + iw) * p.cs]);
    }
    y[e] = static_cast<T>(win.divisor == 0 ? A(0) : sum / static_cast<A>(win.divisor));
  }
}

template <typename T, bool CL>
__global__ void avg_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, Geometry g,
                                    bool count_include_pad, int64_t divisor_override,
                                    int64_t total) {
  using A = at::opmath_type<T>;
  FASTDL_GRID_STRIDE(e, total) {
    const auto p = position<CL>(e, g.C, g.H, g.W, g.OH, g.OW);
    const auto hr = detail::covering_outputs(p.y, g.OH, g.kh, g.sh, g.ph, 1);
    const auto wr = detail::covering_outputs(p.x, g.OW, g.kw, g.sw, g.pw, 1);
    A sum = 0;
    for (int64_t oh = hr.first; oh < hr.last; ++oh) {
      for (int64_t ow = wr.first; ow < wr.last; ++ow) {
        const auto win = detail::avg_pool_window(oh, ow, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph,
                                                 g.pw, count_include_pad, divisor_override);
        if (win.divisor != 0)
          sum +=
              static_cast<A>(dy[p.plane + (oh * g.OW + ow) * p.cs]) / static_cast<A>(win.divisor);
      }
    }
    dx[e] = static_cast<T>(sum);
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cuda(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const auto s =
      detail::check_max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode);
  const cuda::DeviceGuard guard(input.device());
  const auto x = detail::pool2d_kernel_layout(input, s);
  auto output = detail::pool2d_empty(s, s.out_h, s.out_w, x.options());
  auto indices = detail::pool2d_empty(s, s.out_h, s.out_w, x.options().dtype(at::kLong));
  const int64_t total = output.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_forward_cuda", [&] {
          auto kernel = s.channels_last ? max_forward_kernel<scalar_t, true>
                                        : max_forward_kernel<scalar_t, false>;
          cuda::launch(kernel, {grid_for(total), kThreads, 0}, x.const_data_ptr<scalar_t>(),
                       output.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(),
                       geometry(s), total);
        });
  }
  return {detail::pool2d_result(output, s), detail::pool2d_result(indices, s)};
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& indices, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, bool ceil_mode) {
  const auto s = detail::check_max_pool2d_backward(grad_output, input, indices, kernel_size, stride,
                                                   padding, dilation, ceil_mode);
  const cuda::DeviceGuard guard(input.device());
  const auto dy = detail::pool2d_kernel_layout(grad_output, s);
  const auto idx = detail::pool2d_kernel_layout(indices, s);
  auto grad_input = detail::pool2d_empty(s, s.in_h, s.in_w, input.options());
  const int64_t total = grad_input.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_backward_cuda", [&] {
          auto kernel = s.channels_last ? max_backward_kernel<scalar_t, true>
                                        : max_backward_kernel<scalar_t, false>;
          cuda::launch(kernel, {grid_for(total), kThreads, 0}, dy.const_data_ptr<scalar_t>(),
                       idx.const_data_ptr<int64_t>(), grad_input.mutable_data_ptr<scalar_t>(),
                       geometry(s), total);
        });
  }
  return detail::pool2d_result(grad_input, s);
}

at::Tensor avg_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                                   bool count_include_pad,
                                   std::optional<int64_t> divisor_override) {
  const auto s = detail::check_avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode,
                                                  count_include_pad, divisor_override);
  const cuda::DeviceGuard guard(input.device());
  const auto x = detail::pool2d_kernel_layout(input, s);
  auto output = detail::pool2d_empty(s, s.out_h, s.out_w, x.options());
  const int64_t total = output.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "avg_pool2d_forward_cuda", [&] {
          auto kernel = s.channels_last ? avg_forward_kernel<scalar_t, true>
                                        : avg_forward_kernel<scalar_t, false>;
          cuda::launch(kernel, {grid_for(total), kThreads, 0}, x.const_data_ptr<scalar_t>(),
                       output.mutable_data_ptr<scalar_t>(), geometry(s), count_include_pad,
                       divisor_override.value_or(0), total);
        });
  }
  return detail::pool2d_result(output, s);
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                    std::optional<int64_t> divisor_override) {
  const auto s = detail::check_avg_pool2d_backward(grad_output, input, kernel_size, stride, padding,
                                                   ceil_mode, count_include_pad, divisor_override);
  const cuda::DeviceGuard guard(input.device());
  const auto dy = detail::pool2d_kernel_layout(grad_output, s);
  auto grad_input = detail::pool2d_empty(s, s.in_h, s.in_w, input.options());
  const int64_t total = grad_input.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "avg_pool2d_backward_cuda", [&] {
          auto kernel = s.channels_last ? avg_backward_kernel<scalar_t, true>
                                        : avg_backward_kernel<scalar_t, false>;
          cuda::launch(kernel, {grid_for(total), kThreads, 0}, dy.const_data_ptr<scalar_t>(),
                       grad_input.mutable_data_ptr<scalar_t>(), geometry(s), count_include_pad,
                       divisor_override.value_or(0), total);
        });
  }
  return detail::pool2d_result(grad_input, s);
}

}  // namespace

FASTDL_CUDA_KERNELS(m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_cuda);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cuda);
}

}  // namespace fastdl
