// Autocast kernels: ops that torch runs in float32 under autocast (the norms) cast their
// floating inputs to float32 and run below the autocast key.
#pragma once

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>

namespace fastdl::autocast {

template <c10::DeviceType device>
constexpr c10::DispatchKey key() {
  return device == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA
                                         : c10::DispatchKey::AutocastCPU;
}

// Disables this device's autocast key for the enclosed call.
template <c10::DeviceType device>
struct BelowAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{key<device>()};
};

template <c10::DeviceType device>
at::Tensor to_float(const at::Tensor& t) {
  return at::autocast::cached_cast(at::kFloat, t, device);
}

template <c10::DeviceType device>
std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) {
    return t;
  }
  return to_float<device>(*t);
}

}  // namespace fastdl::autocast
