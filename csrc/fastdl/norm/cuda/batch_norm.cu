// batch_norm CUDA kernels. The input is [outer, C, inner] (NC* layouts: outer = N,
// inner = spatial; channels-last and (N, C): inner = 1). Three steps, in forward and backward:
//  1. per-channel partial reductions (Welford statistics in forward; sum(dy) and
//     sum(dy * (x - mean)) in backward) over blocks of the batch, into a small buffer:
//       planar_reduce_kernel    (inner >= 32): a block per (channel, slice of the batch);
//       interleaved_reduce_kernel (inner < 32): 32 adjacent columns x 8 row threads, coalesced
//                                  along C for channels-last;
//  2. one thread per channel merges its partials: statistics, running-stat update, and the
//     three per-channel coefficients of step 3;
//  3. channel_affine_kernel: y = (x - mean) k1 + k3 in forward, dx = dy k1 + (x - mean) k2 + k3
//     in backward (centred, batch_norm_math.h), vectorised along the contiguous dim.
// Half types are read and written as such, accumulated in float; weight, bias and running
// stats may be float32 for half inputs.
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/common/tensors.h"
#include "fastdl/norm/batch_norm.h"
#include "fastdl/norm/batch_norm_math.h"
#include "fastdl/norm/norm_params.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <type_traits>

namespace fastdl {
namespace {

using cuda::acc_t;
using detail::BatchNormShape;

constexpr int kPlanarMinInner = 32;
constexpr int kReduceThreads = 256;
constexpr int kColTile = 32;
constexpr int kRowThreads = 8;

// Each reduction works relative to a per-channel centre, read once per thread: values near it
// keep their digits in float where |mean| >> std (x ~ 100 + 0.01 z would otherwise lose ~4 of
// them to the running mean's rounding).

// Forward reduction: Welford statistics of x - x[first element of the channel]; the channel's
// first element is at c * inner in both layouts (outer index 0).
template <typename T>
struct StatsReduce {
  using A = acc_t<T>;
  using State = cuda::Welford<A>;
  const T* x;
  int64_t inner;
  __device__ __forceinline__ A centre(int64_t c) const { return static_cast<A>(x[c * inner]); }
  __device__ __forceinline__ void add(State& s, int64_t idx, A centre) const {
    s.add(static_cast<A>(x[idx]) - centre);
  }
};

// Backward reduction: a = sum(dy), b = sum(dy * (x - mean)).
template <typename T>
struct GradReduce {
  using A = acc_t<T>;
  using State = cuda::SumPair<A>;
  const T* dy;
  const T* x;
  const A* mean;
  __device__ __forceinline__ A centre(int64_t c) const { return mean[c]; }
  __device__ __forceinline__ void add(State& s, int64_t idx, A centre) const {
    const A g = static_cast<A>(dy[idx]);
    s.a += g;
    s.b += g * (static_cast<A>(x[idx]) - centre);
  }
};

// grid (C, splits): block (c, y) reduces outer indices [y * outer_per_split, ...) of channel c
// into partials[c * splits + y].
template <typename Op>
__global__ void planar_reduce_kernel(Op op, typename Op::State* __restrict__ partials,
                                     int64_t outer, int64_t channels, int64_t inner,
                                     int64_t outer_per_split) {
  using State = typename Op::State;
  FASTDL_SHARED(State, scratch, [cuda::kWarpSize]);
  const int64_t c = blockIdx.x;
  const int64_t o0 = blockIdx.y * outer_per_split;
  const int64_t o1 = min(outer, o0 + outer_per_split);
  State s{};
  const auto centre = op.centre(c);
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t base = (o * channels + c) * inner;
    for (int64_t i = threadIdx.x; i < inner; i += blockDim.x) op.add(s, base + i, centre);
  }
  s = cuda::block_reduce_all(s, scratch);
  if (threadIdx.x == 0) partials[c * gridDim.y + blockIdx.y] = s;
}

// Rows of R = C * inner values; grid (ceil(R / 32), splits), block (32, 8). Column j belongs
// to channel j / inner; its partial goes to
// partials[c * (inner * splits) + (j % inner) * splits + y].
template <typename Op>
__global__ void interleaved_reduce_kernel(Op op, typename Op::State* __restrict__ partials,
                                          int64_t outer, int64_t channels, int64_t inner,
                                          int64_t outer_per_split) {
  using State = typename Op::State;
  FASTDL_SHARED(State, tile, [kRowThreads][kColTile]);
  const int64_t R = channels * inner;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t o0 = blockIdx.y * outer_per_split;
  const int64_t o1 = min(outer, o0 + outer_per_split);
  State s{};
  if (j < R) {
    const auto centre = op.centre(j / inner);
    for (int64_t o = o0 + threadIdx.y; o < o1; o += kRowThreads) op.add(s, o * R + j, centre);
  }
  tile[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < R) {
    for (int k = 1; k < kRowThreads; ++k) s.combine(tile[k][threadIdx.x]);
    const int64_t c = j / inner;
    partials[c * (inner * gridDim.y) + (j % inner) * gridDim.y + blockIdx.y] = s;
  }
}

// Launches the reduction of `op` over the problem; returns partials of shape [C, count].
template <typename Op>
at::Tensor reduce_per_channel(const Op& op, const BatchNormShape& shape,
                              const at::TensorOptions& options, int64_t& count) {
  using State = typename Op::State;
  const int sms = cuda::device_properties().multiProcessorCount;
  const int64_t C = shape.channels, outer = shape.outer, inner = shape.inner;
  static_assert(sizeof(State) % sizeof(float) == 0, "reduction states are made of floats/doubles");
  auto alloc = [&](int64_t n) {
    return at::empty({static_cast<int64_t>(n * sizeof(State))}, options.dtype(at::kByte));
  };
  if (inner >= kPlanarMinInner) {
    // Enough blocks to fill the GPU ~4 times, each with at least ~16k elements.
    int64_t splits = std::min<int64_t>(outer, std::max<int64_t>(1, cuda::ceil_div(4 * sms, C)));
    splits = std::max<int64_t>(1, std::min<int64_t>(splits, outer * inner / 16384));
    const int64_t per_split = cuda::ceil_div(outer, splits);
    splits = cuda::ceil_div(outer, per_split);
    auto buf = alloc(C * splits);
    cuda::launch(planar_reduce_kernel<Op>, {dim3(C, splits), kReduceThreads, 0}, op,
                 reinterpret_cast<State*>(buf.data_ptr()), outer, C, inner, per_split);
    count = splits;
    return buf;
  }
  const int64_t col_tiles = cuda::ceil_div(C * inner, kColTile);
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(cuda::ceil_div(outer, 4 * kRowThreads),
                                                          cuda::ceil_div(4 * sms, col_tiles)));
  const int64_t per_split = cuda::ceil_div(outer, splits);
  splits = cuda::ceil_div(outer, per_split);
  auto buf = alloc(C * inner * splits);
  cuda::launch(interleaved_reduce_kernel<Op>,
               {dim3(col_tiles, splits), dim3(kColTile, kRowThreads), 0}, op,
               reinterpret_cast<State*>(buf.data_ptr()), outer, C, inner, per_split);
  count = inner * splits;
  return buf;
}

// The statistics of a float-accumulated channel whose merged Welford variance is not finite:
// squares past float's range (|x - centre| ~ 1e19 and more, which bfloat16 holds too)
// overflow m2, and invstd = 0 would make the output the bias. As the CPU kernel: the
// channel's sums around the same centre again in double, var = S2/n - (S1/n)^2, rounded to
// float; an inf or NaN in the channel leaves invstd NaN. The channel's thread reads it
// serially: only such channels take this path, out of line so the fast path keeps its
// registers (the result is returned by value: references to the caller's locals would put
// them in local memory).
struct ChannelStats {
  float mean, invstd, unbiased;
};

template <typename T>
__device__ __noinline__ ChannelStats channel_stats_in_double(const StatsReduce<T>& op, int64_t c,
                                                             int64_t outer, int64_t channels,
                                                             double eps) {
  const double centre = op.centre(c);
  double s1 = 0, s2 = 0;
  for (int64_t o = 0; o < outer; ++o) {
    const T* run = op.x + (o * channels + c) * op.inner;
    for (int64_t i = 0; i < op.inner; ++i) {
      const double d = static_cast<double>(run[i]) - centre;
      s1 += d;
      s2 += d * d;
    }
  }
  const double n = static_cast<double>(outer * op.inner);
  const double m1 = s1 / n, d2 = s2 / n - m1 * m1;
  const double var = d2 < 0.0 ? 0.0 : d2;  // keeps a NaN
  return {static_cast<float>(centre + m1), static_cast<float>(1.0 / sqrt(var + eps)),
          static_cast<float>(n > 1 ? var * n / (n - 1) : var)};
}

// Per channel: merge the Welford partials (relative to the reduction's centre); save mean/invstd; update running stats; forward
// coefficients k1 = invstd * w, k3 = b - mean * k1.
template <typename T, typename P>
__global__ void finalize_stats_kernel(
    StatsReduce<T> op, const cuda::Welford<acc_t<T>>* __restrict__ partials, int64_t count,
    int64_t outer, int64_t channels, const P* __restrict__ weight, const P* __restrict__ bias,
    P* __restrict__ running_mean, P* __restrict__ running_var, acc_t<T> momentum, acc_t<T> eps,
    acc_t<T>* __restrict__ save_mean, acc_t<T>* __restrict__ save_invstd, acc_t<T>* __restrict__ k1,
    acc_t<T>* __restrict__ k3) {
  using A = acc_t<T>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  cuda::Welford<A> s{};
  for (int64_t k = 0; k < count; ++k) s.combine(partials[c * count + k]);
  const A var = s.n > 0 ? s.m2 / s.n : A(0);
  A invstd = rsqrt(var + eps);
  A mean = s.mean + op.centre(c);
  A unbiased = s.n > 1 ? s.m2 / (s.n - 1) : var;
  if constexpr (std::is_same_v<A, float>) {
    if (!cuda::is_finite(var)) {
      const ChannelStats wide = channel_stats_in_double(op, c, outer, channels, eps);
      mean = wide.mean;
      invstd = wide.invstd;
      unbiased = wide.unbiased;
    }
  }
  save_mean[c] = mean;
  save_invstd[c] = invstd;
  if (running_mean) {
    running_mean[c] =
        static_cast<P>(detail::bn_running_update(static_cast<A>(running_mean[c]), mean, momentum));
    running_var[c] = static_cast<P>(
        detail::bn_running_update(static_cast<A>(running_var[c]), unbiased, momentum));
  }
  detail::bn_output_coefficients(invstd, weight ? static_cast<A>(weight[c]) : A(1),
                                 bias ? static_cast<A>(bias[c]) : A(0), k1[c], k3[c]);
}

// Evaluation: statistics from the running ones.
template <typename T, typename P>
__global__ void finalize_eval_kernel(int64_t channels, const P* __restrict__ weight,
                                     const P* __restrict__ bias, const P* __restrict__ running_mean,
                                     const P* __restrict__ running_var, acc_t<T> eps,
                                     acc_t<T>* __restrict__ save_mean,
                                     acc_t<T>* __restrict__ save_invstd, acc_t<T>* __restrict__ k1,
                                     acc_t<T>* __restrict__ k3) {
  using A = acc_t<T>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const A mean = static_cast<A>(running_mean[c]);
  const A invstd = rsqrt(static_cast<A>(running_var[c]) + eps);
  save_mean[c] = mean;
  save_invstd[c] = invstd;
  detail::bn_output_coefficients(invstd, weight ? static_cast<A>(weight[c]) : A(1),
                                 bias ? static_cast<A>(bias[c]) : A(0), k1[c], k3[c]);
}

// Backward, per channel: grad_weight = sum(dy * (x - mean)) * invstd, grad_bias = sum(dy), and
// dx = dy * k1 + (x - mean) * k2 + k3 (training) or dy * k1 (evaluation).
template <typename T, typename P, typename PB>
__global__ void finalize_grad_kernel(
    const cuda::SumPair<acc_t<T>>* __restrict__ partials, int64_t count, int64_t channels,
    int64_t n, bool training, const P* __restrict__ weight, const acc_t<T>* __restrict__ mean,
    const acc_t<T>* __restrict__ invstd, P* __restrict__ grad_weight, PB* __restrict__ grad_bias,
    acc_t<T>* __restrict__ k1, acc_t<T>* __restrict__ k2, acc_t<T>* __restrict__ k3) {
  using A = acc_t<T>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  cuda::SumPair<A> s{};
  if (partials) {
    for (int64_t k = 0; k < count; ++k) s.combine(partials[c * count + k]);
  }
  const A is = invstd[c];
  const A w = weight ? static_cast<A>(weight[c]) : A(1);
  if (grad_weight) grad_weight[c] = static_cast<P>(s.b * is);
  if (grad_bias) grad_bias[c] = static_cast<PB>(s.a);
  detail::bn_input_grad_coefficients(is, w, s.a, s.b, static_cast<A>(n), training, k1[c], k2[c],
                                     k3[c]);
}

// The elementwise pass, out = (a - a_shift[c]) * k1[c] + (b - b_shift[c]) * k2[c] + k3[c]:
// forward y from x (a = x shifted by the mean, no b), backward dx from dy (a = dy, b = x shifted
// by the mean); b and the shifts may be null (b's term vanishes, a shift is 0).
template <typename T>
struct Affine {
  const T* a;
  const acc_t<T>* a_shift;
  const T* b;
  const acc_t<T>* b_shift;
  const acc_t<T>* k1;
  const acc_t<T>* k2;
  const acc_t<T>* k3;
  T* out;
};

// VEC consecutive elements share a channel (planar, inner % VEC == 0) or are VEC consecutive
// channels (interleaved, inner == 1, C % VEC == 0).
template <typename T, int VEC, bool INTERLEAVED>
__global__ void channel_affine_kernel(Affine<T> f, int64_t numel, int64_t channels, int64_t inner) {
  using A = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < numel;
       i += stride) {
    const auto ap = cuda::load_pack<T, VEC>(f.a + i);
    cuda::Pack<T, VEC> bp{};
    if (f.b) bp = cuda::load_pack<T, VEC>(f.b + i);
    cuda::Pack<T, VEC> op;
    const int64_t c0 = INTERLEAVED ? i % channels : (i / inner) % channels;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int64_t c = INTERLEAVED ? c0 + k : c0;
      A v = (static_cast<A>(ap.v[k]) - (f.a_shift ? f.a_shift[c] : A(0))) * f.k1[c] + f.k3[c];
      if (f.b) v += (static_cast<A>(bp.v[k]) - (f.b_shift ? f.b_shift[c] : A(0))) * f.k2[c];
      op.v[k] = static_cast<T>(v);
    }
    cuda::store_pack<T, VEC>(f.out + i, op);
  }
}

template <typename T>
void launch_channel_affine(const BatchNormShape& shape, const Affine<T>& f, int64_t numel) {
  const bool interleaved = shape.inner == 1;
  const int64_t run = interleaved ? shape.channels : shape.inner;  // values sharing the pattern
  const int vec = cuda::pack_width<T>(run, {f.a, f.b, f.out});
  const int threads = 256;
  const int sms = cuda::device_properties().multiProcessorCount;
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>(cuda::ceil_div(numel / vec, threads), sms * 16));
  static_switch<8, 4, 2, 1>(vec, [&](auto width) {
    constexpr int V = decltype(width)::value;
    if (interleaved) {
      cuda::launch(channel_affine_kernel<T, V, true>, {blocks, threads, 0}, f, numel,
                   shape.channels, shape.inner);
    } else {
      cuda::launch(channel_affine_kernel<T, V, false>, {blocks, threads, 0}, f, numel,
                   shape.channels, shape.inner);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_forward_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps) {
  const auto shape = detail::check_batch_norm_forward(input, weight, bias, running_mean,
                                                      running_var, training, momentum, eps);
  const bool mixed = float_params_for_half_input(
      input, {weight.value_or(at::Tensor()), bias.value_or(at::Tensor()),
              running_mean.value_or(at::Tensor()), running_var.value_or(at::Tensor())});
  const cuda::DeviceGuard guard(input.device());
  const auto x = detail::batch_norm_layout(input, shape);
  const auto w = contiguous_or_undefined(weight), b = contiguous_or_undefined(bias);
  auto output = at::empty_like(x);
  const int64_t C = shape.channels;
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto save_mean = at::zeros({C}, x.options().dtype(acc));
  auto save_invstd = at::zeros({C}, x.options().dtype(acc));
  if (C == 0 || (training && shape.per_channel() == 0)) return {output, save_mean, save_invstd};
  ContiguousInPlace running_mean_io(training ? running_mean : std::nullopt);
  ContiguousInPlace running_var_io(training ? running_var : std::nullopt);
  const auto rm_eval = training ? at::Tensor() : contiguous_or_undefined(running_mean);
  const auto rv_eval = training ? at::Tensor() : contiguous_or_undefined(running_var);
  auto coef = at::empty({2, C}, x.options().dtype(acc));
  const int threads = 128;
  const int64_t blocks = cuda::ceil_div(C, threads);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_forward_cuda", [&] {
        using T = scalar_t;
        using A = acc_t<T>;
        auto run = [&](auto param_tag) {
          using P = decltype(param_tag);
          A* k1 = coef[0].mutable_data_ptr<A>();
          A* k3 = coef[1].mutable_data_ptr<A>();
          if (training) {
            int64_t count = 0;
            const StatsReduce<T> stats{x.const_data_ptr<T>(), shape.inner};
            const auto partials = reduce_per_channel(stats, shape, x.options(), count);
            cuda::launch(finalize_stats_kernel<T, P>, {blocks, threads, 0}, stats,
                         reinterpret_cast<const cuda::Welford<A>*>(partials.const_data_ptr()),
                         count, shape.outer, C, data_or_null<P>(w), data_or_null<P>(b),
                         mutable_data_or_null<P>(running_mean_io.work()),
                         mutable_data_or_null<P>(running_var_io.work()), static_cast<A>(momentum),
                         static_cast<A>(eps), save_mean.mutable_data_ptr<A>(),
                         save_invstd.mutable_data_ptr<A>(), k1, k3);
          } else {
            cuda::launch(finalize_eval_kernel<T, P>, {blocks, threads, 0}, C, data_or_null<P>(w),
                         data_or_null<P>(b), data_or_null<P>(rm_eval), data_or_null<P>(rv_eval),
                         static_cast<A>(eps), save_mean.mutable_data_ptr<A>(),
                         save_invstd.mutable_data_ptr<A>(), k1, k3);
          }
          if (x.numel() > 0) {
            launch_channel_affine<T>(shape,
                                     {x.const_data_ptr<T>(), save_mean.const_data_ptr<A>(), nullptr,
                                      nullptr, k1, nullptr, k3, output.mutable_data_ptr<T>()},
                                     x.numel());
          }
        };
        if (mixed)
          run(float{});
        else
          run(T{});
      });
  running_mean_io.commit();
  running_var_io.commit();
  return {output, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    std::array<bool, 3> output_mask) {
  const auto shape =
      detail::check_batch_norm_backward(grad_output, input, weight, save_mean, save_invstd);
  const cuda::DeviceGuard guard(input.device());
  const auto x = detail::batch_norm_layout(input, shape);
  const auto dy = detail::batch_norm_layout(grad_output, shape);
  const auto w = contiguous_or_undefined(weight);
  const bool mixed = float_params_for_half_input(x, {w});
  const int64_t C = shape.channels;
  const int64_t n = shape.per_channel();
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto mean = save_mean.contiguous().to(acc);
  const auto invstd = save_invstd.contiguous().to(acc);
  const auto [weight_dtype, bias_dtype] = detail::norm_param_grad_dtypes(x, w);
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::empty_like(x);
  if (output_mask[1] && w.defined()) grad_weight = at::zeros({C}, x.options().dtype(weight_dtype));
  if (output_mask[2]) grad_bias = at::zeros({C}, x.options().dtype(bias_dtype));
  if (n == 0 || C == 0) return {grad_input, grad_weight, grad_bias};
  auto coef = at::empty({3, C}, x.options().dtype(acc));
  const int threads = 128;
  const int64_t blocks = cuda::ceil_div(C, threads);
  const bool need_sums =
      grad_weight.defined() || grad_bias.defined() || (grad_input.defined() && training);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_backward_cuda", [&] {
        using T = scalar_t;
        using A = acc_t<T>;
        auto run = [&](auto param_tag) {
          using P = decltype(param_tag);
          int64_t count = 0;
          at::Tensor partials;
          if (need_sums) {
            partials =
                reduce_per_channel(GradReduce<T>{dy.const_data_ptr<T>(), x.const_data_ptr<T>(),
                                                 mean.const_data_ptr<A>()},
                                   shape, x.options(), count);
          }
          A* k1 = coef[0].mutable_data_ptr<A>();
          A* k2 = coef[1].mutable_data_ptr<A>();
          A* k3 = coef[2].mutable_data_ptr<A>();
          const auto* sums =
              partials.defined()
                  ? reinterpret_cast<const cuda::SumPair<A>*>(partials.const_data_ptr())
                  : nullptr;
          const auto finalize = [&](auto bias_tag) {
            using PB = decltype(bias_tag);
            cuda::launch(finalize_grad_kernel<T, P, PB>, {blocks, threads, 0}, sums, count, C, n,
                         training, data_or_null<P>(w), mean.const_data_ptr<A>(),
                         invstd.const_data_ptr<A>(), mutable_data_or_null<P>(grad_weight),
                         mutable_data_or_null<PB>(grad_bias), k1, k2, k3);
          };
          if (grad_bias.defined() &&
              grad_bias.scalar_type() == c10::CppTypeToScalarType<A>::value) {
            finalize(A{});
          } else {
            finalize(P{});
          }
          if (grad_input.defined()) {
            launch_channel_affine<T>(
                shape,
                {dy.const_data_ptr<T>(), nullptr, training ? x.const_data_ptr<T>() : nullptr,
                 mean.const_data_ptr<A>(), k1, k2, k3, grad_input.mutable_data_ptr<T>()},
                x.numel());
          }
        };
        if (mixed)
          run(float{});
        else
          run(T{});
      });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

FASTDL_CUDA_KERNELS(m) {
  m.impl("batch_norm_forward", &batch_norm_forward_cuda);
  m.impl("batch_norm_backward", &batch_norm_backward_cuda);
}

}  // namespace fastdl
