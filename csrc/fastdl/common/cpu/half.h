// float16/bfloat16 on CPU: the CPU kernels compute half inputs (storage type S) in float
// (T = at::opmath_type<S>), as torch does. Helpers to read and write S data as T: vectors
// (load_as/store_as), whole rows through a per-task buffer (row_in/row_target/row_out,
// RowBuffers), small parameter tensors (compute_values, store_values) and whole tensors
// (to_compute_dtype, converted) for kernels that take their inputs in float.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include "fastdl/common/cpu/vec.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <type_traits>
#include <vector>

namespace fastdl::cpu::inline CPU_CAPABILITY {

inline bool is_half(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

// Vec<T>::size() values of an S array as a Vec<T> (S = T, or a half type with T = float).
template <typename T, typename S>
inline Vec<T> load_as(const S* p) {
  if constexpr (std::is_same_v<S, T>) {
    return Vec<T>::loadu(p);
  } else {
    Vec<float> v;
    at::vec::load_to_float(p, v);
    return v;
  }
}

// Stores a Vec<T> as Vec<T>::size() values of an S array.
template <typename T, typename S>
inline void store_as(const Vec<T>& v, S* p) {
  if constexpr (std::is_same_v<S, T>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<S>(v, v).store(p, Vec<T>::size());
  }
}

// `n` values from an S array into a T array (a plain copy when S = T).
template <typename S, typename T>
inline void convert_values(const S* from, T* to, int64_t n) {
  if constexpr (std::is_same_v<S, T>) {
    std::copy(from, from + n, to);
  } else {
    at::vec::convert(from, to, n);
  }
}

// A small tensor's values (a weight, a bias) as a T array: its own data when it is of type T,
// else a converted copy kept in `storage`; nullptr if undefined.
template <typename T>
const T* compute_values(const at::Tensor& t, std::vector<T>& storage) {
  if (!t.defined()) return nullptr;
  if (t.is_contiguous() && t.scalar_type() == c10::CppTypeToScalarType<T>::value) {
    return t.const_data_ptr<T>();
  }
  const auto tc = t.contiguous();
  storage.resize(tc.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, tc.scalar_type(), "compute_values",
      [&] { convert_values(tc.const_data_ptr<scalar_t>(), storage.data(), tc.numel()); });
  return storage.data();
}

// Writes `values` (float or double) into a small contiguous tensor of any floating dtype
// (running statistics, parameter gradients), rounding once from T's precision.
template <typename V>
void store_values(const V* values, const at::Tensor& t) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "store_values", [&] {
    scalar_t* dst = t.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      dst[i] = static_cast<scalar_t>(static_cast<at::opmath_type<scalar_t>>(values[i]));
    }
  });
}

// Converts `from` into `to`, two tensors of one shape and the same dense strides (as
// empty_like makes them), their memory as one flat run, in parallel.
inline void convert_into(const at::Tensor& from, const at::Tensor& to) {
  TORCH_INTERNAL_ASSERT(from.sizes() == to.sizes() && from.strides() == to.strides() &&
                        from.is_non_overlapping_and_dense());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, from.scalar_type(), "convert_from", [&] {
        using From = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, to.scalar_type(), "convert_to", [&] {
              const From* src = from.const_data_ptr<From>();
              scalar_t* dst = to.mutable_data_ptr<scalar_t>();
              at::parallel_for(0, from.numel(), 32768, [&](int64_t begin, int64_t end) {
                if constexpr (std::is_same_v<From, scalar_t>) {
                  std::copy(src + begin, src + end, dst + begin);
                } else {
                  at::vec::convert(src + begin, dst + begin, end - begin);
                }
              });
            });
      });
}

// `t` converted to `dtype`, with t's strides when it is dense (a channels-last tensor stays
// channels-last), else contiguous.
inline at::Tensor convert_dense(const at::Tensor& t, at::ScalarType dtype) {
  const auto src = t.is_non_overlapping_and_dense() ? t : t.contiguous();
  auto out = at::empty_like(src, src.options().dtype(dtype));  // the same strides
  convert_into(src, out);
  return out;
}

// A result computed in float (or double) in `dtype`: itself, or converted (a half op's output,
// a half parameter's gradient summed in float). Undefined stays undefined.
inline at::Tensor converted(const at::Tensor& t, at::ScalarType dtype) {
  if (!t.defined() || t.scalar_type() == dtype) return t;
  return convert_dense(t, dtype);
}

// A half tensor as a float tensor (its layout kept when dense), for kernels that compute half
// inputs in float; any other tensor (or an undefined one) is returned as it is.
inline at::Tensor to_compute_dtype(const at::Tensor& t) {
  if (!t.defined() || !is_half(t.scalar_type())) return t;
  return convert_dense(t, at::kFloat);
}

inline std::optional<at::Tensor> to_compute_dtype(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return to_compute_dtype(*t);
}

// Row r of an S array as T: the row itself, or its conversion into `buffer`.
template <typename T, typename S>
const T* row_in(const S* data, int64_t r, int64_t cols, T* buffer) {
  if constexpr (std::is_same_v<S, T>) {
    return data + r * cols;
  } else {
    at::vec::convert(data + r * cols, buffer, cols);
    return buffer;
  }
}

// Where row r of an S output is computed: in place, or in `buffer` (then row_out stores it).
template <typename T, typename S>
T* row_target(S* data, int64_t r, int64_t cols, T* buffer) {
  if constexpr (std::is_same_v<S, T>) {
    return data + r * cols;
  } else {
    return buffer;
  }
}

template <typename T, typename S>
void row_out(const T* computed, S* data, int64_t r, int64_t cols) {
  if constexpr (!std::is_same_v<S, T>) at::vec::convert(computed, data + r * cols, cols);
}

// Per-task row buffers for half inputs, `count` rows of `cols` (none for float/double, whose
// rows are used in place); row(k) is null then.
template <typename T, typename S>
class RowBuffers {
 public:
  RowBuffers(int64_t count, int64_t cols)
      : cols_(cols), data_(std::is_same_v<S, T> ? 0 : count * cols) {}
  T* row(int64_t k) { return data_.empty() ? nullptr : data_.data() + k * cols_; }

 private:
  int64_t cols_;
  std::vector<T> data_;
};

}  // namespace fastdl::cpu::inline CPU_CAPABILITY
