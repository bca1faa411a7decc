// 2-d max and average pooling over the last two dims of a (C, H, W) or (N, C, H, W) input, as
// torch.nn.functional.max_pool2d / avg_pool2d (1-d pooling is the 2-d ops on an (N, C, 1, L)
// view, in fastdl.functional). The output keeps the input's memory format (channels-last
// stays channels-last); max pooling also returns the flat index of each maximum in its input
// plane (H * W), int64, as torch's return_indices.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fastdl {

// Differentiable (autograd-capable) pooling: the output only.
at::Tensor max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                      at::IntArrayRef stride = {}, at::IntArrayRef padding = 0,
                      at::IntArrayRef dilation = 1, bool ceil_mode = false);
at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                      at::IntArrayRef stride = {}, at::IntArrayRef padding = 0,
                      bool ceil_mode = false, bool count_include_pad = true,
                      std::optional<int64_t> divisor_override = std::nullopt);

// Forward op: (output, indices). An empty stride means stride = kernel_size.
std::tuple<at::Tensor, at::Tensor> max_pool2d_forward(const at::Tensor& input,
                                                      at::IntArrayRef kernel_size,
                                                      at::IntArrayRef stride,
                                                      at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, bool ceil_mode);
// Backward op: the input gradient, routed to the saved argmax of each window.
at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& indices, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode);

at::Tensor avg_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                              bool count_include_pad, std::optional<int64_t> divisor_override);
at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override);

namespace detail {

// A checked 2-d pooling problem: the input seen as (batch, channels, in_h, in_w) (batch = 1
// for an unbatched input), the window geometry and the output size.
struct Pool2dShape {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  bool batched;        // the input had a batch dim
  bool channels_last;  // the input (and output) are channels-last (N, C, H, W) tensors
  // Output sizes: (N, C, OH, OW) or (C, OH, OW).
  std::vector<int64_t> output_sizes() const;
};

// torch's pooling_output_shape: floor (or ceil) of the window count; with ceil_mode the last
// window must start inside the input or the left padding.
int64_t pool_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                         bool ceil_mode);

// The one place pooling arguments are checked; every kernel calls them first.
Pool2dShape check_max_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, bool ceil_mode);
Pool2dShape check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& indices, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode);
Pool2dShape check_avg_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     bool ceil_mode, bool count_include_pad,
                                     std::optional<int64_t> divisor_override);
Pool2dShape check_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, bool ceil_mode,
                                      bool count_include_pad,
                                      std::optional<int64_t> divisor_override);

// The input as a 4-d tensor in the layout the kernels read: (1, C, H, W) for an unbatched
// input, contiguous in the channels-last or the contiguous format.
at::Tensor pool2d_kernel_layout(const at::Tensor& t, const Pool2dShape& shape);
// A new 4-d output (or gradient) tensor of `sizes` in the kernels' layout.
at::Tensor pool2d_empty(const Pool2dShape& shape, int64_t h, int64_t w,
                        const at::TensorOptions& options);
// The kernels' 4-d result viewed back with the input's rank.
at::Tensor pool2d_result(const at::Tensor& t, const Pool2dShape& shape);

}  // namespace detail
}  // namespace fastdl
