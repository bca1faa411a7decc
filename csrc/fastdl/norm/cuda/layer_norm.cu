// layer_norm CUDA kernels.
//  forward:  one block per row; each thread keeps a Welford state over 16-byte vector loads,
//            the block merges them, then the row is normalised (second read hits L1/L2).
//  backward: one block per row for grad_input (two block sums: sum(g), sum(g * xhat));
//            grad_weight/grad_bias as column sums over row chunks into float partials, then
//            one pass over the partials (no atomics).
// Half types are read and written as such and accumulated in float.
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/common/tensors.h"
#include "fastdl/norm/layer_norm.h"
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

int threads_for(int64_t cols) {
  return cols <= 256 ? 64 : cols <= 1024 ? 128 : cols <= 4096 ? 256 : 512;
}

// The statistics of a float-accumulated row whose Welford variance is not finite: squares
// past float's range (|x| ~ 1e19 and more, which bfloat16 holds too) overflow m2, and
// rstd = 1 / sqrt(inf) = 0 would make the output the bias. As the CPU kernel: mean and
// variance again in double (two passes), rounded to float; an inf or NaN in the row leaves
// rstd NaN. Every thread of the block calls it (var is the block's), so the reductions are
// uniform; out of line, so the fast path keeps its registers (the result is returned by
// value: references to the caller's locals would put them in local memory).
struct RowStats {
  float mean, rstd;
};

template <typename T, int VEC>
__device__ __noinline__ RowStats row_stats_in_double(const T* __restrict__ xr, int64_t cols,
                                                     double eps) {
  FASTDL_SHARED(cuda::Sum<double>, wide_scratch, [cuda::kWarpSize]);
  cuda::Sum<double> sum{};
  for (int64_t i = threadIdx.x * VEC; i < cols; i += blockDim.x * VEC) {
    const auto pack = cuda::load_pack<T, VEC>(xr + i);
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum.v += static_cast<double>(pack.v[k]);
  }
  const double m = cuda::block_reduce_all(sum, wide_scratch).v / static_cast<double>(cols);
  cuda::Sum<double> squares{};
  for (int64_t i = threadIdx.x * VEC; i < cols; i += blockDim.x * VEC) {
    const auto pack = cuda::load_pack<T, VEC>(xr + i);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const double d = static_cast<double>(pack.v[k]) - m;
      squares.v += d * d;
    }
  }
  const double v = cuda::block_reduce_all(squares, wide_scratch).v / static_cast<double>(cols);
  // v < 0 ? 0 : v keeps a NaN v (max would drop it)
  return {static_cast<float>(m), static_cast<float>(1.0 / sqrt((v < 0.0 ? 0.0 : v) + eps))};
}

template <typename T, typename P, int VEC>
__global__ void forward_kernel(const T* __restrict__ x, const P* __restrict__ weight,
                               const P* __restrict__ bias, T* __restrict__ y,
                               acc_t<T>* __restrict__ mean_out, acc_t<T>* __restrict__ rstd_out,
                               int64_t rows, int64_t cols, acc_t<T> eps) {
  using A = acc_t<T>;
  FASTDL_SHARED(cuda::Welford<A>, scratch, [cuda::kWarpSize]);
  // Rows beyond the grid (more than 2^31 - 1) are taken by the same blocks again; every thread
  // of a block runs the same iterations, so the block reductions stay uniform.
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * cols;
    T* yr = y + row * cols;

    cuda::Welford<A> w{};
    for (int64_t i = threadIdx.x * VEC; i < cols; i += blockDim.x * VEC) {
      const auto pack = cuda::load_pack<T, VEC>(xr + i);
#pragma unroll
      for (int k = 0; k < VEC; ++k) w.add(static_cast<A>(pack.v[k]));
    }
    w = cuda::block_reduce_all(w, scratch);
    A mean = w.mean;
    const A var = w.n > 0 ? w.m2 / w.n : A(0);
    A rstd = rsqrt((var < A(0) ? A(0) : var) + eps);  // a NaN var stays NaN (max would drop it)
    if constexpr (std::is_same_v<A, float>) {
      if (!cuda::is_finite(var)) {
        const RowStats wide = row_stats_in_double<T, VEC>(xr, cols, eps);
        mean = wide.mean;
        rstd = wide.rstd;
      }
    }
    if (threadIdx.x == 0) {
      mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
    for (int64_t i = threadIdx.x * VEC; i < cols; i += blockDim.x * VEC) {
      const auto pack = cuda::load_pack<T, VEC>(xr + i);
      cuda::Pack<T, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        A v = (static_cast<A>(pack.v[k]) - mean) * rstd;
        if (weight) v *= static_cast<A>(weight[i + k]);
        if (bias) v += static_cast<A>(bias[i + k]);
        out.v[k] = static_cast<T>(v);
      }
      cuda::store_pack<T, VEC>(yr + i, out);
    }
  }
}

template <typename T, typename P, int VEC>
__global__ void backward_input_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                      const acc_t<T>* __restrict__ mean,
                                      const acc_t<T>* __restrict__ rstd,
                                      const P* __restrict__ weight, T* __restrict__ dx,
                                      int64_t rows, int64_t cols) {
  using A = acc_t<T>;
  FASTDL_SHARED(cuda::SumPair<A>, scratch, [cuda::kWarpSize]);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* dyr = dy + row * cols;
    const T* xr = x + row * cols;
    const A m = mean[row], s = rstd[row];

    // g = dy * w, xhat = (x - m) * s; dx = s * (g - mean(g) - xhat * mean(g * xhat)).
    cuda::SumPair<A> sums{};
    for (int64_t i = threadIdx.x * VEC; i < cols; i += blockDim.x * VEC) {
      const auto dp = cuda::load_pack<T, VEC>(dyr + i);
      const auto xp = cuda::load_pack<T, VEC>(xr + i);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        A g = static_cast<A>(dp.v[k]);
        if (weight) g *= static_cast<A>(weight[i + k]);
        sums.a += g;
        sums.b += g * (static_cast<A>(xp.v[k]) - m) * s;
      }
    }
    sums = cuda::block_reduce_all(sums, scratch);
    const A mean_g = sums.a / cols, mean_gx = sums.b / cols;
    for (int64_t i = threadIdx.x * VEC; i < cols; i += blockDim.x * VEC) {
      const auto dp = cuda::load_pack<T, VEC>(dyr + i);
      const auto xp = cuda::load_pack<T, VEC>(xr + i);
      cuda::Pack<T, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        A g = static_cast<A>(dp.v[k]);
        if (weight) g *= static_cast<A>(weight[i + k]);
        const A xhat = (static_cast<A>(xp.v[k]) - m) * s;
        out.v[k] = static_cast<T>(s * (g - mean_g - xhat * mean_gx));
      }
      cuda::store_pack<T, VEC>(dx + row * cols + i, out);
    }
  }
}

// Column sums over a chunk of rows: partial_w[chunk][c] = sum dy * xhat, partial_b = sum dy.
// Block (32, 8): threadIdx.x walks 32 adjacent columns (coalesced), threadIdx.y rows.
constexpr int kColTile = 32;
constexpr int kRowThreads = 8;

template <typename T>
__global__ void backward_params_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                               const acc_t<T>* __restrict__ mean,
                                               const acc_t<T>* __restrict__ rstd,
                                               acc_t<T>* __restrict__ partial_w,
                                               acc_t<T>* __restrict__ partial_b, int64_t rows,
                                               int64_t cols, int64_t rows_per_chunk) {
  using A = acc_t<T>;
  FASTDL_SHARED(A, tile_w, [kRowThreads][kColTile + 1]);
  FASTDL_SHARED(A, tile_b, [kRowThreads][kColTile + 1]);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = blockIdx.y * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  A sw = 0, sb = 0;
  if (c < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowThreads) {
      const A d = static_cast<A>(dy[r * cols + c]);
      sw += d * (static_cast<A>(x[r * cols + c]) - mean[r]) * rstd[r];
      sb += d;
    }
  }
  tile_w[threadIdx.y][threadIdx.x] = sw;
  tile_b[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    for (int k = 1; k < kRowThreads; ++k) {
      sw += tile_w[k][threadIdx.x];
      sb += tile_b[k][threadIdx.x];
    }
    if (partial_w) partial_w[blockIdx.y * cols + c] = sw;
    if (partial_b) partial_b[blockIdx.y * cols + c] = sb;
  }
}

template <typename A, typename P>
__global__ void sum_partials_kernel(const A* __restrict__ partial, P* __restrict__ out,
                                    int64_t chunks, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  A s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * cols + c];
  out[c] = static_cast<P>(s);
}

template <typename T, typename P>
void launch_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, at::Tensor& y,
                    at::Tensor& mean, at::Tensor& rstd, int64_t rows, int64_t cols, double eps) {
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  const P* wp = data_or_null<P>(w);
  const P* bp = data_or_null<P>(b);
  auto* mp = mean.mutable_data_ptr<acc_t<T>>();
  auto* rp = rstd.mutable_data_ptr<acc_t<T>>();
  const int vec = cuda::pack_width<T>(cols, {xp, yp});
  const auto grid = static_cast<unsigned>(std::min<int64_t>(rows, cuda::max_grid_x()));
  const int threads = threads_for(cols / vec);
  const auto e = static_cast<acc_t<T>>(eps);
  static_switch<8, 4, 2, 1>(vec, [&](auto width) {
    constexpr int V = decltype(width)::value;
    cuda::launch(forward_kernel<T, P, V>, {grid, threads, 0}, xp, wp, bp, yp, mp, rp, rows, cols,
                 e);
  });
}

template <typename T, typename P>
void launch_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                     const at::Tensor& rstd, const at::Tensor& w, at::Tensor& dx, at::Tensor& dw,
                     at::Tensor& db, int64_t rows, int64_t cols) {
  const T* dyp = dy.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  const auto* mp = mean.const_data_ptr<acc_t<T>>();
  const auto* rp = rstd.const_data_ptr<acc_t<T>>();
  if (dx.defined()) {
    const P* wp = data_or_null<P>(w);
    T* dxp = dx.mutable_data_ptr<T>();
    const int vec = cuda::pack_width<T>(cols, {dyp, xp, dxp});
    const auto grid = static_cast<unsigned>(std::min<int64_t>(rows, cuda::max_grid_x()));
    const int threads = threads_for(cols / vec);
    static_switch<8, 4, 2, 1>(vec, [&](auto width) {
      constexpr int V = decltype(width)::value;
      cuda::launch(backward_input_kernel<T, P, V>, {grid, threads, 0}, dyp, xp, mp, rp, wp, dxp,
                   rows, cols);
    });
  }
  if (dw.defined() || db.defined()) {
    // Enough row chunks to fill the GPU with column tiles, each chunk at least 64 rows.
    const int64_t col_tiles = cuda::ceil_div(cols, kColTile);
    const int sms = cuda::device_properties().multiProcessorCount;
    int64_t chunks = std::max<int64_t>(
        1, std::min<int64_t>(cuda::ceil_div(rows, 64), cuda::ceil_div(4 * sms, col_tiles)));
    const int64_t rows_per_chunk = cuda::ceil_div(rows, chunks);
    chunks = cuda::ceil_div(rows, rows_per_chunk);
    using A = acc_t<T>;
    auto partial =
        at::empty({2, chunks, cols}, x.options().dtype(c10::CppTypeToScalarType<A>::value));
    A* pw = dw.defined() ? partial[0].template mutable_data_ptr<A>() : nullptr;
    A* pb = db.defined() ? partial[1].template mutable_data_ptr<A>() : nullptr;
    cuda::launch(backward_params_partial_kernel<T>,
                 {dim3(col_tiles, chunks), dim3(kColTile, kRowThreads), 0}, dyp, xp, mp, rp, pw, pb,
                 rows, cols, rows_per_chunk);
    const int threads = 256;
    if (dw.defined()) {
      cuda::launch(sum_partials_kernel<A, P>, {cuda::ceil_div(cols, threads), threads, 0}, pw,
                   dw.mutable_data_ptr<P>(), chunks, cols);
    }
    if (db.defined() && db.scalar_type() == c10::CppTypeToScalarType<A>::value) {
      cuda::launch(sum_partials_kernel<A, A>, {cuda::ceil_div(cols, threads), threads, 0}, pb,
                   db.mutable_data_ptr<A>(), chunks, cols);
    } else if (db.defined()) {
      cuda::launch(sum_partials_kernel<A, P>, {cuda::ceil_div(cols, threads), threads, 0}, pb,
                   db.mutable_data_ptr<P>(), chunks, cols);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward_cuda(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  const auto shape = detail::check_layer_norm_forward(input, normalized_shape, weight, bias, eps);
  const cuda::DeviceGuard guard(input.device());
  const auto x = input.contiguous();
  const auto w = contiguous_or_undefined(weight);
  const auto b = contiguous_or_undefined(bias);
  TORCH_CHECK(!w.defined() || !b.defined() || w.scalar_type() == b.scalar_type(),
              "fastdl.layer_norm: weight and bias must have the same dtype, got ", w.scalar_type(),
              " and ", b.scalar_type());
  auto output = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto stats_shape = detail::layer_norm_stats_shape(x, normalized_shape.size());
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto mean = at::empty(stats_shape, x.options().dtype(acc));
  auto rstd = at::empty(stats_shape, x.options().dtype(acc));
  if (shape.rows == 0) return {output, mean, rstd};
  const bool mixed = float_params_for_half_input(x, {w, b});
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "layer_norm_forward_cuda", [&] {
        if (mixed) {
          launch_forward<scalar_t, float>(x, w, b, output, mean, rstd, shape.rows, shape.cols, eps);
        } else {
          launch_forward<scalar_t, scalar_t>(x, w, b, output, mean, rstd, shape.rows, shape.cols,
                                             eps);
        }
      });
  return {output, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    std::array<bool, 3> output_mask) {
  const auto shape =
      detail::check_layer_norm_backward(grad_output, input, normalized_shape, mean, rstd, weight);
  const cuda::DeviceGuard guard(input.device());
  const auto dy = grad_output.contiguous();
  const auto x = input.contiguous();
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto m = mean.contiguous().to(acc);
  const auto s = rstd.contiguous().to(acc);
  const auto w = contiguous_or_undefined(weight);
  const bool mixed = float_params_for_half_input(x, {w});
  const auto [weight_dtype, bias_dtype] = detail::norm_param_grad_dtypes(x, w);
  at::Tensor dx, dw, db;
  if (output_mask[0]) dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (output_mask[1] && w.defined())
    dw = at::zeros(normalized_shape, x.options().dtype(weight_dtype));
  if (output_mask[2]) db = at::zeros(normalized_shape, x.options().dtype(bias_dtype));
  if (shape.rows == 0 || shape.cols == 0) return {dx, dw, db};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "layer_norm_backward_cuda", [&] {
        if (mixed) {
          launch_backward<scalar_t, float>(dy, x, m, s, w, dx, dw, db, shape.rows, shape.cols);
        } else {
          launch_backward<scalar_t, scalar_t>(dy, x, m, s, w, dx, dw, db, shape.rows, shape.cols);
        }
      });
  return {dx, dw, db};
}

}  // namespace

FASTDL_CUDA_KERNELS(m) {
  m.impl("layer_norm_forward", &layer_norm_forward_cuda);
  m.impl("layer_norm_backward", &layer_norm_backward_cuda);
}

}  // namespace fastdl
