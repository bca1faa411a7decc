// Layer normalization: y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the
// trailing dims given by normalized_shape (biased variance), as torch.nn.functional.layer_norm.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastdl {

// Differentiable (autograd-capable) layer norm: the output only.
at::Tensor layer_norm(const at::Tensor& input, at::IntArrayRef normalized_shape,
                      const std::optional<at::Tensor>& weight = std::nullopt,
                      const std::optional<at::Tensor>& bias = std::nullopt, double eps = 1e-5);

// Forward op: (output, mean, rstd). mean and rstd have the input's leading dims followed by
// ones, in float32 for half inputs and in the input's dtype otherwise.
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps);

// Backward op: (grad_input, grad_weight, grad_bias); an entry is undefined when its
// output_mask entry is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    std::array<bool, 3> output_mask);

namespace detail {

// Rows (M) and row length (N) of a layer norm problem.
struct LayerNormShape {
  int64_t rows;
  int64_t cols;
};

// The one place layer norm arguments are checked; every kernel calls it first.
LayerNormShape check_layer_norm_forward(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias, double eps);
LayerNormShape check_layer_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef normalized_shape, const at::Tensor& mean,
                                         const at::Tensor& rstd,
                                         const std::optional<at::Tensor>& weight);
// Shape of mean/rstd: the leading dims of the input, then ones.
std::vector<int64_t> layer_norm_stats_shape(const at::Tensor& input, int64_t normalized_ndim);

}  // namespace detail
}  // namespace fastdl
