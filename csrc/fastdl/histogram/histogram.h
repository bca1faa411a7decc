// Differentiable histograms (HistNetQ's pooling): out[b, f, k] = mean over the present
// elements i of bag b of K(x[b, i, f] - c[f, k], w[f, k]), for the sigmoid, soft
// (triangular), rbf (Gaussian) and hard kernels. See fastdl.functional.histogram.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

namespace fastdl {

// Differentiable (autograd-capable) histogram: x (bags, N, F) or (N, F); centers and widths
// (F, B) or (B,); mask (bags, N) bool. Returns (bags, F, B) (or (F, B)).
at::Tensor histogram(const at::Tensor& x, const at::Tensor& centers, const at::Tensor& widths,
                     std::string_view kernel = "soft",
                     const std::optional<at::Tensor>& mask = std::nullopt, bool normalize = true,
                     double sharpness = 1000.0);

at::Tensor histogram_forward(const at::Tensor& x, const at::Tensor& centers,
                             const at::Tensor& widths, std::string_view kernel,
                             const std::optional<at::Tensor>& mask, bool normalize,
                             double sharpness);

// (grad_x, grad_centers, grad_widths), undefined where output_mask is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_backward(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& centers,
    const at::Tensor& widths, std::string_view kernel, const std::optional<at::Tensor>& mask,
    bool normalize, double sharpness, std::array<bool, 3> output_mask);

namespace detail {

enum class HistogramKernel : int { Sigmoid = 0, Soft = 1, Rbf = 2, Hard = 3 };

// A histogram problem, with x seen as (bags, N, F) and parameters as (F or 1, B).
struct HistogramShape {
  int64_t bags, n, features, bins;
  bool batched;        // x had a bag dimension
  bool shared_params;  // centers/widths are (B,), shared by all features
  HistogramKernel kernel;
};

// The one place histogram arguments are checked; every kernel calls it first. It also
// checks that every width is positive (reading the widths).
HistogramShape check_histogram(const at::Tensor& x, const at::Tensor& centers,
                               const at::Tensor& widths, std::string_view kernel,
                               const std::optional<at::Tensor>& mask, double sharpness);
void check_histogram_grad(const at::Tensor& grad_output, const at::Tensor& x,
                          const HistogramShape& shape);

// Per bag: the factor the sums are multiplied by (1 / number of present elements, 0 for an
// empty bag, or 1 without normalize), as a float tensor on x's device.
at::Tensor histogram_bag_scale(const at::Tensor& x3, const std::optional<at::Tensor>& mask,
                               const HistogramShape& shape, bool normalize);

}  // namespace detail
}  // namespace fastdl
