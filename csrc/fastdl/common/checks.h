// Argument checks shared by every op's front file. Each raises c10::Error (RuntimeError in
// Python) with a message that names the op, the argument, what was expected and what came.
#pragma once

#include "fastdl/common/tensors.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <string_view>

namespace fastdl::checks {

// Floating point tensors only: float32, float64, float16 or bfloat16 (every op takes the four
// on both devices; half inputs compute in float32).
inline void floating(const at::Tensor& t, std::string_view op, std::string_view name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  const auto dtype = t.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
      op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", dtype, " on ",
      t.device());
}

inline void same_device(const at::Tensor& t, const at::Tensor& ref, std::string_view op,
                        std::string_view name, std::string_view ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ",
              ref_name, " (", ref.device(), "), got ", t.device());
}

inline void shape(const at::Tensor& t, at::IntArrayRef expected, std::string_view op,
                  std::string_view name) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

// `t` is on the input's device with the input's dtype.
inline void like_input(const at::Tensor& t, const at::Tensor& input, std::string_view op,
                       std::string_view name) {
  same_device(t, input, op, name, "input");
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name,
              " must have the input's dtype (", input.scalar_type(), "), got ", t.scalar_type());
}

inline void rank_at_least(const at::Tensor& t, int64_t rank, std::string_view op,
                          std::string_view name) {
  TORCH_CHECK(t.dim() >= rank, op, ": ", name, " must have at least ", rank,
              " dimensions, got shape ", t.sizes());
}

// A per-feature parameter (weight, bias, running stats): a tensor of `shape` on the input's
// device, of the input's dtype, or float32 when the input is a half type (mixed precision).
inline void parameter(const std::optional<at::Tensor>& t, const at::Tensor& input,
                      at::IntArrayRef shape, std::string_view op, std::string_view name) {
  if (!t.has_value() || !t->defined()) {
    return;
  }
  same_device(*t, input, op, name, "input");
  const auto dtype = t->scalar_type();
  const bool half_input = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  TORCH_CHECK(dtype == input.scalar_type() || (half_input && dtype == at::kFloat), op, ": ", name,
              " must have the input's dtype (", input.scalar_type(),
              half_input ? " or float32" : "", "), got ", dtype);
  checks::shape(*t, shape, op, name);
}

// A 2-d size argument (stride, padding, ...) as (h, w): one value means both, as torch;
// `fallback` stands in for an empty list (pooling's stride defaults to kernel_size).
inline std::array<int64_t, 2> int_pair(
    at::IntArrayRef v, std::string_view op, std::string_view name,
    std::optional<std::array<int64_t, 2>> fallback = std::nullopt) {
  if (v.empty() && fallback) return *fallback;
  TORCH_CHECK(v.size() == 1 || v.size() == 2, op, ": ", name,
              " must be a single int or a tuple of two ints, got ", v);
  return {v[0], v.size() == 2 ? v[1] : v[0]};
}

}  // namespace fastdl::checks
