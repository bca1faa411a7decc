// histogram CPU kernels: parallel over (bag, block of features), vectorised over bins. Each
// element x[b, i, f] is compared with all B bins of its feature at once (Vec<T> over k), the
// kernel values summed into a (features x bins) block that stays in L1: one pass over x, no
// (bags, N, F, B) tensor. Backward recomputes the kernel derivatives; the input gradient is a
// sum over bins, centre/width gradients go to per-thread buffers.
#include "fastdl/common/cpu_vec.h"
#include "fastdl/common/tensors.h"
#include "fastdl/histogram/histogram.h"
#include "fastdl/histogram/histogram_math.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace fastdl {
namespace {

using cpu::Vec;
using detail::HistogramKernel;
using detail::HistogramShape;

template <typename T>
Vec<T> vec_exp(const Vec<T>& z) {
  // Arguments are clamped where exp over/underflows anyway, so the fast polynomial of
  // exp_u20 (float) never sees values it does not handle.
  if constexpr (std::is_same_v<T, float>) {
    return at::vec::clamp(z, Vec<T>(-87.f), Vec<T>(87.f)).exp_u20();
  } else {
    return at::vec::clamp(z, Vec<T>(-700.0), Vec<T>(700.0)).exp();
  }
}

template <typename T>
Vec<T> vec_sigmoid(const Vec<T>& z) {
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + vec_exp<T>(Vec<T>(T(0)) - z));
}

template <typename T>
Vec<T> vec_sign(const Vec<T>& d) {
  const Vec<T> one(T(1)), zero(T(0));
  return ((d > zero) & one) - ((d < zero) & one);
}

// The vector form of detail::hist_value (histogram_math.h).
template <HistogramKernel K, typename T>
Vec<T> vec_value(const Vec<T>& d, const Vec<T>& w, T s) {
  if constexpr (K == HistogramKernel::Sigmoid) {
    const Vec<T> half_w = w * Vec<T>(T(0.5));
    return vec_sigmoid<T>(Vec<T>(s) * (d + half_w)) - vec_sigmoid<T>(Vec<T>(s) * (d - half_w));
  } else if constexpr (K == HistogramKernel::Soft) {
    return at::vec::maximum(Vec<T>(T(1)) - w * d.abs(), Vec<T>(T(0)));
  } else if constexpr (K == HistogramKernel::Rbf) {
    const Vec<T> z = w * d;
    return vec_exp<T>(Vec<T>(T(0)) - z * z);
  } else {
    return (d.abs() < w) & Vec<T>(T(1));
  }
}

// The vector form of detail::hist_derivatives.
template <HistogramKernel K, typename T>
void vec_derivatives(const Vec<T>& d, const Vec<T>& w, T s, Vec<T>& dv_dd, Vec<T>& dv_dw) {
  const Vec<T> one(T(1)), zero(T(0));
  if constexpr (K == HistogramKernel::Sigmoid) {
    const Vec<T> half_w = w * Vec<T>(T(0.5));
    const Vec<T> a = vec_sigmoid<T>(Vec<T>(s) * (d + half_w));
    const Vec<T> b = vec_sigmoid<T>(Vec<T>(s) * (d - half_w));
    const Vec<T> da = a * (one - a), db = b * (one - b);
    dv_dd = Vec<T>(s) * (da - db);
    dv_dw = Vec<T>(s / 2) * (da + db);
  } else if constexpr (K == HistogramKernel::Soft) {
    const Vec<T> active = (one - w * d.abs()) > zero;
    dv_dd = active & (zero - w * vec_sign<T>(d));
    dv_dw = active & (zero - d.abs());
  } else if constexpr (K == HistogramKernel::Rbf) {
    const Vec<T> z = w * d;
    const Vec<T> v = vec_exp<T>(zero - z * z);
    dv_dd = Vec<T>(T(-2)) * w * z * v;
    dv_dw = Vec<T>(T(-2)) * z * d * v;
  } else {
    const Vec<T> ad = d.abs();
    const Vec<T> log_base(static_cast<T>(detail::kHardSurrogateLog));
    const Vec<T> g = (ad < w) & (vec_exp<T>((w - ad) * log_base) * log_base);
    dv_dd = zero - g * vec_sign<T>(d);
    dv_dw = g;
  }
}

// Features per task: a block of feature x bin accumulators of ~16 KiB, and enough tasks.
int64_t feature_block(const HistogramShape& s, int64_t elem_size) {
  const int64_t by_cache = std::max<int64_t>(1, 16384 / (s.bins * elem_size));
  const int64_t threads = at::get_num_threads();
  const int64_t for_threads = std::max<int64_t>(1, (s.bags * s.features + 2 * threads - 1) / (2 * threads));
  return std::max<int64_t>(1, std::min({s.features, by_cache, s.bags >= 2 * threads ? s.features : for_threads}));
}

template <typename T, HistogramKernel K>
void forward_kernel(const HistogramShape& s, const T* x, const bool* mask, const T* centers,
                    const T* widths, const T* scale, T sharpness, T* out) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t F = s.features, B = s.bins, N = s.n;
  const int64_t pstride = s.shared_params ? 0 : B;
  const int64_t fb = feature_block(s, sizeof(T));
  const int64_t blocks = (F + fb - 1) / fb;
  at::parallel_for(0, s.bags * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(fb * B);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bag = task / blocks, f0 = (task % blocks) * fb, f1 = std::min(F, f0 + fb);
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t i = 0; i < N; ++i) {
        if (mask && !mask[bag * N + i]) continue;
        const T* xr = x + (bag * N + i) * F;
        for (int64_t f = f0; f < f1; ++f) {
          const T* c = centers + f * pstride;
          const T* w = widths + f * pstride;
          T* a = acc.data() + (f - f0) * B;
          const Vec<T> xv(xr[f]);
          int64_t k = 0;
          for (; k + L <= B; k += L) {
            const Vec<T> v = vec_value<K, T>(xv - Vec<T>::loadu(c + k), Vec<T>::loadu(w + k), sharpness);
            (Vec<T>::loadu(a + k) + v).store(a + k);
          }
          for (; k < B; ++k) a[k] += detail::hist_value<K, T>(xr[f] - c[k], w[k], sharpness);
        }
      }
      for (int64_t f = f0; f < f1; ++f) {
        for (int64_t k = 0; k < B; ++k) out[(bag * F + f) * B + k] = acc[(f - f0) * B + k] * scale[bag];
      }
    }
  });
}

template <typename T, HistogramKernel K>
void backward_kernel(const HistogramShape& s, const T* grad_out, const T* x, const bool* mask,
                     const T* centers, const T* widths, const T* scale, T sharpness, T* grad_x,
                     T* grad_centers, T* grad_widths) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t F = s.features, B = s.bins, N = s.n;
  const int64_t pstride = s.shared_params ? 0 : B;
  const int64_t param_cols = (s.shared_params ? 1 : F) * B;
  const bool param_grads = grad_centers || grad_widths;
  const int64_t threads = at::get_num_threads();
  cpu::ThreadColumnSums<T> centers_parts(param_grads ? param_cols : 0, threads);
  cpu::ThreadColumnSums<T> widths_parts(param_grads ? param_cols : 0, threads);
  const int64_t fb = feature_block(s, sizeof(T));
  const int64_t blocks = (F + fb - 1) / fb;
  at::parallel_for(0, s.bags * blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    T* gc = param_grads ? centers_parts.row(tid) : nullptr;
    T* gw = param_grads ? widths_parts.row(tid) : nullptr;
    std::vector<T> g(fb * B);  // grad_out of the block, times the bag's scale
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bag = task / blocks, f0 = (task % blocks) * fb, f1 = std::min(F, f0 + fb);
      for (int64_t f = f0; f < f1; ++f) {
        for (int64_t k = 0; k < B; ++k) g[(f - f0) * B + k] = grad_out[(bag * F + f) * B + k] * scale[bag];
      }
      for (int64_t i = 0; i < N; ++i) {
        const bool present = !mask || mask[bag * N + i];
        const T* xr = x + (bag * N + i) * F;
        for (int64_t f = f0; f < f1; ++f) {
          if (!present) {
            if (grad_x) grad_x[(bag * N + i) * F + f] = T(0);
            continue;
          }
          const T* c = centers + f * pstride;
          const T* w = widths + f * pstride;
          const T* gf = g.data() + (f - f0) * B;
          T* gcf = gc ? gc + f * pstride : nullptr;
          T* gwf = gw ? gw + f * pstride : nullptr;
          const Vec<T> xv(xr[f]);
          Vec<T> gx_vec(T(0));
          int64_t k = 0;
          for (; k + L <= B; k += L) {
            Vec<T> dd, dw;
            vec_derivatives<K, T>(xv - Vec<T>::loadu(c + k), Vec<T>::loadu(w + k), sharpness, dd, dw);
            const Vec<T> gk = Vec<T>::loadu(gf + k);
            const Vec<T> g_dd = gk * dd;
            gx_vec += g_dd;
            if (gcf) {
              (Vec<T>::loadu(gcf + k) - g_dd).store(gcf + k);
              (Vec<T>::loadu(gwf + k) + gk * dw).store(gwf + k);
            }
          }
          T gx = cpu::horizontal_sum(gx_vec);
          for (; k < B; ++k) {
            T dd, dw;
            detail::hist_derivatives<K, T>(xr[f] - c[k], w[k], sharpness, dd, dw);
            gx += gf[k] * dd;
            if (gcf) {
              gcf[k] -= gf[k] * dd;
              gwf[k] += gf[k] * dw;
            }
          }
          if (grad_x) grad_x[(bag * N + i) * F + f] = gx;
        }
      }
    }
  });
  if (grad_centers) centers_parts.sum_into(grad_centers);
  if (grad_widths) widths_parts.sum_into(grad_widths);
}

// x as a contiguous (bags, N, F) tensor.
at::Tensor as_bags(const at::Tensor& x, const HistogramShape& s) {
  return x.reshape({s.bags, s.n, s.features}).contiguous();
}

at::Tensor histogram_forward_cpu(const at::Tensor& x, const at::Tensor& centers,
                                 const at::Tensor& widths, c10::string_view kernel,
                                 const std::optional<at::Tensor>& mask, bool normalize,
                                 double sharpness) {
  const auto s = detail::check_histogram(x, centers, widths, kernel, mask);
  const auto x3 = as_bags(x, s);
  const auto c = centers.contiguous(), w = widths.contiguous();
  const auto m = mask.has_value() && mask->defined() ? mask->contiguous() : at::Tensor();
  const auto scale = detail::histogram_bag_scale(x3, mask, s, normalize);
  auto out = at::empty({s.bags, s.features, s.bins}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "histogram_forward_cpu", [&] {
    detail::dispatch_histogram_kernel(s.kernel, [&]<HistogramKernel K>() {
      forward_kernel<scalar_t, K>(s, x3.const_data_ptr<scalar_t>(), data_or_null<bool>(m),
                                  c.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                  scale.const_data_ptr<scalar_t>(), static_cast<scalar_t>(sharpness),
                                  out.mutable_data_ptr<scalar_t>());
    });
  });
  return s.batched ? out : out.squeeze(0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& centers,
    const at::Tensor& widths, c10::string_view kernel, const std::optional<at::Tensor>& mask,
    bool normalize, double sharpness, std::array<bool, 3> output_mask) {
  const auto s = detail::check_histogram(x, centers, widths, kernel, mask);
  detail::check_histogram_grad(grad_output, x, s);
  const auto x3 = as_bags(x, s);
  const auto go = grad_output.reshape({s.bags, s.features, s.bins}).contiguous();
  const auto c = centers.contiguous(), w = widths.contiguous();
  const auto m = mask.has_value() && mask->defined() ? mask->contiguous() : at::Tensor();
  const auto scale = detail::histogram_bag_scale(x3, mask, s, normalize);
  at::Tensor gx, gc, gw;
  if (output_mask[0]) gx = at::empty({s.bags, s.n, s.features}, x.options());
  if (output_mask[1]) gc = at::zeros_like(c);
  if (output_mask[2]) gw = at::zeros_like(w);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "histogram_backward_cpu", [&] {
    detail::dispatch_histogram_kernel(s.kernel, [&]<HistogramKernel K>() {
      backward_kernel<scalar_t, K>(s, go.const_data_ptr<scalar_t>(), x3.const_data_ptr<scalar_t>(),
                                   data_or_null<bool>(m), c.const_data_ptr<scalar_t>(),
                                   w.const_data_ptr<scalar_t>(), scale.const_data_ptr<scalar_t>(),
                                   static_cast<scalar_t>(sharpness), mutable_data_or_null<scalar_t>(gx),
                                   mutable_data_or_null<scalar_t>(gc), mutable_data_or_null<scalar_t>(gw));
    });
  });
  if (gx.defined()) gx = gx.view(x.sizes());
  return {gx, gc, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("histogram_forward", &histogram_forward_cpu);
  m.impl("histogram_backward", &histogram_backward_cpu);
}

}  // namespace fastdl
