// layer_norm CPU kernels: parallel over rows, vectorised along each row. Forward is two-pass
// per row (the row stays in cache); backward computes the input gradient row by row and
// accumulates the weight/bias gradients in per-thread buffers. float16/bfloat16 inputs (S)
// are computed in float (common/cpu/half.h): each row is converted into a per-task float
// buffer, computed by the same code, and the result converted back; the statistics and the
// parameter gradients' sums stay float.
#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/tensors.h"
#include "fastdl/norm/layer_norm.h"
#include "fastdl/norm/norm_params.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using cpu::Vec;

using cpu::compute_values;
using cpu::converted;
using cpu::row_in;
using cpu::row_out;
using cpu::row_target;
using cpu::RowBuffers;

template <typename S, typename T = at::opmath_type<S>>
void forward_kernel(const S* x, const T* weight, const T* bias, S* y, T* mean_out, T* rstd_out,
                    int64_t rows, int64_t cols, double eps) {
  constexpr int64_t L = Vec<T>::size();
  at::parallel_for(0, rows, cpu::grain(cols), [&](int64_t begin, int64_t end) {
    RowBuffers<T, S> buffers(2, cols);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = row_in(x, r, cols, buffers.row(0));
      T* yr = row_target(y, r, cols, buffers.row(1));
      auto [mean, var] = cpu::mean_var(xr, cols);
      T rstd = T(1) / std::sqrt(std::max(var, T(0)) + T(eps));
      if constexpr (std::is_same_v<T, float>) {
        if (!std::isfinite(var)) {
          // Squares past float's range (|x| ~ 1e20 and more): the row's statistics in double,
          // as rstd still is a float. An inf or NaN in the row stays NaN.
          double m = 0, v = 0;
          for (int64_t i = 0; i < cols; ++i) m += xr[i];
          m /= static_cast<double>(cols);
          for (int64_t i = 0; i < cols; ++i) v += (xr[i] - m) * (xr[i] - m);
          v /= static_cast<double>(cols);
          mean = static_cast<T>(m);
          rstd = static_cast<T>(1.0 / std::sqrt(std::max(v, 0.0) + eps));
        }
      }
      mean_out[r] = mean;
      rstd_out[r] = rstd;
      // y = (x - mean) * rstd * w + b; subtracting first keeps constant rows exact.
      const Vec<T> mean_v(mean), rstd_v(rstd);
      int64_t i = 0;
      if (weight && bias) {
        for (; i + L <= cols; i += L) {
          const auto v = (Vec<T>::loadu(xr + i) - mean_v) * rstd_v;
          at::vec::fmadd(v, Vec<T>::loadu(weight + i), Vec<T>::loadu(bias + i)).store(yr + i);
        }
      } else {
        for (; i + L <= cols; i += L) {
          auto v = (Vec<T>::loadu(xr + i) - mean_v) * rstd_v;
          if (weight) v = v * Vec<T>::loadu(weight + i);
          if (bias) v = v + Vec<T>::loadu(bias + i);
          v.store(yr + i);
        }
      }
      for (; i < cols; ++i) {
        T v = (xr[i] - mean) * rstd;
        if (weight) v *= weight[i];
        if (bias) v += bias[i];
        yr[i] = v;
      }
      row_out(yr, y, r, cols);
    }
  });
}

template <typename S, typename T = at::opmath_type<S>>
void backward_kernel(const S* dy, const S* x, const T* mean, const T* rstd, const T* weight, S* dx,
                     T* dweight, T* dbias, int64_t rows, int64_t cols) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t threads = at::get_num_threads();
  cpu::ThreadColumnSums<T> dweight_parts(dweight ? cols : 0, threads);
  cpu::ThreadColumnSums<T> dbias_parts(dbias ? cols : 0, threads);
  const T inv_cols = cols > 0 ? T(1) / T(cols) : T(0);

  at::parallel_for(0, rows, cpu::grain(cols), [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    T* dw_acc = dweight ? dweight_parts.row(tid) : nullptr;
    T* db_acc = dbias ? dbias_parts.row(tid) : nullptr;
    RowBuffers<T, S> buffers(3, cols);
    for (int64_t r = begin; r < end; ++r) {
      const T* dyr = row_in(dy, r, cols, buffers.row(0));
      const T* xr = row_in(x, r, cols, buffers.row(1));
      const T m = mean[r];
      const T s = rstd[r];
      // g = dy * w, xhat = (x - m) * s; dx = s * (g - mean(g) - xhat * mean(g * xhat)).
      T mean_g = 0, mean_gx = 0;
      if (dx) {
        Vec<T> sum_g(T(0)), sum_gx(T(0));
        int64_t i = 0;
        for (; i + L <= cols; i += L) {
          auto g = Vec<T>::loadu(dyr + i);
          if (weight) g = g * Vec<T>::loadu(weight + i);
          const auto xhat = (Vec<T>::loadu(xr + i) - Vec<T>(m)) * Vec<T>(s);
          sum_g += g;
          sum_gx += g * xhat;
        }
        T a = cpu::horizontal_sum(sum_g), b = cpu::horizontal_sum(sum_gx);
        for (; i < cols; ++i) {
          const T g = weight ? dyr[i] * weight[i] : dyr[i];
          a += g;
          b += g * (xr[i] - m) * s;
        }
        mean_g = a * inv_cols;
        mean_gx = b * inv_cols;
      }
      // One more pass writes dx and accumulates this thread's weight/bias gradient sums.
      T* dxr = dx ? row_target(dx, r, cols, buffers.row(2)) : nullptr;
      int64_t i = 0;
      for (; i + L <= cols; i += L) {
        const auto d = Vec<T>::loadu(dyr + i);
        const auto xhat = (Vec<T>::loadu(xr + i) - Vec<T>(m)) * Vec<T>(s);
        if (dxr) {
          const auto g = weight ? d * Vec<T>::loadu(weight + i) : d;
          (Vec<T>(s) * (g - Vec<T>(mean_g) - xhat * Vec<T>(mean_gx))).store(dxr + i);
        }
        if (dw_acc) (Vec<T>::loadu(dw_acc + i) + d * xhat).store(dw_acc + i);
        if (db_acc) (Vec<T>::loadu(db_acc + i) + d).store(db_acc + i);
      }
      for (; i < cols; ++i) {
        const T xhat = (xr[i] - m) * s;
        if (dxr) {
          const T g = weight ? dyr[i] * weight[i] : dyr[i];
          dxr[i] = s * (g - mean_g - xhat * mean_gx);
        }
        if (dw_acc) dw_acc[i] += dyr[i] * xhat;
        if (db_acc) db_acc[i] += dyr[i];
      }
      if (dxr) row_out(dxr, dx, r, cols);
    }
  });
  if (dweight) dweight_parts.sum_into(dweight);
  if (dbias) dbias_parts.sum_into(dbias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward_cpu(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  const auto shape = detail::check_layer_norm_forward(input, normalized_shape, weight, bias, eps);
  const auto x = input.contiguous();
  const auto w = contiguous_or_undefined(weight);
  const auto b = contiguous_or_undefined(bias);
  auto output = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto stats_shape = detail::layer_norm_stats_shape(x, normalized_shape.size());
  at::Tensor mean, rstd;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "layer_norm_forward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        mean = at::empty(stats_shape, x.options().dtype(c10::CppTypeToScalarType<T>::value));
        rstd = at::empty(stats_shape, mean.options());
        std::vector<T> w_values, b_values;
        forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), compute_values(w, w_values),
                                 compute_values(b, b_values), output.mutable_data_ptr<scalar_t>(),
                                 mean.mutable_data_ptr<T>(), rstd.mutable_data_ptr<T>(), shape.rows,
                                 shape.cols, eps);
      });
  return {output, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    std::array<bool, 3> output_mask) {
  const auto shape =
      detail::check_layer_norm_backward(grad_output, input, normalized_shape, mean, rstd, weight);
  const auto dy = grad_output.contiguous();
  const auto x = input.contiguous();
  const auto m = mean.contiguous();
  const auto s = rstd.contiguous();
  const auto w = contiguous_or_undefined(weight);
  at::Tensor dx, dw, db;
  if (output_mask[0]) dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto [weight_dtype, bias_dtype] = detail::norm_param_grad_dtypes(x, w);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "layer_norm_backward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        // The parameter gradients are summed in T; a half weight's are converted at the end.
        const auto sums = x.options().dtype(c10::CppTypeToScalarType<T>::value);
        if (output_mask[1] && w.defined()) dw = at::empty(normalized_shape, sums);
        if (output_mask[2]) db = at::empty(normalized_shape, sums);
        std::vector<T> w_values;
        backward_kernel<scalar_t>(
            dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), m.const_data_ptr<T>(),
            s.const_data_ptr<T>(), compute_values(w, w_values), mutable_data_or_null<scalar_t>(dx),
            mutable_data_or_null<T>(dw), mutable_data_or_null<T>(db), shape.rows, shape.cols);
        dw = converted(dw, weight_dtype);
        db = converted(db, bias_dtype);
      });
  return {dx, dw, db};
}

}  // namespace

FASTDL_CPU_KERNELS(layer_norm, m) {
  m.impl("layer_norm_forward", &layer_norm_forward_cpu);
  m.impl("layer_norm_backward", &layer_norm_backward_cpu);
}

}  // namespace fastdl::CPU_CAPABILITY
