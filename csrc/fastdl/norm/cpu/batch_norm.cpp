// batch_norm CPU kernels. The input is seen as [outer, C, inner] (NC* layouts: outer = N,
// inner = spatial; channels-last and (N, C): inner = 1), and everything reduces to two
// layout-generic passes:
//   channel_sums:   per channel, sum_i f(a_i, b_i, p_c) for two functions at once;
//   channel_affine: out_i = (a_i - sa_c) * k1_c + (b_i - sb_c) * k2_c + k3_c (x centred by the
//                   mean: batch_norm_math.h).
// Forward = statistics (one pass of shifted sums) + affine; backward = sums of dy and
// dy * (x - mean) + affine. Parallel over channels when the inner run is long, over rows with
// per-thread accumulators otherwise; vectorised along the contiguous dim. float16/bfloat16
// data (S) is read and written as float (T, common/cpu/half.h): statistics, coefficients and
// sums stay float (double for the sums), as torch's.
#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/tensors.h"
#include "fastdl/norm/batch_norm.h"
#include "fastdl/norm/norm_params.h"
#include "fastdl/norm/batch_norm_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using cpu::compute_values;
using cpu::load_as;
using cpu::store_as;
using cpu::Vec;
using detail::BatchNormShape;

// Inner runs at least this long are reduced per channel; shorter ones row by row.
constexpr int64_t kPlanarMinInner = 16;
// Rows summed in T before flushing into the double accumulators (bounds rounding growth).
constexpr int64_t kFlushRows = 64;

// sums1[c] = sum f1(a, b, p[c]), sums2[c] = sum f2(a, b, p[c]) over the channel's elements.
// f(Vec a, Vec b, Vec p) and f(T a, T b, T p) both return (value1, value2).
template <typename T, typename S, typename F>
void channel_sums(const BatchNormShape& s, const S* a, const S* b, const T* p, double* sums1,
                  double* sums2, const F& f) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t C = s.channels, inner = s.inner, outer = s.outer;
  if (inner >= kPlanarMinInner) {
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double t1 = 0, t2 = 0;
        const Vec<T> pv(p[c]);
        for (int64_t o = 0; o < outer; ++o) {
          const int64_t base = (o * C + c) * inner;
          int64_t i = 0;
          // At most kFlushRows vectors summed in T, then into the doubles: a plane of a
          // million values summed whole in float32 lost ~1e-3 of its mean.
          while (i + L <= inner) {
            const int64_t stop = std::min(inner, i + kFlushRows * L);
            Vec<T> v1(T(0)), v2(T(0));
            for (; i + L <= stop; i += L) {
              const auto [x1, x2] = f(load_as<T>(a + base + i), load_as<T>(b + base + i), pv);
              v1 += x1;
              v2 += x2;
            }
            t1 += cpu::horizontal_sum(v1);
            t2 += cpu::horizontal_sum(v2);
          }
          T r1 = 0, r2 = 0;
          for (; i < inner; ++i) {
            const auto [x1, x2] = f(T(a[base + i]), T(b[base + i]), p[c]);
            r1 += x1;
            r2 += x2;
          }
          t1 += r1;
          t2 += r2;
        }
        sums1[c] = t1;
        sums2[c] = t2;
      }
    });
    return;
  }
  // Row-wise: a row is one outer index, R = C * inner contiguous values; element j of a row
  // belongs to channel j / inner.
  const int64_t R = C * inner;
  std::vector<T> p_row(R);
  for (int64_t j = 0; j < R; ++j) p_row[j] = p[j / inner];
  const int64_t threads = at::get_num_threads();
  cpu::ThreadColumnSums<double> part1(R, threads), part2(R, threads);
  at::parallel_for(0, outer, std::max<int64_t>(1, 4096 / std::max<int64_t>(R, 1)),
                   [&](int64_t begin, int64_t end) {
                     const int64_t tid = at::get_thread_num();
                     double* acc1 = part1.row(tid);
                     double* acc2 = part2.row(tid);
                     std::vector<T> blk1(R), blk2(R);
                     for (int64_t o0 = begin; o0 < end; o0 += kFlushRows) {
                       std::fill(blk1.begin(), blk1.end(), T(0));
                       std::fill(blk2.begin(), blk2.end(), T(0));
                       for (int64_t o = o0; o < std::min(end, o0 + kFlushRows); ++o) {
                         const S* ar = a + o * R;
                         const S* br = b + o * R;
                         int64_t j = 0;
                         for (; j + L <= R; j += L) {
                           const auto [x1, x2] = f(load_as<T>(ar + j), load_as<T>(br + j),
                                                   Vec<T>::loadu(p_row.data() + j));
                           (Vec<T>::loadu(blk1.data() + j) + x1).store(blk1.data() + j);
                           (Vec<T>::loadu(blk2.data() + j) + x2).store(blk2.data() + j);
                         }
                         for (; j < R; ++j) {
                           const auto [x1, x2] = f(T(ar[j]), T(br[j]), p_row[j]);
                           blk1[j] += x1;
                           blk2[j] += x2;
                         }
                       }
                       for (int64_t j = 0; j < R; ++j) {
                         acc1[j] += blk1[j];
                         acc2[j] += blk2[j];
                       }
                     }
                   });
  std::vector<double> row1(R), row2(R);
  part1.sum_into(row1.data());
  part2.sum_into(row2.data());
  for (int64_t c = 0; c < C; ++c) {
    double t1 = 0, t2 = 0;
    for (int64_t i = 0; i < inner; ++i) {
      t1 += row1[c * inner + i];
      t2 += row2[c * inner + i];
    }
    sums1[c] = t1;
    sums2[c] = t2;
  }
}

// out[0..n) = (a - sa) * k1 + (b - sb) * k2 + k3 with per-element coefficient arrays (a
// pointer) or per-run scalars broadcast (a T); b may be null. Split on b so the loop has no
// branch.
template <typename T, typename S, typename SA, typename K1, typename SB, typename K2, typename K3>
inline void affine_run(const S* a, const SA& sa, const S* b, const SB& sb, const K1& k1,
                       const K2& k2, const K3& k3, S* out, int64_t n) {
  constexpr int64_t L = Vec<T>::size();
  auto coef = [](const auto& k, int64_t i) {
    if constexpr (std::is_pointer_v<std::decay_t<decltype(k)>>)
      return Vec<T>::loadu(k + i);
    else
      return Vec<T>(k);
  };
  auto scalar = [](const auto& k, int64_t i) {
    if constexpr (std::is_pointer_v<std::decay_t<decltype(k)>>)
      return k[i];
    else
      return k;
  };
  int64_t i = 0;
  if (b) {
    for (; i + L <= n; i += L) {
      const auto bk = at::vec::fmadd(load_as<T>(b + i) - coef(sb, i), coef(k2, i), coef(k3, i));
      store_as(at::vec::fmadd(load_as<T>(a + i) - coef(sa, i), coef(k1, i), bk), out + i);
    }
    for (; i < n; ++i) {
      out[i] = static_cast<S>((T(a[i]) - scalar(sa, i)) * scalar(k1, i) +
                              (T(b[i]) - scalar(sb, i)) * scalar(k2, i) + scalar(k3, i));
    }
  } else {
    for (; i + L <= n; i += L) {
      store_as(at::vec::fmadd(load_as<T>(a + i) - coef(sa, i), coef(k1, i), coef(k3, i)), out + i);
    }
    for (; i < n; ++i) {
      out[i] = static_cast<S>((T(a[i]) - scalar(sa, i)) * scalar(k1, i) + scalar(k3, i));
    }
  }
}

// out = (a - a_shift[c]) * k1[c] + (b - b_shift[c]) * k2[c] + k3[c] (batch_norm_math.h's
// centred forms); b may be null (then k2 is ignored), a shift null (0).
template <typename T, typename S>
void channel_affine(const BatchNormShape& s, const S* a, const T* a_shift, const S* b,
                    const T* b_shift, const T* k1, const T* k2, const T* k3, S* out) {
  const int64_t C = s.channels, inner = s.inner;
  const auto at_c = [](const T* v, int64_t c) { return v ? v[c] : T(0); };
  if (inner >= kPlanarMinInner) {
    at::parallel_for(0, s.outer * C, cpu::grain(inner), [&](int64_t begin, int64_t end) {
      for (int64_t oc = begin; oc < end; ++oc) {
        const int64_t c = oc % C, base = oc * inner;
        affine_run<T>(a + base, at_c(a_shift, c), b ? b + base : nullptr, at_c(b_shift, c), k1[c],
                      b ? k2[c] : T(0), k3[c], out + base, inner);
      }
    });
    return;
  }
  // Row-wise: element j of a row of R = C * inner values belongs to channel j / inner.
  const int64_t R = C * inner;
  std::vector<T> ra(R), rb(R), r1(R), r2(R), r3(R);
  for (int64_t j = 0; j < R; ++j) {
    const int64_t c = j / inner;
    ra[j] = at_c(a_shift, c);
    rb[j] = at_c(b_shift, c);
    r1[j] = k1[c];
    r2[j] = b ? k2[c] : T(0);
    r3[j] = k3[c];
  }
  at::parallel_for(0, s.outer, cpu::grain(R), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const int64_t base = o * R;
      affine_run<T>(a + base, ra.data(), b ? b + base : nullptr, rb.data(), r1.data(), r2.data(),
                    r3.data(), out + base, R);
    }
  });
}

// Each channel's sums s1 = sum(x - shift), s2 = sum((x - shift)^2) in double, over a shift
// close to its mean (mean = shift + s1 / n, var = s2 / n - (s1 / n)^2), for training mode.
template <typename T, typename S>
void shifted_channel_sums(const BatchNormShape& shape, const S* xp, std::vector<T>& shift,
                          std::vector<double>& s1, std::vector<double>& s2) {
  const int64_t C = shape.channels, n = shape.per_channel();
  // One pass of sums shifted by each channel's first value: var = (S2 - S1^2/n) / n
  // stays accurate when the shift is close to the mean, as one sample of it is.
  for (int64_t c = 0; c < C; ++c) shift[c] = T(xp[c * shape.inner]);
  const auto shifted_moments = [](auto a, auto, auto p) {
    const auto d = a - p;
    return std::make_pair(d, d * d);
  };
  channel_sums<T>(shape, xp, xp, shift.data(), s1.data(), s2.data(), shifted_moments);
  // A shift far from the mean relative to the spread (the first value an outlier, or a
  // channel nearly constant around another value) leaves var = S2/n - m1^2 as the
  // difference of two close numbers: then the sums again around the mean just found.
  bool refine = false;
  for (int64_t c = 0; c < C; ++c) {
    const double m1 = s1[c] / n, var = s2[c] / n - m1 * m1;
    refine |= std::isfinite(var) && !(m1 * m1 <= 64.0 * var);
  }
  if (refine) {
    for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<T>(shift[c] + s1[c] / n);
    channel_sums<T>(shape, xp, xp, shift.data(), s1.data(), s2.data(), shifted_moments);
  }
  if constexpr (std::is_same_v<T, float>) {
    // A channel whose float squares overflowed (|x - shift| ~ 1e20 and more, float32 or
    // bfloat16): its sums again in double. An inf or NaN in the channel stays NaN.
    for (int64_t c = 0; c < C; ++c) {
      if (std::isfinite(s2[c])) continue;
      double t1 = 0, t2 = 0;
      for (int64_t o = 0; o < shape.outer; ++o) {
        for (int64_t i = 0; i < shape.inner; ++i) {
          const double d = static_cast<double>(T(xp[(o * C + c) * shape.inner + i])) - shift[c];
          t1 += d;
          t2 += d * d;
        }
      }
      s1[c] = t1;
      s2[c] = t2;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_forward_cpu(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps) {
  const auto shape = detail::check_batch_norm_forward(input, weight, bias, running_mean,
                                                      running_var, training, momentum, eps);
  const auto x = detail::batch_norm_layout(input, shape);
  auto output = at::empty_like(x);  // keeps x's layout
  const int64_t C = shape.channels;
  const bool update_running = training && present(running_mean);
  ContiguousInPlace running_mean_io(update_running ? running_mean : std::nullopt);
  ContiguousInPlace running_var_io(update_running ? running_var : std::nullopt);
  const int64_t n = shape.per_channel();
  at::Tensor save_mean, save_invstd;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_forward_cpu", [&] {
        using S = scalar_t;
        using T = at::opmath_type<S>;
        // The statistics in T (float for half inputs), as torch's.
        save_mean = at::zeros({C}, x.options().dtype(c10::CppTypeToScalarType<T>::value));
        save_invstd = at::zeros({C}, save_mean.options());
        const S* xp = x.const_data_ptr<S>();
        T* mean = save_mean.mutable_data_ptr<T>();
        T* invstd = save_invstd.mutable_data_ptr<T>();
        if (training) {
          if (n == 0) return;  // empty batch: nothing to normalise, running stats untouched
          std::vector<T> shift(C);
          std::vector<double> s1(C), s2(C);
          shifted_channel_sums<T>(shape, xp, shift, s1, s2);
          // Running statistics of the input's dtype or float32 (mixed precision), updated in T.
          std::vector<T> rm_storage, rv_storage, rm_new(C), rv_new(C);
          const T* rm =
              update_running ? compute_values(running_mean_io.work(), rm_storage) : nullptr;
          const T* rv =
              update_running ? compute_values(running_var_io.work(), rv_storage) : nullptr;
          for (int64_t c = 0; c < C; ++c) {
            const double m1 = s1[c] / n;
            const double var = std::max(s2[c] / n - m1 * m1, 0.0);
            mean[c] = static_cast<T>(shift[c] + m1);
            invstd[c] = static_cast<T>(1.0 / std::sqrt(var + eps));
            if (update_running) {
              const double unbiased = n > 1 ? var * n / (n - 1) : var;
              rm_new[c] =
                  static_cast<T>(detail::bn_running_update<double>(rm[c], shift[c] + m1, momentum));
              rv_new[c] =
                  static_cast<T>(detail::bn_running_update<double>(rv[c], unbiased, momentum));
            }
          }
          if (update_running) {
            cpu::store_values(rm_new.data(), running_mean_io.work());
            cpu::store_values(rv_new.data(), running_var_io.work());
          }
        } else {
          std::vector<T> rm_storage, rv_storage;
          const T* rm = compute_values(*running_mean, rm_storage);
          const T* rv = compute_values(*running_var, rv_storage);
          for (int64_t c = 0; c < C; ++c) {
            mean[c] = rm[c];
            invstd[c] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(rv[c]) + eps));
          }
        }
        // y = (x - mean) * scale + bias, scale = invstd * weight.
        std::vector<T> w_storage, b_storage;
        const T* w = compute_values(weight.value_or(at::Tensor()), w_storage);
        const T* b = compute_values(bias.value_or(at::Tensor()), b_storage);
        std::vector<T> scale(C), offset(C);
        for (int64_t c = 0; c < C; ++c) {
          detail::bn_output_coefficients<T>(invstd[c], w ? w[c] : T(1), b ? b[c] : T(0), scale[c],
                                            offset[c]);
        }
        channel_affine<T, S>(shape, xp, mean, nullptr, nullptr, scale.data(), nullptr,
                             offset.data(), output.mutable_data_ptr<S>());
      });
  running_mean_io.commit();
  running_var_io.commit();
  return {output, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    std::array<bool, 3> output_mask) {
  const auto shape =
      detail::check_batch_norm_backward(grad_output, input, weight, save_mean, save_invstd);
  const auto x = detail::batch_norm_layout(input, shape);
  const auto dy = detail::batch_norm_layout(grad_output, shape);
  const auto weight_c = contiguous_or_undefined(weight);
  const int64_t C = shape.channels;
  const int64_t n = shape.per_channel();
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::empty_like(x);
  const auto [weight_dtype, bias_dtype] = detail::norm_param_grad_dtypes(x, weight_c);
  if (output_mask[1] && weight_c.defined()) {
    grad_weight = at::empty({C}, x.options().dtype(weight_dtype));
  }
  if (output_mask[2]) grad_bias = at::empty({C}, x.options().dtype(bias_dtype));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_backward_cpu", [&] {
        using S = scalar_t;
        using T = at::opmath_type<S>;
        const auto mean_c = save_mean.contiguous();
        const auto invstd_c = save_invstd.contiguous();
        const T* mean = mean_c.const_data_ptr<T>();
        const T* invstd = invstd_c.const_data_ptr<T>();
        // sum_dy[c] = sum dy, sum_dyx[c] = sum dy * (x - mean).
        std::vector<double> sum_dy(C, 0.0), sum_dyx(C, 0.0);
        const bool need_sums =
            grad_weight.defined() || grad_bias.defined() || (grad_input.defined() && training);
        if (need_sums && n > 0) {
          channel_sums<T>(shape, dy.const_data_ptr<S>(), x.const_data_ptr<S>(), mean, sum_dy.data(),
                          sum_dyx.data(),
                          [](auto g, auto xv, auto m) { return std::make_pair(g, g * (xv - m)); });
        }
        if (grad_weight.defined()) {
          std::vector<double> gw(C);
          for (int64_t c = 0; c < C; ++c) gw[c] = sum_dyx[c] * invstd[c];
          cpu::store_values(gw.data(), grad_weight);
        }
        if (grad_bias.defined()) cpu::store_values(sum_dy.data(), grad_bias);
        if (grad_input.defined() && n > 0) {
          // dx = dy * k1 + (x - mean) * k2 + k3 (batch_norm_math.h).
          std::vector<T> w_storage;
          const T* w = compute_values(weight_c, w_storage);
          std::vector<T> k1(C), k2(C), k3(C);
          for (int64_t c = 0; c < C; ++c) {
            double c1, c2, c3;
            detail::bn_input_grad_coefficients<double>(
                invstd[c], w ? static_cast<double>(w[c]) : 1.0, sum_dy[c], sum_dyx[c],
                static_cast<double>(n), training, c1, c2, c3);
            k1[c] = static_cast<T>(c1);
            k2[c] = static_cast<T>(c2);
            k3[c] = static_cast<T>(c3);
          }
          channel_affine<T, S>(shape, dy.const_data_ptr<S>(), nullptr,
                               training ? x.const_data_ptr<S>() : nullptr, mean, k1.data(),
                               k2.data(), k3.data(), grad_input.mutable_data_ptr<S>());
        }
      });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

FASTDL_CPU_KERNELS(batch_norm, m) {
  m.impl("batch_norm_forward", &batch_norm_forward_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

}  // namespace fastdl::CPU_CAPABILITY
