// The non-tensor options of an attention call (dropout, causal, scale, seed), saved in an
// autograd context by the forward of sdpa and sdpa_weights and read back in their backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>

namespace fastdl::detail {

struct SdpaOptions {
  double dropout_p;
  bool is_causal;
  std::optional<double> scale;
  std::optional<at::Tensor> dropout_seed;

  void save(torch::autograd::AutogradContext* ctx) const {
    if (dropout_seed.has_value() && dropout_seed->defined())
      ctx->saved_data["dropout_seed"] = *dropout_seed;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale.has_value() ? c10::IValue(*scale) : c10::IValue();
  }

  static SdpaOptions load(torch::autograd::AutogradContext* ctx) {
    const auto scale = ctx->saved_data["scale"];
    return {ctx->saved_data["dropout_p"].toDouble(), ctx->saved_data["is_causal"].toBool(),
            scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()),
            ctx->saved_data.count("dropout_seed")
                ? std::optional<at::Tensor>(ctx->saved_data["dropout_seed"].toTensor())
                : std::nullopt};
  }
};

}  // namespace fastdl::detail
