// Small tensor helpers shared by the kernels' host code.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/copy.h>

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

// A tensor a kernel updates in place (running statistics), seen as contiguous: `work` is the
// tensor itself when contiguous, else a contiguous copy that commit() writes back.
class ContiguousInPlace {
 public:
  explicit ContiguousInPlace(const std::optional<at::Tensor>& target)
      : target_(target.has_value() && target->defined() ? *target : at::Tensor()),
        work_(target_.defined() ? target_.contiguous() : at::Tensor()) {}
  const at::Tensor& work() const { return work_; }
  void commit() {
    if (work_.defined() && !work_.is_same(target_)) target_.copy_(work_);
  }

 private:
  at::Tensor target_;
  at::Tensor work_;
};

}  // namespace fastdl
