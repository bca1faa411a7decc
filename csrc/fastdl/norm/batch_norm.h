// Batch normalization over (N, C, *) inputs, as torch.nn.functional.batch_norm: per-channel
// statistics over the batch and spatial dims in training (biased variance to normalise,
// unbiased variance into running_var), running statistics in evaluation.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastdl {

// Differentiable (autograd-capable) batch norm: the output only. In training, running_mean
// and running_var (when given) are updated in place: r = (1 - momentum) * r + momentum * stat.
at::Tensor batch_norm(const at::Tensor& input, const std::optional<at::Tensor>& running_mean,
                      const std::optional<at::Tensor>& running_var,
                      const std::optional<at::Tensor>& weight = std::nullopt,
                      const std::optional<at::Tensor>& bias = std::nullopt, bool training = false,
                      double momentum = 0.1, double eps = 1e-5);

// Forward op: (output, save_mean, save_invstd), the statistics used (batch statistics in
// training, running ones in evaluation) as float32 for half inputs, else the input's dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps);

// Backward op: (grad_input, grad_weight, grad_bias), undefined where output_mask is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    std::array<bool, 3> output_mask);

namespace detail {

// An (N, C, *) problem seen as `outer` blocks of C channels by `inner` contiguous elements:
// NC* contiguous inputs have inner = prod(*), channels-last ones (and (N, C)) have inner = 1
// and the channel as the fastest dim.
struct BatchNormShape {
  int64_t outer;     // N for NC* layouts, N * prod(*) for channels-last
  int64_t channels;  // C
  int64_t inner;     // prod(*) for NC* layouts, 1 for channels-last
  bool channels_last;
  int64_t per_channel() const { return outer * inner; }
};

// The one place batch norm arguments are checked; every kernel calls them first.
BatchNormShape check_batch_norm_forward(const at::Tensor& input,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& running_mean,
                                        const std::optional<at::Tensor>& running_var, bool training,
                                        double momentum, double eps);
BatchNormShape check_batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                         const std::optional<at::Tensor>& weight,
                                         const at::Tensor& save_mean,
                                         const at::Tensor& save_invstd);

// The input's memory layout as the kernels see it, and a contiguous tensor in that layout.
at::Tensor batch_norm_layout(const at::Tensor& t, const BatchNormShape& shape);

}  // namespace detail
}  // namespace fastdl
