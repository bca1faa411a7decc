// 2-d convolution (and 1-d as 2-d on an (N, C, 1, L) view) over a (C, H, W) or (N, C, H, W)
// input, as torch.nn.functional.conv2d / conv1d with symmetric zero padding (fastdl.functional
// turns 'same' with an even kernel and the modules' padding modes into an explicit pad first).
// The output keeps the input's memory format (channels-last stays channels-last).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace fastdl {

// Differentiable (autograd-capable) convolutions: the output only.
at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias = std::nullopt, at::IntArrayRef stride = 1,
                  at::IntArrayRef padding = 0, at::IntArrayRef dilation = 1, int64_t groups = 1);
// input (C, L) or (N, C, L), weight (out_channels, in_channels / groups, k).
at::Tensor conv1d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias = std::nullopt, int64_t stride = 1,
                  int64_t padding = 0, int64_t dilation = 1, int64_t groups = 1);

// Forward op.
at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
// Backward op: (grad_input, grad_weight, grad_bias), each computed only where output_mask says.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask);

namespace detail {

// A checked 2-d convolution problem: the input seen as (batch, in_channels, in_h, in_w)
// (batch = 1 for an unbatched input), the weight (out_channels, in_channels / groups, kh, kw).
struct Conv2dShape {
  int64_t batch, in_channels, in_h, in_w, out_channels, out_h, out_w;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, groups;
  bool batched;        // the input had a batch dim
  bool channels_last;  // the input (and output) are channels-last 4-d tensors
  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  // Depthwise (one input channel per group, any channel multiplier): the direct kernels.
  bool depthwise() const { return groups > 1 && in_per_group() == 1; }
  std::vector<int64_t> output_sizes() const;
};

// The one place convolution arguments are checked; every kernel calls them first.
Conv2dShape check_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
Conv2dShape check_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups);

// A tensor as the kernels read it: 4-d, contiguous NCHW.
at::Tensor conv2d_kernel_layout(const at::Tensor& t, const Conv2dShape& shape);
// The kernels' 4-d NCHW result viewed back with the input's rank and memory format.
at::Tensor conv2d_result(const at::Tensor& t, const Conv2dShape& shape);

}  // namespace detail
}  // namespace fastdl
