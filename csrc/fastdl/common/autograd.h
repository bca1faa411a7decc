// Shared pieces of the C++ autograd Functions registered at the Autograd key.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>

namespace fastdl::autograd {

// Optional tensors enter a torch::autograd::Function as (possibly undefined) tensors, so that
// each tensor argument has an input edge and needs_input_grad(i) counts tensor arguments.
inline at::Tensor or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

inline std::optional<at::Tensor> as_optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Backward ops are not differentiable: their Autograd kernel raises on double backward.
[[noreturn]] inline void no_double_backward(std::string_view op) {
  TORCH_CHECK(false, op, ": double backward is not supported");
}

}  // namespace fastdl::autograd
