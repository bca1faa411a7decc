// CPU kernel helpers: vectorised dot products, axpy and row reductions (at::vec::Vectorized,
// several accumulators for instruction-level parallelism and accuracy) and per-thread
// reduction buffers.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace fastdl::cpu::inline CPU_CAPABILITY {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// at::parallel_for grain: items per task so that a task holds ~16k elements of work, enough
// to pay for scheduling.
inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(work_per_item, 1));
}

// The sum of a vector's lanes (pairwise, through memory: at::vec's own reduction helpers
// differ between the AVX2 and AVX512 builds).
template <typename T>
inline T horizontal_sum(const Vec<T>& v) {
  constexpr int64_t L = Vec<T>::size();
  alignas(64) T lanes[L];
  v.store(lanes);
  for (int64_t width = L / 2; width >= 1; width /= 2) {
    for (int64_t i = 0; i < width; ++i) lanes[i] += lanes[i + width];
  }
  return lanes[0];
}

// max_i x[i] over n >= 0 values (-inf for none), vectorised; NaN if any x[i] is NaN.
template <typename T>
inline T max_of(const T* x, int64_t n) {
  constexpr int64_t L = Vec<T>::size();
  T best = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  if (n >= L) {
    Vec<T> acc = Vec<T>::loadu(x);
    for (i = L; i + L <= n; i += L) acc = at::vec::maximum(acc, Vec<T>::loadu(x + i));
    alignas(64) T lanes[L];
    acc.store(lanes);
    for (int64_t j = 0; j < L; ++j)
      best = (lanes[j] > best || lanes[j] != lanes[j]) ? lanes[j] : best;
  }
  for (; i < n; ++i) best = (x[i] > best || x[i] != x[i]) ? x[i] : best;
  return best;
}

// sum_i a[i] * b[i], vectorised (two accumulators).
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> s0(T(0)), s1(T(0));
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    s0 = at::vec::fmadd(Vec<T>::loadu(a + i), Vec<T>::loadu(b + i), s0);
    s1 = at::vec::fmadd(Vec<T>::loadu(a + i + L), Vec<T>::loadu(b + i + L), s1);
  }
  for (; i + L <= n; i += L) s0 = at::vec::fmadd(Vec<T>::loadu(a + i), Vec<T>::loadu(b + i), s0);
  T s = horizontal_sum<T>(s0 + s1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y[i] += a * x[i], vectorised.
template <typename T>
inline void axpy(T* __restrict__ y, const T* __restrict__ x, T a, int64_t n) {
  constexpr int64_t L = Vec<T>::size();
  const Vec<T> av(a);
  int64_t i = 0;
  for (; i + L <= n; i += L)
    at::vec::fmadd(av, Vec<T>::loadu(x + i), Vec<T>::loadu(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += a * x[i];
}

// y[i] *= a, vectorised.
template <typename T>
inline void scale_inplace(T* y, T a, int64_t n) {
  constexpr int64_t L = Vec<T>::size();
  int64_t i = 0;
  for (; i + L <= n; i += L) (Vec<T>::loadu(y + i) * Vec<T>(a)).store(y + i);
  for (; i < n; ++i) y[i] *= a;
}

// x[0..n) = exp(x - shift) in place, vectorised, and their sum; all zeros when shift is -inf
// (a fully masked row: common/online_softmax.h's convention). Entries of -inf give 0.
template <typename T>
inline T exp_shifted_row(T* x, int64_t n, T shift) {
  constexpr int64_t L = Vec<T>::size();
  if (shift == -std::numeric_limits<T>::infinity()) {
    std::fill(x, x + n, T(0));
    return T(0);
  }
  Vec<T> sum_v(T(0));
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    const auto e = (Vec<T>::loadu(x + j) - Vec<T>(shift)).exp();
    e.store(x + j);
    sum_v += e;
  }
  T sum = horizontal_sum<T>(sum_v);
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

// sum_i f(x[i]) for a vector-capable f (called with Vec<T> and with T), four accumulators.
template <typename T, typename F>
inline T reduce_sum(const T* x, int64_t n, const F& f) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    a0 += f(Vec<T>::loadu(x + i));
    a1 += f(Vec<T>::loadu(x + i + L));
    a2 += f(Vec<T>::loadu(x + i + 2 * L));
    a3 += f(Vec<T>::loadu(x + i + 3 * L));
  }
  for (; i + L <= n; i += L) a0 += f(Vec<T>::loadu(x + i));
  T s = horizontal_sum<T>((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += f(x[i]);
  return s;
}

// (sum_i f1(x[i]), sum_i f2(x[i])) in one pass, four accumulators each; f returns both.
template <typename T, typename F>
inline std::pair<T, T> reduce_sum2(const T* x, int64_t n, const F& f) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> a[4] = {Vec<T>(T(0)), Vec<T>(T(0)), Vec<T>(T(0)), Vec<T>(T(0))};
  Vec<T> b[4] = {Vec<T>(T(0)), Vec<T>(T(0)), Vec<T>(T(0)), Vec<T>(T(0))};
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    for (int k = 0; k < 4; ++k) {
      const auto [u, v] = f(Vec<T>::loadu(x + i + k * L));
      a[k] += u;
      b[k] += v;
    }
  }
  for (; i + L <= n; i += L) {
    const auto [u, v] = f(Vec<T>::loadu(x + i));
    a[0] += u;
    b[0] += v;
  }
  T sa = horizontal_sum<T>((a[0] + a[1]) + (a[2] + a[3]));
  T sb = horizontal_sum<T>((b[0] + b[1]) + (b[2] + b[3]));
  for (; i < n; ++i) {
    const auto [u, v] = f(x[i]);
    sa += u;
    sb += v;
  }
  return {sa, sb};
}

// Values summed in T before their sum goes into a double: the rounding error of a sum stays
// that of a kSumBlock-long one however long the row (a float32 row of a million values lost
// ~1e-3 of its mean when summed whole).
constexpr int64_t kSumBlock = 4096;

// Mean and biased variance of x[0..n). One pass of sums shifted by x[0]; when the shift is
// far from the mean relative to the spread (where the shifted formula loses digits), the
// variance is recomputed exactly around the mean.
template <typename T>
inline std::pair<T, T> mean_var(const T* x, int64_t n) {
  if (n == 0) return {T(0), T(0)};
  const T shift = x[0];
  double s1 = 0, s2 = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kSumBlock) {
    const auto [b1, b2] = reduce_sum2<T>(x + i0, std::min(kSumBlock, n - i0), [shift](auto v) {
      const auto d = v - decltype(v)(shift);
      return std::make_pair(d, d * d);
    });
    s1 += b1;
    s2 += b2;
  }
  const double d = s1 / static_cast<double>(n);
  const T mean = static_cast<T>(shift + d);
  double var = s2 / static_cast<double>(n) - d * d;
  if (!(d * d <= 64.0 * var)) {
    double e2 = 0;
    for (int64_t i0 = 0; i0 < n; i0 += kSumBlock) {
      e2 += reduce_sum<T>(x + i0, std::min(kSumBlock, n - i0), [mean](auto v) {
        const auto e = v - decltype(v)(mean);
        return e * e;
      });
    }
    var = e2 / static_cast<double>(n);
  }
  return {mean, static_cast<T>(std::max(var, 0.0))};
}

// Per-thread accumulation buffers for column sums over rows (weight/bias gradients): each
// parallel_for task adds into the row of its thread, then the rows are summed.
template <typename T>
class ThreadColumnSums {
 public:
  ThreadColumnSums(int64_t columns, int64_t buffers)
      : columns_(columns),
        data_(static_cast<size_t>(columns * std::max<int64_t>(buffers, 1)), T(0)) {}
  T* row(int64_t thread) { return data_.data() + thread * columns_; }
  // out[c] = sum over threads of row(t)[c].
  void sum_into(T* out) const {
    const int64_t threads = static_cast<int64_t>(data_.size()) / std::max<int64_t>(columns_, 1);
    at::parallel_for(0, columns_, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        T s = 0;
        for (int64_t t = 0; t < threads; ++t) s += data_[t * columns_ + c];
        out[c] = s;
      }
    });
  }

 private:
  int64_t columns_;
  std::vector<T> data_;
};

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
