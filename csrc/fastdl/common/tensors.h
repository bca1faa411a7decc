// Small tensor helpers shared by the kernels' host code.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fastdl {

// The optional tensor made contiguous, or an undefined tensor when absent.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

// Typed data pointers that are null for an undefined tensor.
template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mutable_data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

}  // namespace fastdl
