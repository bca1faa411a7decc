// histogram CUDA kernels.
//  forward:      a block per (bag, tile of features); threads map to (feature, bin) pairs and
//                keep their sum in a register; x is staged through shared memory in chunks of
//                rows (coalesced loads), so each element is read from global memory once.
//  backward:     grad_x by one thread per element (sum over the bins of its feature);
//                centre/width gradients like the forward, per (bag, feature, bin), then summed
//                over bags (and features for shared parameters) by a small second kernel.
// Kernel values are recomputed in backward (histogram_math.h), never stored.
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/common/tensors.h"
#include "fastdl/histogram/histogram.h"
#include "fastdl/histogram/histogram_math.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

namespace fastdl {
namespace {

using cuda::acc_t;
using detail::HistogramKernel;
using detail::HistogramShape;

constexpr int kRowsPerChunk = 32;
constexpr int kMaxBins = 1024;  // one thread per (feature, bin) of a tile

struct Tiling {
  int features_per_block;  // F tile
  int threads;             // features_per_block * bins, rounded up to a warp
};

Tiling tiling_for(int64_t bins) {
  Tiling t;
  // At most 128 features a tile keeps the staged rows within 32 KiB of shared memory.
  t.features_per_block = static_cast<int>(std::clamp<int64_t>(256 / bins, 1, 128));
  t.threads = static_cast<int>(cuda::ceil_div(t.features_per_block * bins, cuda::kWarpSize) *
                               cuda::kWarpSize);
  return t;
}

// Stages rows [r0, r0 + kRowsPerChunk) x features [f0, f0 + FT) of one bag into shared memory
// (absent rows flagged), then each (feature, bin) thread visits them.
template <typename T>
__device__ __forceinline__ int stage_chunk(const T* __restrict__ x, const bool* __restrict__ mask,
                                           acc_t<T>* xs, bool* present, int64_t bag, int64_t r0,
                                           int64_t n, int64_t features, int64_t f0, int ft) {
  const int rows = static_cast<int>(min(static_cast<int64_t>(kRowsPerChunk), n - r0));
  for (int e = threadIdx.x; e < rows * ft; e += blockDim.x) {
    const int r = e / ft, fl = e % ft;
    const int64_t f = f0 + fl;
    xs[e] =
        f < features ? static_cast<acc_t<T>>(x[((bag * n) + r0 + r) * features + f]) : acc_t<T>(0);
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) present[r] = !mask || mask[bag * n + r0 + r];
  __syncthreads();
  return rows;
}

// The (feature, bin) pair of this thread in a block of grid (ceil(F / FT), min(bags, 65535)):
// feature tiles along x, bags along y (a block takes bags y, y + gridDim.y, ...).
struct TileThread {
  int64_t f0, f, k;
  int fl;       // feature within the tile
  bool active;  // false for the threads past the tile or past the last feature
  __device__ TileThread(int ft, int64_t features, int64_t bins)
      : f0(static_cast<int64_t>(blockIdx.x) * ft),
        f(f0 + threadIdx.x / bins),
        k(threadIdx.x % bins),
        fl(static_cast<int>(threadIdx.x / bins)),
        active(fl < ft && f < features) {}
};

// out[bag, f, k] = scale[bag] * sum_i K(x[bag, i, f] - c[f, k]).
template <typename T, HistogramKernel K>
__global__ void forward_kernel(const T* __restrict__ x, const bool* __restrict__ mask,
                               const acc_t<T>* __restrict__ centers,
                               const acc_t<T>* __restrict__ widths,
                               const acc_t<T>* __restrict__ scale, acc_t<T> sharpness,
                               T* __restrict__ out, int64_t bags, int64_t n, int64_t features,
                               int64_t bins, int64_t pstride, int ft) {
  using A = acc_t<T>;
  FASTDL_DYNAMIC_SHARED(unsigned char, smem);
  const TileThread t(ft, features, bins);
  A* xs = reinterpret_cast<A*>(smem);
  bool* present = reinterpret_cast<bool*>(xs + kRowsPerChunk * ft);
  const int64_t f0 = t.f0, f = t.f, k = t.k;
  const int fl = t.fl;
  const bool active = t.active;
  const A c = active ? centers[f * pstride + k] : A(0);
  const A w = active ? widths[f * pstride + k] : A(1);
  for (int64_t bag = blockIdx.y; bag < bags; bag += gridDim.y) {
    A sum = 0;
    for (int64_t r0 = 0; r0 < n; r0 += kRowsPerChunk) {
      const int rows = stage_chunk<T>(x, mask, xs, present, bag, r0, n, features, f0, ft);
      if (active) {
        for (int r = 0; r < rows; ++r) {
          if (present[r]) sum += detail::hist_value<K, A>(xs[r * ft + fl] - c, w, sharpness);
        }
      }
      __syncthreads();
    }
    if (active) out[(bag * features + f) * bins + k] = static_cast<T>(sum * scale[bag]);
  }
}

// Per (bag, feature, bin): -sum g * dv/dd and sum g * dv/dw over the bag's present elements,
// into float partials of shape (bags, F, B).
template <typename T, HistogramKernel K>
__global__ void param_grad_kernel(const T* __restrict__ grad_out, const T* __restrict__ x,
                                  const bool* __restrict__ mask,
                                  const acc_t<T>* __restrict__ centers,
                                  const acc_t<T>* __restrict__ widths,
                                  const acc_t<T>* __restrict__ scale, acc_t<T> sharpness,
                                  acc_t<T>* __restrict__ part_c, acc_t<T>* __restrict__ part_w,
                                  int64_t bags, int64_t n, int64_t features, int64_t bins,
                                  int64_t pstride, int ft) {
  using A = acc_t<T>;
  FASTDL_DYNAMIC_SHARED(unsigned char, smem);
  const TileThread t(ft, features, bins);
  A* xs = reinterpret_cast<A*>(smem);
  bool* present = reinterpret_cast<bool*>(xs + kRowsPerChunk * ft);
  const int64_t f0 = t.f0, f = t.f, k = t.k;
  const int fl = t.fl;
  const bool active = t.active;
  const A c = active ? centers[f * pstride + k] : A(0);
  const A w = active ? widths[f * pstride + k] : A(1);
  for (int64_t bag = blockIdx.y; bag < bags; bag += gridDim.y) {
    const int64_t out_idx = (bag * features + f) * bins + k;
    const A g = active ? static_cast<A>(grad_out[out_idx]) * scale[bag] : A(0);
    A sc = 0, sw = 0;
    for (int64_t r0 = 0; r0 < n; r0 += kRowsPerChunk) {
      const int rows = stage_chunk<T>(x, mask, xs, present, bag, r0, n, features, f0, ft);
      if (active) {
        for (int r = 0; r < rows; ++r) {
          if (!present[r]) continue;
          A dd, dw;
          detail::hist_derivatives<K, A>(xs[r * ft + fl] - c, w, sharpness, dd, dw);
          sc -= g * dd;
          sw += g * dw;
        }
      }
      __syncthreads();
    }
    if (active) {
      part_c[out_idx] = sc;
      part_w[out_idx] = sw;
    }
  }
}

// grad_x[bag, i, f] = scale[bag] * sum_k g[bag, f, k] * dv/dd(x - c[f, k]); 0 where absent.
template <typename T, HistogramKernel K>
__global__ void input_grad_kernel(const T* __restrict__ grad_out, const T* __restrict__ x,
                                  const bool* __restrict__ mask,
                                  const acc_t<T>* __restrict__ centers,
                                  const acc_t<T>* __restrict__ widths,
                                  const acc_t<T>* __restrict__ scale, acc_t<T> sharpness,
                                  T* __restrict__ grad_x, int64_t total, int64_t n,
                                  int64_t features, int64_t bins, int64_t pstride) {
  using A = acc_t<T>;
  FASTDL_GRID_STRIDE(e, total) {
    const int64_t f = e % features;
    const int64_t bag = e / (n * features);
    const int64_t i = (e / features) % n;
    if (mask && !mask[bag * n + i]) {
      grad_x[e] = T(0);
      continue;
    }
    const A xv = static_cast<A>(x[e]);
    const T* g = grad_out + (bag * features + f) * bins;
    const A* c = centers + f * pstride;
    const A* w = widths + f * pstride;
    A sum = 0;
    for (int64_t k = 0; k < bins; ++k) {
      A dd, dw;
      detail::hist_derivatives<K, A>(xv - c[k], w[k], sharpness, dd, dw);
      sum += static_cast<A>(g[k]) * dd;
    }
    grad_x[e] = static_cast<T>(sum * scale[bag]);
  }
}

// out[p] = sum over `groups` of part[group * count + p] (bags, or bags x features when the
// parameters are shared), in the parameters' dtype.
template <typename A, typename T>
__global__ void sum_groups_kernel(const A* __restrict__ part, T* __restrict__ out, int64_t groups,
                                  int64_t count) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= count) return;
  A s = 0;
  for (int64_t g = 0; g < groups; ++g) s += part[g * count + p];
  out[p] = static_cast<T>(s);
}

// (A launcher of its own: nvcc cannot name the kernel's instantiation from inside the nested
// dispatch lambdas.)
template <typename A, typename T>
void launch_sum_groups(const A* part, T* out, int64_t groups, int64_t count) {
  cuda::launch(sum_groups_kernel<A, T>, {cuda::ceil_div(count, 256), 256, 0}, part, out, groups,
               count);
}

size_t shared_bytes(int ft, size_t acc_size) {
  return kRowsPerChunk * ft * acc_size + kRowsPerChunk;
}

at::Tensor histogram_forward_cuda(const at::Tensor& x, const at::Tensor& centers,
                                  const at::Tensor& widths, c10::string_view kernel,
                                  const std::optional<at::Tensor>& mask, bool normalize,
                                  double sharpness) {
  const auto s = detail::check_histogram(x, centers, widths, kernel, mask, sharpness);
  TORCH_CHECK(s.bins <= kMaxBins, "fastdl.histogram: at most ", kMaxBins, " bins on CUDA, got ",
              s.bins);
  const cuda::DeviceGuard guard(x.device());
  const auto x3 = x.reshape({s.bags, s.n, s.features}).contiguous();
  // Centres and widths in the accumulation type: half precision would blur the bin edges.
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto c = centers.to(acc).contiguous(), w = widths.to(acc).contiguous();
  const auto m = contiguous_or_undefined(mask);
  const auto scale = detail::histogram_bag_scale(x3, mask, s, normalize);
  auto out = at::empty({s.bags, s.features, s.bins}, x.options());
  if (out.numel() > 0) {
    const auto t = tiling_for(s.bins);
    const dim3 grid(cuda::ceil_div(s.features, t.features_per_block),
                    std::min(s.bags, cuda::max_grid_yz()));
    const int64_t pstride = s.shared_params ? 0 : s.bins;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "histogram_forward_cuda", [&] {
          using A = acc_t<scalar_t>;
          detail::dispatch_histogram_kernel(s.kernel, [&]<HistogramKernel K>() {
            cuda::launch(forward_kernel<scalar_t, K>,
                         {grid, t.threads, shared_bytes(t.features_per_block, sizeof(A))},
                         x3.const_data_ptr<scalar_t>(), data_or_null<bool>(m),
                         c.const_data_ptr<A>(), w.const_data_ptr<A>(), scale.const_data_ptr<A>(),
                         static_cast<A>(sharpness), out.mutable_data_ptr<scalar_t>(), s.bags, s.n,
                         s.features, s.bins, pstride, t.features_per_block);
          });
        });
  }
  return s.batched ? out : out.squeeze(0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& centers,
    const at::Tensor& widths, c10::string_view kernel, const std::optional<at::Tensor>& mask,
    bool normalize, double sharpness, std::array<bool, 3> output_mask) {
  const auto s = detail::check_histogram(x, centers, widths, kernel, mask, sharpness);
  detail::check_histogram_grad(grad_output, x, s);
  TORCH_CHECK(s.bins <= kMaxBins, "fastdl.histogram: at most ", kMaxBins, " bins on CUDA, got ",
              s.bins);
  const cuda::DeviceGuard guard(x.device());
  const auto x3 = x.reshape({s.bags, s.n, s.features}).contiguous();
  const auto go = grad_output.reshape({s.bags, s.features, s.bins}).contiguous();
  // Centres and widths in the accumulation type: half precision would blur the bin edges.
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto c = centers.to(acc).contiguous(), w = widths.to(acc).contiguous();
  const auto m = contiguous_or_undefined(mask);
  const auto scale = detail::histogram_bag_scale(x3, mask, s, normalize);
  const int64_t pstride = s.shared_params ? 0 : s.bins;
  at::Tensor gx, gc, gw;
  if (output_mask[0]) gx = at::empty({s.bags, s.n, s.features}, x.options());
  // Contiguous (F, B) or (B,) gradients in the parameters' own dtypes, whatever their strides.
  if (output_mask[1]) gc = at::zeros(centers.sizes(), centers.options());
  if (output_mask[2]) gw = at::zeros(widths.sizes(), widths.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "histogram_backward_cuda", [&] {
        using A = acc_t<scalar_t>;
        detail::dispatch_histogram_kernel(s.kernel, [&]<HistogramKernel K>() {
          if (gx.defined() && gx.numel() > 0) {
            const int threads = 256;
            cuda::launch(input_grad_kernel<scalar_t, K>,
                         {cuda::grid_stride_blocks(gx.numel(), threads), threads, 0},
                         go.const_data_ptr<scalar_t>(), x3.const_data_ptr<scalar_t>(),
                         data_or_null<bool>(m), c.const_data_ptr<A>(), w.const_data_ptr<A>(),
                         scale.const_data_ptr<A>(), static_cast<A>(sharpness),
                         gx.mutable_data_ptr<scalar_t>(), gx.numel(), s.n, s.features, s.bins,
                         pstride);
          }
          if ((gc.defined() || gw.defined()) && go.numel() > 0) {
            auto parts = at::empty({2, s.bags, s.features, s.bins},
                                   x.options().dtype(c10::CppTypeToScalarType<A>::value));
            const auto t = tiling_for(s.bins);
            const dim3 grid(cuda::ceil_div(s.features, t.features_per_block),
                            std::min(s.bags, cuda::max_grid_yz()));
            cuda::launch(param_grad_kernel<scalar_t, K>,
                         {grid, t.threads, shared_bytes(t.features_per_block, sizeof(A))},
                         go.const_data_ptr<scalar_t>(), x3.const_data_ptr<scalar_t>(),
                         data_or_null<bool>(m), c.const_data_ptr<A>(), w.const_data_ptr<A>(),
                         scale.const_data_ptr<A>(), static_cast<A>(sharpness),
                         parts[0].mutable_data_ptr<A>(), parts[1].mutable_data_ptr<A>(), s.bags,
                         s.n, s.features, s.bins, pstride, t.features_per_block);
            // Shared (B,) parameters sum over bags and features, per-feature ones over bags.
            const int64_t count = s.shared_params ? s.bins : s.features * s.bins;
            const int64_t groups = s.shared_params ? s.bags * s.features : s.bags;
            for (auto [grad, part] : {std::pair{&gc, parts[0]}, std::pair{&gw, parts[1]}}) {
              if (!grad->defined()) continue;
              AT_DISPATCH_FLOATING_TYPES_AND2(
                  at::kHalf, at::kBFloat16, grad->scalar_type(), "histogram_param_sum", [&] {
                    launch_sum_groups(part.template const_data_ptr<A>(),
                                      grad->template mutable_data_ptr<scalar_t>(), groups, count);
                  });
            }
          }
        });
      });
  if (gx.defined()) gx = gx.view(x.sizes());
  return {gx, gc, gw};
}

}  // namespace

FASTDL_CUDA_KERNELS(m) {
  m.impl("histogram_forward", &histogram_forward_cuda);
  m.impl("histogram_backward", &histogram_backward_cuda);
}

}  // namespace fastdl
