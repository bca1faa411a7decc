// Small tensor helpers shared by the kernels' host code.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/copy.h>

#include <initializer_list>
#include <optional>

namespace fastdl {

// Whether an optional tensor argument was given (and is a defined tensor).
inline bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The optional tensor made contiguous, or an undefined tensor when absent.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return present(t) ? t->contiguous() : at::Tensor();
}

// Whether the parameters (the first defined of `params` decides) are float32 while the input
// is float16/bfloat16: the mixed-precision case the CUDA kernels take with float parameters.
inline bool float_params_for_half_input(const at::Tensor& input,
                                        std::initializer_list<at::Tensor> params) {
  for (const auto& p : params) {
    if (p.defined()) return p.scalar_type() == at::kFloat && input.scalar_type() != at::kFloat;
  }
  return false;
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
      : target_(present(target) ? *target : at::Tensor()),
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
