// histogram CPU kernels: parallel over (bag, block of features), vectorised over bins. Each
// element x[b, i, f] is compared with all B bins of its feature at once (Vec<T> over k), the
// kernel values summed into a (features x bins) block that stays in L1: one pass over x, no
// (bags, N, F, B) tensor. Backward recomputes the kernel derivatives; the input gradient is a
// sum over bins, centre/width gradients go to per-thread buffers. float16/bfloat16 x (S) is
// computed in float (T = at::opmath_type<S>, common/cpu/half.h): each element is converted as
// it is read, centres and widths are read as float (a half table converted once), each
// feature's B sums and N input-gradient sums are kept in float and converted once; centre and
// width gradients are summed in float and returned in the parameters' dtype. For float/double
// (S = T) nothing is converted.
#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/tensors.h"
#include "fastdl/histogram/histogram.h"
#include "fastdl/histogram/histogram_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using cpu::compute_values;
using cpu::converted;
using cpu::row_out;
using cpu::row_target;
using cpu::RowBuffers;
using cpu::Vec;
using detail::HistogramKernel;
using detail::HistogramShape;

template <typename T>
Vec<T> vec_exp(const Vec<T>& z) {
  // Arguments are clamped where exp over/underflows anyway, so the fast polynomial of
  // exp_u20 (float) never sees values it does not handle.
  if constexpr (std::is_same_v<T, float>) {
    // exp_u20 does not handle NaN (it returns inf or garbage): cz - cz is 0, or NaN for a NaN,
    // so NaN propagates as in the reference.
    const Vec<T> cz = at::vec::clamp(z, Vec<T>(-87.f), Vec<T>(87.f));
    return cz.exp_u20() + (cz - cz);
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

// Per-bin constants of a vector of bins, computed once outside the loop over elements.
// Sigmoid: sig(s (d +- w/2)) = 1 / (1 + e * exp(-+ s w / 2)) with e = exp(-s d), so one exp per
// element serves both sigmoids; `one_exp` is false where exp(s w / 2) would be too large for
// that (very sharp or wide bins), and the two sigmoids are then evaluated separately.
template <typename T>
struct Bins {
  Vec<T> w;
  Vec<T> exp_minus;  // exp(-s w / 2)
  Vec<T> exp_plus;   // exp(+s w / 2)
  bool one_exp = false;
};

template <HistogramKernel K, typename T>
Bins<T> prepare_bins(const T* w, T s) {
  Bins<T> b;
  b.w = Vec<T>::loadu(w);
  if constexpr (K == HistogramKernel::Sigmoid) {
    const T limit = std::is_same_v<T, float> ? T(40) : T(300);
    T half[Vec<T>::size()];
    (b.w * Vec<T>(s / 2)).store(half);
    b.one_exp = std::all_of(half, half + Vec<T>::size(), [&](T h) { return h <= limit; });
    if (b.one_exp) {
      const Vec<T> h = Vec<T>::loadu(half);
      b.exp_minus = vec_exp<T>(Vec<T>(T(0)) - h);
      b.exp_plus = vec_exp<T>(h);
    }
  }
  return b;
}

// sig(s (d + w/2)) and sig(s (d - w/2)).
template <typename T>
void vec_sigmoid_pair(const Vec<T>& d, const Bins<T>& b, T s, Vec<T>& upper, Vec<T>& lower) {
  const Vec<T> one(T(1));
  if (b.one_exp) {
    const Vec<T> e = vec_exp<T>(Vec<T>(-s) * d);
    upper = one / (one + e * b.exp_minus);
    lower = one / (one + e * b.exp_plus);
  } else {
    const Vec<T> half_w = b.w * Vec<T>(T(0.5));
    upper = vec_sigmoid<T>(Vec<T>(s) * (d + half_w));
    lower = vec_sigmoid<T>(Vec<T>(s) * (d - half_w));
  }
}

// The vector form of detail::hist_value (histogram_math.h).
template <HistogramKernel K, typename T>
Vec<T> vec_value(const Vec<T>& d, const Bins<T>& b, T s) {
  const Vec<T>& w = b.w;
  if constexpr (K == HistogramKernel::Sigmoid) {
    Vec<T> upper, lower;
    vec_sigmoid_pair<T>(d, b, s, upper, lower);
    return upper - lower;
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
void vec_derivatives(const Vec<T>& d, const Bins<T>& b, T s, Vec<T>& dv_dd, Vec<T>& dv_dw) {
  const Vec<T> one(T(1)), zero(T(0));
  const Vec<T>& w = b.w;
  if constexpr (K == HistogramKernel::Sigmoid) {
    Vec<T> upper, lower;
    vec_sigmoid_pair<T>(d, b, s, upper, lower);
    const Vec<T> da = upper * (one - upper), db = lower * (one - lower);
    dv_dd = Vec<T>(s) * (da - db);
    dv_dw = Vec<T>(s / 2) * (da + db);
  } else if constexpr (K == HistogramKernel::Soft) {
    const Vec<T> ad = d.abs();
    const Vec<T> wad = w * ad;
    const Vec<T> active = (wad < one) | (wad != wad);  // NaN is active, as hist_derivatives
    // -w * sign(d), 0 at d == 0 (torch's d|d|/dd), without a multiply.
    const Vec<T> neg_w_sign = ((d > zero) & (zero - w)) | ((d < zero) & w);
    dv_dd = active & neg_w_sign;
    dv_dw = active & (zero - ad);
  } else if constexpr (K == HistogramKernel::Rbf) {
    const Vec<T> z = w * d;
    const Vec<T> v = vec_exp<T>(zero - z * z);
    const Vec<T> dv = d * v;           // v first, and 0 where v is 0, as hist_derivatives
    const Vec<T> nonzero = v != zero;  // all bits set where v is not 0 (NaN included)
    dv_dd = nonzero & (Vec<T>(T(-2)) * w * w * dv);
    dv_dw = nonzero & (Vec<T>(T(-2)) * z * dv);
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
  const int64_t for_threads =
      std::max<int64_t>(1, (s.bags * s.features + 2 * threads - 1) / (2 * threads));
  return std::max<int64_t>(
      1, std::min({s.features, by_cache, s.bags >= 2 * threads ? s.features : for_threads}));
}

// Bins are processed KV vectors at a time with their centres, widths and sums in registers,
// looping over the bag's elements for one feature (the bag's column of x stays in cache).

// out[k0 .. k0 + KV*L) of feature f of one bag: sums over its present elements.
template <typename T, HistogramKernel K, int KV, typename S>
void forward_bins(const S* xcol, int64_t n, int64_t stride, const bool* mask, const T* c,
                  const T* w, T sharpness, T* out) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> cv[KV], acc[KV];
  Bins<T> bins[KV];
  for (int j = 0; j < KV; ++j) {
    cv[j] = Vec<T>::loadu(c + j * L);
    bins[j] = prepare_bins<K, T>(w + j * L, sharpness);
    acc[j] = Vec<T>(T(0));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (mask && !mask[i]) continue;
    const Vec<T> xv(static_cast<T>(xcol[i * stride]));
    for (int j = 0; j < KV; ++j) acc[j] += vec_value<K, T>(xv - cv[j], bins[j], sharpness);
  }
  for (int j = 0; j < KV; ++j) acc[j].store(out + j * L);
}

template <typename S, HistogramKernel K, typename T = at::opmath_type<S>>
void forward_kernel(const HistogramShape& s, const S* x, const bool* mask, const T* centers,
                    const T* widths, const T* scale, T sharpness, S* out) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t F = s.features, B = s.bins, N = s.n;
  const int64_t pstride = s.shared_params ? 0 : B;
  const int64_t fb = feature_block(s, sizeof(T));
  const int64_t blocks = (F + fb - 1) / fb;
  at::parallel_for(0, s.bags * blocks, 1, [&](int64_t begin, int64_t end) {
    RowBuffers<T, S> sums(1, B);  // half: one feature's B sums in float
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bag = task / blocks, f0 = (task % blocks) * fb, f1 = std::min(F, f0 + fb);
      const bool* bag_mask = mask ? mask + bag * N : nullptr;
      for (int64_t f = f0; f < f1; ++f) {
        const S* xcol = x + bag * N * F + f;
        const T* c = centers + f * pstride;
        const T* w = widths + f * pstride;
        T* o = row_target(out, bag * F + f, B, sums.row(0));
        int64_t k = 0;
        for (; k + 4 * L <= B; k += 4 * L)
          forward_bins<T, K, 4>(xcol, N, F, bag_mask, c + k, w + k, sharpness, o + k);
        for (; k + L <= B; k += L)
          forward_bins<T, K, 1>(xcol, N, F, bag_mask, c + k, w + k, sharpness, o + k);
        for (; k < B; ++k) {
          T sum = 0;
          for (int64_t i = 0; i < N; ++i) {
            if (!bag_mask || bag_mask[i])
              sum += detail::hist_value<K, T>(static_cast<T>(xcol[i * F]) - c[k], w[k], sharpness);
          }
          o[k] = sum;
        }
        for (k = 0; k < B; ++k) o[k] *= scale[bag];
        row_out(o, out, bag * F + f, B);
      }
    }
  });
}

// Bins [k0, k0 + KV*L) of feature f of one bag: adds each present element's share to
// grad_x (a column with stride gx_stride) and this thread's centre/width gradient rows.
template <typename T, HistogramKernel K, int KV, typename S>
void backward_bins(const S* xcol, int64_t n, int64_t stride, const bool* mask, const T* c,
                   const T* w, const T* g, T sharpness, T* gxcol, int64_t gx_stride, T* gc, T* gw) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> cv[KV], gv[KV], gc_acc[KV], gw_acc[KV];
  Bins<T> bins[KV];
  for (int j = 0; j < KV; ++j) {
    cv[j] = Vec<T>::loadu(c + j * L);
    bins[j] = prepare_bins<K, T>(w + j * L, sharpness);
    gv[j] = Vec<T>::loadu(g + j * L);
    gc_acc[j] = Vec<T>(T(0));
    gw_acc[j] = Vec<T>(T(0));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (mask && !mask[i]) continue;
    const Vec<T> xv(static_cast<T>(xcol[i * stride]));
    Vec<T> gx(T(0));
    for (int j = 0; j < KV; ++j) {
      Vec<T> dd, dw;
      vec_derivatives<K, T>(xv - cv[j], bins[j], sharpness, dd, dw);
      const Vec<T> g_dd = gv[j] * dd;
      gx += g_dd;
      gc_acc[j] -= g_dd;
      gw_acc[j] += gv[j] * dw;
    }
    if (gxcol) gxcol[i * gx_stride] += cpu::horizontal_sum(gx);
  }
  if (gc) {
    for (int j = 0; j < KV; ++j) {
      (Vec<T>::loadu(gc + j * L) + gc_acc[j]).store(gc + j * L);
      (Vec<T>::loadu(gw + j * L) + gw_acc[j]).store(gw + j * L);
    }
  }
}

template <typename S, HistogramKernel K, typename T = at::opmath_type<S>>
void backward_kernel(const HistogramShape& s, const S* grad_out, const S* x, const bool* mask,
                     const T* centers, const T* widths, const T* scale, T sharpness, S* grad_x,
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
    std::vector<T> g(B);  // grad_out of one feature, times the bag's scale
    // Half: one feature's column of grad_x summed in float (stride 1), converted at the end.
    RowBuffers<T, S> gx_sums(1, grad_x ? N : 0);
    const int64_t gx_stride = std::is_same_v<S, T> ? F : 1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bag = task / blocks, f0 = (task % blocks) * fb, f1 = std::min(F, f0 + fb);
      const bool* bag_mask = mask ? mask + bag * N : nullptr;
      for (int64_t f = f0; f < f1; ++f) {
        for (int64_t k = 0; k < B; ++k) {
          g[k] = static_cast<T>(grad_out[(bag * F + f) * B + k]) * scale[bag];
        }
        const S* xcol = x + bag * N * F + f;
        T* gxcol = nullptr;
        if (grad_x) {
          if constexpr (std::is_same_v<S, T>) {
            gxcol = grad_x + bag * N * F + f;
          } else {
            gxcol = gx_sums.row(0);
          }
          for (int64_t i = 0; i < N; ++i) gxcol[i * gx_stride] = T(0);  // absent elements stay 0
        }
        const T* c = centers + f * pstride;
        const T* w = widths + f * pstride;
        T* gcf = gc ? gc + f * pstride : nullptr;
        T* gwf = gw ? gw + f * pstride : nullptr;
        int64_t k = 0;
        for (; k + 4 * L <= B; k += 4 * L) {
          backward_bins<T, K, 4>(xcol, N, F, bag_mask, c + k, w + k, g.data() + k, sharpness, gxcol,
                                 gx_stride, gcf ? gcf + k : nullptr, gwf ? gwf + k : nullptr);
        }
        for (; k + L <= B; k += L) {
          backward_bins<T, K, 1>(xcol, N, F, bag_mask, c + k, w + k, g.data() + k, sharpness, gxcol,
                                 gx_stride, gcf ? gcf + k : nullptr, gwf ? gwf + k : nullptr);
        }
        for (; k < B; ++k) {
          for (int64_t i = 0; i < N; ++i) {
            if (bag_mask && !bag_mask[i]) continue;
            T dd, dw;
            detail::hist_derivatives<K, T>(static_cast<T>(xcol[i * F]) - c[k], w[k], sharpness, dd,
                                           dw);
            if (gxcol) gxcol[i * gx_stride] += g[k] * dd;
            if (gcf) {
              gcf[k] -= g[k] * dd;
              gwf[k] += g[k] * dw;
            }
          }
        }
        if constexpr (!std::is_same_v<S, T>) {
          if (grad_x) {
            S* out = grad_x + bag * N * F + f;
            for (int64_t i = 0; i < N; ++i) out[i * F] = static_cast<S>(gxcol[i]);
          }
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
  const auto s = detail::check_histogram(x, centers, widths, kernel, mask, sharpness);
  const auto x3 = as_bags(x, s);
  const auto c = centers.contiguous(), w = widths.contiguous();
  const auto m = contiguous_or_undefined(mask);
  const auto scale = detail::histogram_bag_scale(x3, mask, s, normalize);
  auto out = at::empty({s.bags, s.features, s.bins}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "histogram_forward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        // Centres and widths in T (a half table converted): half precision would blur the bins.
        std::vector<T> c_values, w_values;
        const T* cp = compute_values(c, c_values);
        const T* wp = compute_values(w, w_values);
        detail::dispatch_histogram_kernel(s.kernel, [&]<HistogramKernel K>() {
          forward_kernel<scalar_t, K>(s, x3.const_data_ptr<scalar_t>(), data_or_null<bool>(m), cp,
                                      wp, scale.const_data_ptr<T>(), static_cast<T>(sharpness),
                                      out.mutable_data_ptr<scalar_t>());
        });
      });
  return s.batched ? out : out.squeeze(0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& centers,
    const at::Tensor& widths, c10::string_view kernel, const std::optional<at::Tensor>& mask,
    bool normalize, double sharpness, std::array<bool, 3> output_mask) {
  const auto s = detail::check_histogram(x, centers, widths, kernel, mask, sharpness);
  detail::check_histogram_grad(grad_output, x, s);
  const auto x3 = as_bags(x, s);
  const auto go = grad_output.reshape({s.bags, s.features, s.bins}).contiguous();
  const auto c = centers.contiguous(), w = widths.contiguous();
  const auto m = contiguous_or_undefined(mask);
  const auto scale = detail::histogram_bag_scale(x3, mask, s, normalize);
  at::Tensor gx, gc, gw;
  if (output_mask[0]) gx = at::empty({s.bags, s.n, s.features}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "histogram_backward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        // Centre and width gradients summed in T; a half parameter's are converted at the end.
        const auto sums = c.options().dtype(c10::CppTypeToScalarType<T>::value);
        if (output_mask[1]) gc = at::zeros(c.sizes(), sums);
        if (output_mask[2]) gw = at::zeros(w.sizes(), sums);
        std::vector<T> c_values, w_values;
        const T* cp = compute_values(c, c_values);
        const T* wp = compute_values(w, w_values);
        detail::dispatch_histogram_kernel(s.kernel, [&]<HistogramKernel K>() {
          backward_kernel<scalar_t, K>(s, go.const_data_ptr<scalar_t>(),
                                       x3.const_data_ptr<scalar_t>(), data_or_null<bool>(m), cp, wp,
                                       scale.const_data_ptr<T>(), static_cast<T>(sharpness),
                                       mutable_data_or_null<scalar_t>(gx),
                                       mutable_data_or_null<T>(gc), mutable_data_or_null<T>(gw));
        });
        gc = converted(gc, c.scalar_type());
        gw = converted(gw, w.scalar_type());
      });
  if (gx.defined()) gx = gx.view(x.sizes());
  return {gx, gc, gw};
}

}  // namespace

FASTDL_CPU_KERNELS(histogram, m) {
  m.impl("histogram_forward", &histogram_forward_cpu);
  m.impl("histogram_backward", &histogram_backward_cpu);
}

}  // namespace fastdl::CPU_CAPABILITY
