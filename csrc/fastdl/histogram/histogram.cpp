// histogram: schema, argument checks, autograd and the C++ entry points.
// Kernels: cpu/histogram.cpp and cuda/histogram.cu; formulas: histogram_math.h.
#include "fastdl/common/cpu_isa.h"
#include "fastdl/histogram/histogram.h"

#include "fastdl/common/autograd.h"
#include "fastdl/common/checks.h"
#include "fastdl/common/dispatch.h"

#include <ATen/ops/all.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <string>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.histogram";

detail::HistogramKernel parse_kernel(std::string_view name) {
  if (name == "sigmoid") return detail::HistogramKernel::Sigmoid;
  if (name == "soft") return detail::HistogramKernel::Soft;
  if (name == "rbf") return detail::HistogramKernel::Rbf;
  if (name == "hard") return detail::HistogramKernel::Hard;
  TORCH_CHECK_VALUE(false, kOp, ": kernel must be one of 'sigmoid', 'soft', 'rbf', 'hard', got '",
                    std::string(name), "'");
}
}  // namespace

namespace detail {

HistogramShape check_histogram(const at::Tensor& x, const at::Tensor& centers,
                               const at::Tensor& widths, std::string_view kernel,
                               const std::optional<at::Tensor>& mask, double sharpness) {
  HistogramShape s{};
  s.kernel = parse_kernel(kernel);
  TORCH_CHECK_VALUE(std::isfinite(sharpness) && sharpness > 0, kOp,
                    ": sharpness must be a finite positive number, got ", sharpness);
  checks::floating(x, kOp, "x");
  TORCH_CHECK(x.dim() == 2 || x.dim() == 3, kOp, ": x must have shape (bags, N, F) or (N, F), got ",
              x.sizes());
  s.batched = x.dim() == 3;
  s.bags = s.batched ? x.size(0) : 1;
  s.n = x.size(-2);
  s.features = x.size(-1);
  checks::floating(centers, kOp, "centers");
  TORCH_CHECK(centers.dim() == 1 || (centers.dim() == 2 && centers.size(0) == s.features), kOp,
              ": centers must have shape (F, B) = (", s.features, ", B) or (B,), got ",
              centers.sizes());
  s.shared_params = centers.dim() == 1;
  s.bins = centers.size(-1);
  TORCH_CHECK(s.bins >= 1, kOp, ": centers must hold at least one bin, got ", centers.sizes());
  checks::parameter(centers, x, centers.sizes(), kOp, "centers");
  checks::parameter(widths, x, centers.sizes(), kOp, "widths");
  if (present(mask)) {
    checks::same_device(*mask, x, kOp, "mask", "x");
    TORCH_CHECK(mask->scalar_type() == at::kBool, kOp, ": mask must be a bool tensor, got ",
                mask->scalar_type());
    const std::vector<int64_t> expected =
        s.batched ? std::vector<int64_t>{s.bags, s.n} : std::vector<int64_t>{s.n};
    TORCH_CHECK(mask->sizes().equals(expected), kOp, ": mask must have shape ",
                at::IntArrayRef(expected), " (bags, N), got ", mask->sizes());
  }
  // Widths are half-widths, bin widths or slopes: a non-positive (or NaN) one has no meaning.
  TORCH_CHECK_VALUE(widths.numel() == 0 || at::all(at::gt(widths, 0)).item<bool>(), kOp,
                    ": every entry of widths must be positive");
  return s;
}

void check_histogram_grad(const at::Tensor& grad_output, const at::Tensor& x,
                          const HistogramShape& shape) {
  checks::floating(grad_output, kOp, "grad_output");
  checks::same_device(grad_output, x, kOp, "grad_output", "x");
  const std::vector<int64_t> expected =
      shape.batched ? std::vector<int64_t>{shape.bags, shape.features, shape.bins}
                    : std::vector<int64_t>{shape.features, shape.bins};
  TORCH_CHECK(grad_output.sizes().equals(expected) && grad_output.scalar_type() == x.scalar_type(),
              kOp, ": grad_output must have shape ", at::IntArrayRef(expected), " and dtype ",
              x.scalar_type(), ", got ", grad_output.sizes(), " ", grad_output.scalar_type());
}

at::Tensor histogram_bag_scale(const at::Tensor& x3, const std::optional<at::Tensor>& mask,
                               const HistogramShape& shape, bool normalize) {
  const auto options =
      x3.options().dtype(x3.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  if (!normalize) return at::full({shape.bags}, 1.0, options);
  if (!mask.has_value() || !mask->defined()) {
    return at::full({shape.bags}, shape.n > 0 ? 1.0 / static_cast<double>(shape.n) : 0.0, options);
  }
  // 1 / count, and 0 for a bag without present elements (its histogram is all zeros).
  const auto count = at::sum(mask->reshape({shape.bags, shape.n}), {1}).to(options.dtype());
  return at::where(at::gt(count, 0), at::reciprocal(count.clamp_min(1)), at::zeros_like(count));
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class HistogramFunction : public torch::autograd::Function<HistogramFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& centers,
                               const at::Tensor& widths, c10::string_view kernel,
                               const std::optional<at::Tensor>& mask, bool normalize,
                               double sharpness) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto out =
        FASTDL_CALL(histogram_forward).call(x, centers, widths, kernel, mask, normalize, sharpness);
    autograd::save_with_optional(ctx, {x, centers, widths}, mask);
    ctx->saved_data["kernel"] = std::string(kernel);
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["sharpness"] = sharpness;
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    variable_list result(7);
    if (!grads[0].defined()) return result;
    // x, centers and widths are always present: their edges are 0, 1, 2.
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2)};
    const auto kernel = ctx->saved_data["kernel"].toStringRef();
    auto [gx, gc, gw] =
        FASTDL_CALL(histogram_backward)
            .call(grads[0], saved[0], saved[1], saved[2], kernel,
                  autograd::saved_optional(ctx, saved, 0), ctx->saved_data["normalize"].toBool(),
                  ctx->saved_data["sharpness"].toDouble(), mask);
    result[0] = gx;
    result[1] = gc;
    result[2] = gw;
    return result;
  }
};

at::Tensor histogram_forward_autograd(const at::Tensor& x, const at::Tensor& centers,
                                      const at::Tensor& widths, c10::string_view kernel,
                                      const std::optional<at::Tensor>& mask, bool normalize,
                                      double sharpness) {
  return HistogramFunction::apply(x, centers, widths, kernel, mask, normalize, sharpness)[0];
}

}  // namespace

at::Tensor histogram_forward(const at::Tensor& x, const at::Tensor& centers,
                             const at::Tensor& widths, std::string_view kernel,
                             const std::optional<at::Tensor>& mask, bool normalize,
                             double sharpness) {
  return FASTDL_CALL(histogram_forward)
      .call(x, centers, widths, kernel, mask, normalize, sharpness);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_backward(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& centers,
    const at::Tensor& widths, std::string_view kernel, const std::optional<at::Tensor>& mask,
    bool normalize, double sharpness, std::array<bool, 3> output_mask) {
  return FASTDL_CALL(histogram_backward)
      .call(grad_output, x, centers, widths, kernel, mask, normalize, sharpness, output_mask);
}

at::Tensor histogram(const at::Tensor& x, const at::Tensor& centers, const at::Tensor& widths,
                     std::string_view kernel, const std::optional<at::Tensor>& mask, bool normalize,
                     double sharpness) {
  return histogram_forward(x, centers, widths, kernel, mask, normalize, sharpness);
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "histogram_forward(Tensor x, Tensor centers, Tensor widths, str kernel=\"soft\", "
      "Tensor? mask=None, bool normalize=True, float sharpness=1000.) -> Tensor");
  m.def(
      "histogram_backward(Tensor grad_output, Tensor x, Tensor centers, Tensor widths, "
      "str kernel, Tensor? mask, bool normalize, float sharpness, bool[3] output_mask) "
      "-> (Tensor grad_x, Tensor grad_centers, Tensor grad_widths)");
}

// The CPU kernels of cpu/histogram.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(histogram)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("histogram_forward", &histogram_forward_autograd);
  m.impl("histogram_backward", autograd::not_differentiable_kernel());
}

// No autocast kernels: the reference composition's ops (sigmoid, exp, relu, sum) have no
// autocast rule on either device and keep x's dtype, and so does this op; the kernels take
// float16/bfloat16 x on both devices (computing in float32).

}  // namespace fastdl
