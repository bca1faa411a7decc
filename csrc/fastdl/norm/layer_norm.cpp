// layer_norm: schema, argument checks, autograd, autocast and the C++ entry points.
// Kernels: cpu/layer_norm.cpp and cuda/layer_norm.cu.
#include "fastdl/common/cpu_isa.h"
#include "fastdl/norm/layer_norm.h"

#include "fastdl/common/autocast.h"
#include "fastdl/common/autograd.h"
#include "fastdl/common/checks.h"
#include "fastdl/common/dispatch.h"

#include <torch/autograd.h>
#include <torch/library.h>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.layer_norm";

}  // namespace

namespace detail {

LayerNormShape check_layer_norm_forward(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias, double eps) {
  checks::floating(input, kOp, "input");
  const auto nd = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK(nd >= 1, kOp, ": normalized_shape must have at least one dimension, got []");
  for (auto s : normalized_shape) {
    TORCH_CHECK(s >= 0, kOp, ": normalized_shape must be non-negative, got ", normalized_shape);
  }
  TORCH_CHECK(input.dim() >= nd && input.sizes().slice(input.dim() - nd).equals(normalized_shape),
              kOp, ": normalized_shape ", normalized_shape,
              " must match the trailing dimensions of input, got input of shape ", input.sizes());
  checks::parameter(weight, input, normalized_shape, kOp, "weight");
  checks::parameter(bias, input, normalized_shape, kOp, "bias");
  // A negative eps is accepted, as torch: rows whose variance + eps is negative give NaN.
  TORCH_CHECK(std::isfinite(eps), kOp, ": eps must be a finite number, got ", eps);
  int64_t cols = 1;
  for (auto s : normalized_shape) cols *= s;
  int64_t rows = 1;
  for (int64_t d = 0; d < input.dim() - nd; ++d) rows *= input.size(d);
  return {rows, cols};
}

LayerNormShape check_layer_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef normalized_shape, const at::Tensor& mean,
                                         const at::Tensor& rstd,
                                         const std::optional<at::Tensor>& weight) {
  const auto shape = check_layer_norm_forward(input, normalized_shape, weight, std::nullopt, 0.0);
  checks::floating(grad_output, kOp, "grad_output");
  checks::same_device(grad_output, input, kOp, "grad_output", "input");
  TORCH_CHECK(
      grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(), kOp,
      ": grad_output must match input (", input.scalar_type(), input.sizes(), "), got ",
      grad_output.scalar_type(), grad_output.sizes());
  for (const auto* stat : {&mean, &rstd}) {
    TORCH_CHECK(stat->defined() && stat->numel() == shape.rows && stat->device() == input.device(),
                kOp, ": mean and rstd must hold one value per row (", shape.rows, ") on ",
                input.device(), ", got ", stat->defined() ? stat->sizes() : at::IntArrayRef{});
  }
  return shape;
}

std::vector<int64_t> layer_norm_stats_shape(const at::Tensor& input, int64_t normalized_ndim) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  for (int64_t d = input.dim() - normalized_ndim; d < input.dim(); ++d) shape[d] = 1;
  return shape;
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               at::IntArrayRef normalized_shape,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, double eps) {
    autograd::InputEdges::save(ctx, {true, present(weight), present(bias)});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, mean, rstd] =
        FASTDL_CALL(layer_norm_forward).call(input, normalized_shape, weight, bias, eps);
    autograd::save_with_optional(ctx, {input, mean, rstd}, weight);
    ctx->saved_data["normalized_shape"] = normalized_shape.vec();
    ctx->mark_non_differentiable({mean, rstd});
    return {output, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto normalized_shape = ctx->saved_data["normalized_shape"].toIntVector();
    const std::array<bool, 3> mask = {autograd::InputEdges::needs_grad(ctx, 0),
                                      autograd::InputEdges::needs_grad(ctx, 1),
                                      autograd::InputEdges::needs_grad(ctx, 2)};
    if (!grads[0].defined()) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [grad_input, grad_weight, grad_bias] =
        FASTDL_CALL(layer_norm_backward)
            .call(grads[0], saved[0], normalized_shape, saved[1], saved[2],
                  autograd::saved_optional(ctx, saved, 0), mask);
    return {grad_input, at::Tensor(), grad_weight, grad_bias, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward_autograd(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  auto out = LayerNormFunction::apply(input, normalized_shape, weight, bias, eps);
  return {out[0], out[1], out[2]};
}

// Autocast, as torch: on CUDA layer_norm runs in float32 and returns float32; on CPU torch has
// no autocast rule for it and returns the input's dtype, which we keep (our CPU kernels compute
// half inputs in float32 and cast the output back).
template <c10::DeviceType device>
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward_autocast(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  autocast::BelowAutocast<device> below;
  auto [output, mean, rstd] =
      FASTDL_CALL(layer_norm_forward)
          .call(autocast::to_float<device>(input), normalized_shape,
                autocast::to_float<device>(weight), autocast::to_float<device>(bias), eps);
  if (device == c10::DeviceType::CPU) output = output.to(input.scalar_type());
  return {output, mean, rstd};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  return FASTDL_CALL(layer_norm_forward).call(input, normalized_shape, weight, bias, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    std::array<bool, 3> output_mask) {
  return FASTDL_CALL(layer_norm_backward)
      .call(grad_output, input, normalized_shape, mean, rstd, weight, output_mask);
}

at::Tensor layer_norm(const at::Tensor& input, at::IntArrayRef normalized_shape,
                      const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& bias, double eps) {
  return std::get<0>(layer_norm_forward(input, normalized_shape, weight, bias, eps));
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "layer_norm_forward(Tensor input, int[] normalized_shape, Tensor? weight=None, "
      "Tensor? bias=None, float eps=1e-05) -> (Tensor output, Tensor mean, Tensor rstd)");
  m.def(
      "layer_norm_backward(Tensor grad_output, Tensor input, int[] normalized_shape, "
      "Tensor mean, Tensor rstd, Tensor? weight, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

// The CPU kernels of cpu/layer_norm.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(layer_norm)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("layer_norm_forward", &layer_norm_forward_autograd);
  m.impl("layer_norm_backward", autograd::not_differentiable_kernel());
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCPU, m) {
  m.impl("layer_norm_forward", &layer_norm_forward_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCUDA, m) {
  m.impl("layer_norm_forward", &layer_norm_forward_autocast<c10::DeviceType::CUDA>);
}

}  // namespace fastdl
