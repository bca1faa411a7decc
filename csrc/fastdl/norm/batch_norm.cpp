// batch_norm: schema, argument checks, autograd and the C++ entry points.
// Kernels: cpu/batch_norm.cpp and cuda/batch_norm.cu.
#include "fastdl/common/cpu_isa.h"
#include "fastdl/norm/batch_norm.h"

#include "fastdl/common/autograd.h"
#include "fastdl/common/checks.h"
#include "fastdl/common/dispatch.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <initializer_list>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.batch_norm";

// torch accepts a 1-d input with no elements and returns it as it is: it is read here as an
// (0, C) batch, C the length of the first per-channel tensor given with it (0 without any), so
// the per-channel tensors still have to agree with each other.
bool empty_1d(const at::Tensor& input) { return input.dim() == 1 && input.numel() == 0; }

int64_t channels_of(const at::Tensor& input,
                    std::initializer_list<const std::optional<at::Tensor>*> per_channel) {
  if (!empty_1d(input)) return input.size(1);
  for (const auto* t : per_channel) {
    if (present(*t) && (*t)->dim() == 1) return (*t)->size(0);
  }
  return 0;
}

detail::BatchNormShape shape_of(const at::Tensor& input, int64_t channels) {
  detail::BatchNormShape s;
  s.channels = channels;
  int64_t spatial = 1;
  for (int64_t d = 2; d < input.dim(); ++d) spatial *= input.size(d);
  // Channels-last (NHWC / NDHWC) only when it is the actual layout, not merely compatible.
  const bool cl4 = input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast);
  const bool cl5 = input.dim() == 5 && input.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  s.channels_last = (cl4 || cl5) && !input.is_contiguous() && spatial > 1;
  s.outer = s.channels_last ? input.size(0) * spatial : input.size(0);
  s.inner = s.channels_last ? 1 : spatial;
  return s;
}
}  // namespace

namespace detail {

BatchNormShape check_batch_norm_forward(const at::Tensor& input,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& running_mean,
                                        const std::optional<at::Tensor>& running_var, bool training,
                                        double momentum, double eps) {
  checks::floating(input, kOp, "input");
  TORCH_CHECK(input.dim() >= 2 || empty_1d(input), kOp,
              ": input must have shape (N, C) or (N, C, *), got ", input.sizes());
  const int64_t c = channels_of(input, {&weight, &bias, &running_mean, &running_var});
  checks::parameter(weight, input, {c}, kOp, "weight");
  checks::parameter(bias, input, {c}, kOp, "bias");
  checks::parameter(running_mean, input, {c}, kOp, "running_mean");
  checks::parameter(running_var, input, {c}, kOp, "running_var");
  // As torch: all of them of one dtype, the input's or float32 beside a half input.
  const bool mixed = float_params_for_half_input(
      input, {weight.value_or(at::Tensor()), bias.value_or(at::Tensor()),
              running_mean.value_or(at::Tensor()), running_var.value_or(at::Tensor())});
  for (const auto* p : {&weight, &bias, &running_mean, &running_var}) {
    TORCH_CHECK(!present(*p) || ((*p)->scalar_type() == at::kFloat) ==
                                    (mixed || input.scalar_type() == at::kFloat),
                kOp, ": weight, bias, running_mean and running_var must share one dtype");
  }
  TORCH_CHECK_VALUE(present(running_mean) == present(running_var), kOp,
                    ": running_mean and running_var must both be given or both be None");
  TORCH_CHECK(training || present(running_mean), kOp,
              ": running_mean and running_var are required when training=False");
  TORCH_CHECK(std::isfinite(momentum), kOp, ": momentum must be finite, got ", momentum);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, kOp,
              ": eps must be a finite non-negative number, got ", eps);
  // As torch: a constant channel would divide by zero.
  TORCH_CHECK_VALUE(!training || eps > 0, kOp, ": eps must be positive during training, got ", eps);
  const auto shape = shape_of(input, c);
  TORCH_CHECK_VALUE(!training || shape.per_channel() != 1, kOp,
                    ": expected more than 1 value per channel when training, got input size ",
                    input.sizes());
  return shape;
}

BatchNormShape check_batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                         const std::optional<at::Tensor>& weight,
                                         const at::Tensor& save_mean,
                                         const at::Tensor& save_invstd) {
  checks::floating(input, kOp, "input");
  TORCH_CHECK(input.dim() >= 2 || empty_1d(input), kOp,
              ": input must have shape (N, C) or (N, C, *), got ", input.sizes());
  const std::optional<at::Tensor> mean_as_channels(save_mean);
  const int64_t c = channels_of(input, {&mean_as_channels});
  checks::parameter(weight, input, {c}, kOp, "weight");
  checks::floating(grad_output, kOp, "grad_output");
  checks::same_device(grad_output, input, kOp, "grad_output", "input");
  TORCH_CHECK(
      grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(), kOp,
      ": grad_output must match input (", input.scalar_type(), input.sizes(), "), got ",
      grad_output.scalar_type(), grad_output.sizes());
  for (const auto* stat : {&save_mean, &save_invstd}) {
    TORCH_CHECK(
        stat->defined() && stat->sizes() == at::IntArrayRef{c} && stat->device() == input.device(),
        kOp, ": save_mean and save_invstd must have shape [", c, "] on ", input.device());
    // The statistics the forward op saved: float32 for float32 and half inputs.
    const auto stats_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK(stat->scalar_type() == stats_dtype, kOp, ": save_mean and save_invstd must be ",
                stats_dtype, " for a ", input.scalar_type(), " input, got ", stat->scalar_type());
  }
  return shape_of(input, c);
}

at::Tensor batch_norm_layout(const at::Tensor& t, const BatchNormShape& shape) {
  if (!shape.channels_last) return t.contiguous();
  return t.contiguous(t.dim() == 4 ? at::MemoryFormat::ChannelsLast
                                   : at::MemoryFormat::ChannelsLast3d);
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool training,
                               double momentum, double eps) {
    autograd::InputEdges::save(
        ctx, {true, present(weight), present(bias), present(running_mean), present(running_var)});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, mean, invstd] =
        FASTDL_CALL(batch_norm_forward)
            .call(input, weight, bias, running_mean, running_var, training, momentum, eps);
    autograd::save_with_optional(ctx, {input, mean, invstd}, weight);
    ctx->saved_data["training"] = training;
    ctx->mark_non_differentiable({mean, invstd});
    return {output, mean, invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool training = ctx->saved_data["training"].toBool();
    const std::array<bool, 3> mask = {autograd::InputEdges::needs_grad(ctx, 0),
                                      autograd::InputEdges::needs_grad(ctx, 1),
                                      autograd::InputEdges::needs_grad(ctx, 2)};
    variable_list result(8);
    if (!grads[0].defined()) return result;
    auto [grad_input, grad_weight, grad_bias] =
        FASTDL_CALL(batch_norm_backward)
            .call(grads[0], saved[0], autograd::saved_optional(ctx, saved, 0), saved[1], saved[2],
                  training, mask);
    result[0] = grad_input;
    result[1] = grad_weight;
    result[2] = grad_bias;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_forward_autograd(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps) {
  auto out = BatchNormFunction::apply(input, weight, bias, running_mean, running_var, training,
                                      momentum, eps);
  return {out[0], out[1], out[2]};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps) {
  return FASTDL_CALL(batch_norm_forward)
      .call(input, weight, bias, running_mean, running_var, training, momentum, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    std::array<bool, 3> output_mask) {
  return FASTDL_CALL(batch_norm_backward)
      .call(grad_output, input, weight, save_mean, save_invstd, training, output_mask);
}

at::Tensor batch_norm(const at::Tensor& input, const std::optional<at::Tensor>& running_mean,
                      const std::optional<at::Tensor>& running_var,
                      const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& bias, bool training, double momentum,
                      double eps) {
  return std::get<0>(
      batch_norm_forward(input, weight, bias, running_mean, running_var, training, momentum, eps));
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "batch_norm_forward(Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, bool training, float momentum, "
      "float eps) -> (Tensor output, Tensor save_mean, Tensor save_invstd)");
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, "
      "Tensor save_mean, Tensor save_invstd, bool training, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

// The CPU kernels of cpu/batch_norm.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(batch_norm)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("batch_norm_forward", &batch_norm_forward_autograd);
  m.impl("batch_norm_backward", autograd::not_differentiable_kernel());
}

// No autocast kernels: under autocast torch's batch_norm keeps the input's dtype on both
// devices, and so do ours (the kernels take half inputs with half or float32 parameters).

}  // namespace fastdl
