// conv2d CUDA kernels. The forward of float16/bfloat16 channels-last dense convolutions runs
// on tensor cores as an implicit GEMM (implicit_gemm.cu); everything else is NCHW here
// (channels-last inputs are made contiguous and the result turned back). Dense and grouped:
// our im2col into a (C * kh * kw, chunk * OH * OW) column matrix
// (one thread per column entry, coalesced writes), one at::mm per group (cuBLAS, tensor cores
// for float16/bfloat16), the batch chunked so the columns stay within column_budget() elements.
// Backward: grad_input = W^T @ grad_output then our col2im as a gather (each input element
// sums the column entries that read it: deterministic, no atomics), grad_weight = grad_output @
// columns^T accumulated over the chunks (in float32 for half types), grad_bias = a block
// reduction per channel. Depthwise (one input channel per group, any multiplier): direct
// kernels — forward and grad_input one thread per element, grad_weight one block per weight
// tap reducing over the batch. 64-bit indices, grid-stride loops; half types accumulate in
// float.
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/conv/conv.h"
#include "fastdl/conv/conv_math.h"
#include "fastdl/conv/cuda/implicit_gemm.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>

namespace fastdl {
namespace {

using detail::Conv2dShape;

constexpr int kThreads = 256;

// Elements of the column buffer (the batch is cut in chunks that fit): 2^26 (256 MiB of
// float32), or FASTDL_CONV_COLUMN_BUDGET, which lets the tests take the chunked path at small
// sizes.
int64_t column_budget() {
  const char* v = std::getenv("FASTDL_CONV_COLUMN_BUDGET");  // read per call: tests change it
  return v && std::atoll(v) > 0 ? std::atoll(v) : int64_t(1) << 26;
}

struct Geometry {
  int64_t N, C, H, W, K, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw,
      m;  // m: outputs per input channel (depthwise)
};

Geometry geometry(const Conv2dShape& s) {
  return {s.batch,        s.in_channels, s.in_h,  s.in_w,
          s.out_channels, s.out_h,       s.out_w, s.kh,
          s.kw,           s.sh,          s.sw,    s.ph,
          s.pw,           s.dh,          s.dw,    s.out_channels / s.in_channels};
}

unsigned grid_for(int64_t n) { return cuda::grid_stride_blocks(n, kThreads); }

int64_t chunk_images(const Conv2dShape& s) {
  const int64_t per_image = s.in_channels * s.kh * s.kw * s.out_h * s.out_w;
  return std::clamp<int64_t>(column_budget() / std::max<int64_t>(per_image, 1), 1,
                             std::max<int64_t>(s.batch, 1));
}

// col[((r * nb + n) * OH + oh) * OW + ow], r = (c, ki, kj): x[n, c, ih, iw] or 0.
template <typename T>
__global__ void im2col_kernel(const T* __restrict__ x, T* __restrict__ col, Geometry g, int64_t nb,
                              int64_t total) {
  FASTDL_GRID_STRIDE(e, total) {
    int64_t t = e;
    const int64_t ow = t % g.OW;
    t /= g.OW;
    const int64_t oh = t % g.OH;
    t /= g.OH;
    const int64_t n = t % nb;
    t /= nb;
    const int64_t kj = t % g.kw;
    t /= g.kw;
    const int64_t ki = t % g.kh;
    const int64_t c = t / g.kh;
    const int64_t ih = oh * g.sh - g.ph + ki * g.dh, iw = ow * g.sw - g.pw + kj * g.dw;
    col[e] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? x[((n * g.C + c) * g.H + ih) * g.W + iw]
                                                          : T(0);
  }
}

// gx[n, c, ih, iw] = sum over taps of the column entries that read it. The columns are float32
// for half types (the GEMM's products are not rounded before this sum).
template <typename T, typename C>
__global__ void col2im_kernel(const C* __restrict__ col, T* __restrict__ gx, Geometry g, int64_t nb,
                              int64_t total) {
  using A = at::opmath_type<T>;
  FASTDL_GRID_STRIDE(e, total) {
    int64_t t = e;
    const int64_t iw = t % g.W;
    t /= g.W;
    const int64_t ih = t % g.H;
    t /= g.H;
    const int64_t c = t % g.C;
    const int64_t n = t / g.C;
    A acc = 0;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      const int64_t oh = detail::conv_source_output(ih, g.OH, g.sh, g.ph, ki * g.dh);
      if (oh < 0) continue;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const int64_t ow = detail::conv_source_output(iw, g.OW, g.sw, g.pw, kj * g.dw);
        if (ow < 0) continue;
        const int64_t r = (c * g.kh + ki) * g.kw + kj;
        acc += static_cast<A>(col[((r * nb + n) * g.OH + oh) * g.OW + ow]);
      }
    }
    gx[e] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void add_bias_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t K, int64_t L,
                                int64_t total) {
  using A = at::opmath_type<T>;
  FASTDL_GRID_STRIDE(e, total) {
    y[e] = static_cast<T>(static_cast<A>(y[e]) + static_cast<A>(bias[(e / L) % K]));
  }
}

template <typename A>
__device__ A block_sum(A v) {
  FASTDL_SHARED(A, scratch, [kThreads]);
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  return scratch[0];
}

// One block per output channel: grad_bias[k] = sum over (n, position) of gy[n, k].
template <typename T>
__global__ void bias_grad_kernel(const T* __restrict__ gy, T* __restrict__ gb, int64_t N, int64_t K,
                                 int64_t L) {
  using A = at::opmath_type<T>;
  const int64_t k = blockIdx.x;
  A acc = 0;
  for (int64_t i = threadIdx.x; i < N * L; i += blockDim.x) {
    const int64_t n = i / L, p = i % L;
    acc += static_cast<A>(gy[(n * K + k) * L + p]);
  }
  acc = block_sum<A>(acc);
  if (threadIdx.x == 0) gb[k] = static_cast<T>(acc);
}

// Depthwise forward: one thread per output element (n, k, oh, ow); input channel k / m.
template <typename T>
__global__ void depthwise_forward_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                         const T* __restrict__ bias, T* __restrict__ y, Geometry g,
                                         int64_t total) {
  using A = at::opmath_type<T>;
  FASTDL_GRID_STRIDE(e, total) {
    int64_t t = e;
    const int64_t ow = t % g.OW;
    t /= g.OW;
    const int64_t oh = t % g.OH;
    t /= g.OH;
    const int64_t k = t % g.K;
    const int64_t n = t / g.K;
    const T* xp = x + (n * g.C + k / g.m) * g.H * g.W;
    const T* wk = w + k * g.kh * g.kw;
    A acc = bias ? static_cast<A>(bias[k]) : A(0);
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      const int64_t ih = oh * g.sh - g.ph + ki * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const int64_t iw = ow * g.sw - g.pw + kj * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        acc += static_cast<A>(wk[ki * g.kw + kj]) * static_cast<A>(xp[ih * g.W + iw]);
      }
    }
    y[e] = static_cast<T>(acc);
  }
}

// Depthwise grad_input: one thread per input element, gathering its m output channels' taps.
template <typename T>
__global__ void depthwise_grad_input_kernel(const T* __restrict__ gy, const T* __restrict__ w,
                                            T* __restrict__ gx, Geometry g, int64_t total) {
  using A = at::opmath_type<T>;
  FASTDL_GRID_STRIDE(e, total) {
    int64_t t = e;
    const int64_t iw = t % g.W;
    t /= g.W;
    const int64_t ih = t % g.H;
    t /= g.H;
    const int64_t c = t % g.C;
    const int64_t n = t / g.C;
    A acc = 0;
    for (int64_t j = 0; j < g.m; ++j) {
      const int64_t k = c * g.m + j;
      const T* gyp = gy + (n * g.K + k) * g.OH * g.OW;
      const T* wk = w + k * g.kh * g.kw;
      for (int64_t ki = 0; ki < g.kh; ++ki) {
        const int64_t oh = detail::conv_source_output(ih, g.OH, g.sh, g.ph, ki * g.dh);
        if (oh < 0) continue;
        for (int64_t kj = 0; kj < g.kw; ++kj) {
          const int64_t ow = detail::conv_source_output(iw, g.OW, g.sw, g.pw, kj * g.dw);
          if (ow < 0) continue;
          acc += static_cast<A>(wk[ki * g.kw + kj]) * static_cast<A>(gyp[oh * g.OW + ow]);
        }
      }
    }
    gx[e] = static_cast<T>(acc);
  }
}

// Depthwise grad_weight: one block per weight tap (k, ki, kj), reducing over (n, oh, ow).
template <typename T>
__global__ void depthwise_grad_weight_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                             T* __restrict__ gw, Geometry g) {
  using A = at::opmath_type<T>;
  const int64_t q = blockIdx.x;
  const int64_t kk = g.kh * g.kw;
  const int64_t k = q / kk, ki = (q % kk) / g.kw, kj = q % g.kw, c = k / g.m;
  const int64_t L = g.OH * g.OW;
  A acc = 0;
  for (int64_t i = threadIdx.x; i < g.N * L; i += blockDim.x) {
    const int64_t n = i / L, p = i % L, oh = p / g.OW, ow = p % g.OW;
    const int64_t ih = oh * g.sh - g.ph + ki * g.dh, iw = ow * g.sw - g.pw + kj * g.dw;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
    acc += static_cast<A>(gy[(n * g.K + k) * L + p]) *
           static_cast<A>(x[((n * g.C + c) * g.H + ih) * g.W + iw]);
  }
  acc = block_sum<A>(acc);
  if (threadIdx.x == 0) gw[q] = static_cast<T>(acc);
}

#define FASTDL_CONV_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

void launch_im2col(const at::Tensor& x, at::Tensor& cols, const Conv2dShape& s, int64_t n0,
                   int64_t nb) {
  const int64_t total = cols.numel();
  if (total == 0) return;
  FASTDL_CONV_DISPATCH(x.scalar_type(), "fastdl.conv2d im2col", [&] {
    cuda::launch(im2col_kernel<scalar_t>, {grid_for(total), kThreads, 0},
                 x.const_data_ptr<scalar_t>() + n0 * s.in_channels * s.in_h * s.in_w,
                 cols.mutable_data_ptr<scalar_t>(), geometry(s), nb, total);
  });
}

at::Tensor conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto s =
      detail::check_conv2d_forward(input, weight, bias, stride, padding, dilation, groups);
  const cuda::DeviceGuard guard(input.device());
  // float16/bfloat16 channels-last dense: the tensor-core implicit GEMM, read in place.
  if (detail::conv2d_implicit_gemm_applies(input, s))
    return detail::conv2d_forward_implicit_gemm(input, weight, bias, s);
  const auto x = detail::conv2d_kernel_layout(input, s);
  const auto w = weight.contiguous();
  const auto b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  const int64_t N = s.batch, K = s.out_channels, G = s.groups, Kg = s.out_per_group(),
                L = s.out_h * s.out_w;
  auto y = at::empty({N, K, s.out_h, s.out_w}, x.options());
  if (s.depthwise()) {
    const int64_t total = y.numel();
    if (total > 0) {
      FASTDL_CONV_DISPATCH(x.scalar_type(), "fastdl.conv2d depthwise", [&] {
        cuda::launch(depthwise_forward_kernel<scalar_t>, {grid_for(total), kThreads, 0},
                     x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                     b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                     y.mutable_data_ptr<scalar_t>(), geometry(s), total);
      });
    }
    return detail::conv2d_result(y, s);
  }
  const int64_t rows = s.in_channels * s.kh * s.kw, rows_g = rows / G;
  const auto wg = w.view({G, Kg, rows_g});
  const auto yv = y.view({N, G, Kg, L});
  const int64_t chunk = chunk_images(s);
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nb = std::min(chunk, N - n0);
    auto cols = at::empty({rows, nb * L}, x.options());
    launch_im2col(x, cols, s, n0, nb);
    for (int64_t g = 0; g < G; ++g) {
      const auto col_g = cols.narrow(0, g * rows_g, rows_g);
      if (nb == 1) {
        auto out = yv.select(0, n0).select(0, g);
        at::mm_out(out, wg.select(0, g), col_g);
      } else {
        yv.narrow(0, n0, nb).select(1, g).copy_(
            at::mm(wg.select(0, g), col_g).view({Kg, nb, L}).transpose(0, 1));
      }
    }
  }
  if (b.defined() && y.numel() > 0) {
    const int64_t total = y.numel();
    FASTDL_CONV_DISPATCH(x.scalar_type(), "fastdl.conv2d bias", [&] {
      cuda::launch(add_bias_kernel<scalar_t>, {grid_for(total), kThreads, 0},
                   y.mutable_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), K, L, total);
    });
  }
  return detail::conv2d_result(y, s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const auto s =
      detail::check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups);
  const cuda::DeviceGuard guard(input.device());
  const auto x = detail::conv2d_kernel_layout(input, s);
  const auto gy = detail::conv2d_kernel_layout(grad_output, s);
  const auto w = weight.contiguous();
  const int64_t N = s.batch, K = s.out_channels, G = s.groups, Kg = s.out_per_group(),
                L = s.out_h * s.out_w;
  at::Tensor gx, gw, gb;
  if (output_mask[0]) gx = at::empty({N, s.in_channels, s.in_h, s.in_w}, x.options());
  if (s.depthwise()) {
    FASTDL_CONV_DISPATCH(x.scalar_type(), "fastdl.conv2d depthwise backward", [&] {
      if (output_mask[0] && gx.numel() > 0) {
        const int64_t total = gx.numel();
        cuda::launch(depthwise_grad_input_kernel<scalar_t>, {grid_for(total), kThreads, 0},
                     gy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                     gx.mutable_data_ptr<scalar_t>(), geometry(s), total);
      }
      if (output_mask[1]) {
        gw = at::empty(w.sizes(), w.options());
        cuda::launch(depthwise_grad_weight_kernel<scalar_t>,
                     {static_cast<unsigned>(w.numel()), kThreads, 0}, gy.const_data_ptr<scalar_t>(),
                     x.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), geometry(s));
      }
    });
  } else if (output_mask[0] || output_mask[1]) {
    const int64_t rows = s.in_channels * s.kh * s.kw, rows_g = rows / G;
    const auto wg = w.view({G, Kg, rows_g});
    const bool half = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
    at::Tensor gw_acc;
    if (output_mask[1])
      gw_acc = at::zeros({G, Kg, rows_g}, w.options().dtype(half ? at::kFloat : w.scalar_type()));
    const int64_t chunk = chunk_images(s);
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nb = std::min(chunk, N - n0);
      const auto gyc =
          gy.narrow(0, n0, nb).view({nb, K, L}).transpose(0, 1).contiguous().view({K, nb * L});
      auto cols = at::empty({rows, nb * L}, x.options());
      if (output_mask[1]) {
        launch_im2col(x, cols, s, n0, nb);
        for (int64_t g = 0; g < G; ++g) {
          auto acc = gw_acc.select(0, g);
          auto a = gyc.narrow(0, g * Kg, Kg);
          auto b = cols.narrow(0, g * rows_g, rows_g).t();
          // Half types: each chunk's product in float too (a half partial over ~N*L products
          // would round, or overflow, before reaching the float accumulator).
          if (half) {
            a = a.to(at::kFloat);
            b = b.to(at::kFloat);
          }
          acc.addmm_(a, b);
        }
      }
      if (output_mask[0]) {
        // W^T @ grad_output, in float32 for half types (cuBLAS writes its float sums).
        auto gcols = half ? at::empty({rows, nb * L}, x.options().dtype(at::kFloat)) : cols;
        for (int64_t g = 0; g < G; ++g) {
          auto out = gcols.narrow(0, g * rows_g, rows_g);
          if (half) {
            cuda::mm_into_float(wg.select(0, g).t(), gyc.narrow(0, g * Kg, Kg), out, false);
          } else {
            at::mm_out(out, wg.select(0, g).t(), gyc.narrow(0, g * Kg, Kg));
          }
        }
        const int64_t total = nb * s.in_channels * s.in_h * s.in_w;
        if (total > 0) {
          FASTDL_CONV_DISPATCH(x.scalar_type(), "fastdl.conv2d col2im", [&] {
            using C = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
            cuda::launch(col2im_kernel<scalar_t, C>, {grid_for(total), kThreads, 0},
                         gcols.const_data_ptr<C>(),
                         gx.mutable_data_ptr<scalar_t>() + n0 * s.in_channels * s.in_h * s.in_w,
                         geometry(s), nb, total);
          });
        }
      }
    }
    if (output_mask[1]) gw = gw_acc.to(w.scalar_type()).view(w.sizes());
  }
  if (output_mask[2]) {
    gb = at::empty({K}, x.options());
    FASTDL_CONV_DISPATCH(x.scalar_type(), "fastdl.conv2d grad_bias", [&] {
      cuda::launch(bias_grad_kernel<scalar_t>, {static_cast<unsigned>(K), kThreads, 0},
                   gy.const_data_ptr<scalar_t>(), gb.mutable_data_ptr<scalar_t>(), N, K, L);
    });
  }
  if (gx.defined()) gx = detail::conv2d_result(gx, s);
  return {gx, gw, gb};
}

}  // namespace

FASTDL_CUDA_KERNELS(m) {
  m.impl("conv2d_forward", &conv2d_forward_cuda);
  m.impl("conv2d_backward", &conv2d_backward_cuda);
}

}  // namespace fastdl
