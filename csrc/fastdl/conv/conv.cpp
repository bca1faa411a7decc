// conv2d: schema, argument checks, autograd, autocast and the C++ entry points.
// Kernels: cpu/conv.cpp and cuda/conv.cu; geometry: conv_math.h.
#include "fastdl/common/cpu_isa.h"
#include "fastdl/conv/conv.h"

#include "fastdl/common/autocast.h"
#include "fastdl/common/autograd.h"
#include "fastdl/common/checks.h"
#include "fastdl/common/dispatch.h"
#include "fastdl/conv/conv_math.h"

#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.conv2d";
}  // namespace

namespace detail {

std::vector<int64_t> Conv2dShape::output_sizes() const {
  if (batched) return {batch, out_channels, out_h, out_w};
  return {out_channels, out_h, out_w};
}

Conv2dShape check_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
  checks::floating(input, kOp, "input");
  TORCH_CHECK(weight.defined(), kOp, ": weight must be a tensor, got None");
  checks::same_device(weight, input, kOp, "weight", "input");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), kOp,
              ": weight must have the input's dtype (", input.scalar_type(), "), got ",
              weight.scalar_type());
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, kOp,
              ": expected a 3-d (unbatched) or 4-d (batched) input, but got input of size: ",
              input.sizes());
  TORCH_CHECK(
      weight.dim() == 4, kOp,
      ": weight must be a 4-d (out_channels, in_channels / groups, kH, kW) tensor, got shape ",
      weight.sizes());
  const auto [sh, sw] = checks::int_pair(stride, kOp, "stride");
  const auto [ph, pw] = checks::int_pair(padding, kOp, "padding");
  const auto [dh, dw] = checks::int_pair(dilation, kOp, "dilation");
  TORCH_CHECK(sh > 0 && sw > 0, kOp, ": non-positive stride is not supported, got stride=(", sh,
              ", ", sw, ")");
  TORCH_CHECK(ph >= 0 && pw >= 0, kOp, ": negative padding is not supported, got padding=(", ph,
              ", ", pw, ")");
  TORCH_CHECK(dh > 0 && dw > 0, kOp, ": dilation should be greater than zero, got dilation=(", dh,
              ", ", dw, ")");
  TORCH_CHECK(groups > 0, kOp, ": non-positive groups is not supported, got groups=", groups);

  Conv2dShape s{};
  s.batched = input.dim() == 4;
  s.batch = s.batched ? input.size(0) : 1;
  s.in_channels = input.size(-3);
  s.in_h = input.size(-2);
  s.in_w = input.size(-1);
  s.out_channels = weight.size(0);
  s.kh = weight.size(2);
  s.kw = weight.size(3);
  s.sh = sh;
  s.sw = sw;
  s.ph = ph;
  s.pw = pw;
  s.dh = dh;
  s.dw = dw;
  s.groups = groups;
  TORCH_CHECK(s.out_channels % groups == 0, kOp, ": given groups=", groups,
              ", expected weight to be divisible by ", groups,
              " at dimension 0 (out_channels), but got weight of size ", weight.sizes());
  TORCH_CHECK(s.out_channels > 0 && s.kh > 0 && s.kw > 0, kOp,
              ": weight must have non-zero out_channels and kernel size, got weight of size ",
              weight.sizes());
  TORCH_CHECK(s.in_channels == weight.size(1) * groups, kOp, ": given groups=", groups,
              ", weight of size ", weight.sizes(), ", expected input", input.sizes(), " to have ",
              weight.size(1) * groups,
              " channels (in_channels = weight.size(1) * groups), but got ", s.in_channels,
              " channels instead");
  TORCH_CHECK(s.in_channels > 0, kOp, ": input must have non-zero channels, got shape ",
              input.sizes());
  const int64_t padded_h = s.in_h + 2 * ph, padded_w = s.in_w + 2 * pw;
  TORCH_CHECK(padded_h >= dh * (s.kh - 1) + 1 && padded_w >= dw * (s.kw - 1) + 1, kOp,
              ": calculated padded input size per channel: (", padded_h, " x ", padded_w,
              "). Kernel size: (", dh * (s.kh - 1) + 1, " x ", dw * (s.kw - 1) + 1,
              ") (dilated). Kernel size can't be greater than actual input size");
  s.out_h = conv_output_size(s.in_h, s.kh, sh, ph, dh);
  s.out_w = conv_output_size(s.in_w, s.kw, sw, pw, dw);
  if (present(bias)) {
    checks::same_device(*bias, input, kOp, "bias", "input");
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), kOp,
                ": bias must have the input's dtype (", input.scalar_type(), "), got ",
                bias->scalar_type());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.out_channels, kOp,
                ": bias must have shape (", s.out_channels, ",) (out_channels), got ",
                bias->sizes());
  }
  s.channels_last = s.batched && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return s;
}

Conv2dShape check_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups) {
  const auto s =
      check_conv2d_forward(input, weight, std::nullopt, stride, padding, dilation, groups);
  checks::floating(grad_output, kOp, "grad_output");
  checks::same_device(grad_output, input, kOp, "grad_output", "input");
  const auto sizes = s.output_sizes();
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(sizes) &&
                  grad_output.scalar_type() == input.scalar_type(),
              kOp, ": grad_output must have the output's shape ", at::IntArrayRef(sizes),
              " and dtype ", input.scalar_type(), ", got ", grad_output.sizes(), " and ",
              grad_output.scalar_type());
  return s;
}

at::Tensor conv2d_kernel_layout(const at::Tensor& t, const Conv2dShape& shape) {
  const auto t4 = t.dim() == 3 ? t.unsqueeze(0) : t;
  return t4.contiguous();
}

at::Tensor conv2d_result(const at::Tensor& t, const Conv2dShape& shape) {
  if (!shape.batched) return t.squeeze(0);
  return shape.channels_last ? t.contiguous(at::MemoryFormat::ChannelsLast) : t;
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto output =
        FASTDL_CALL(conv2d_forward).call(input, weight, bias, stride, padding, dilation, groups);
    ctx->save_for_backward({input, weight});
    autograd::InputEdges::save(ctx, {true, true, present(bias)});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list none(7);
    if (!grads[0].defined()) return none;
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask{autograd::InputEdges::needs_grad(ctx, 0),
                                   autograd::InputEdges::needs_grad(ctx, 1),
                                   autograd::InputEdges::needs_grad(ctx, 2)};
    auto [gi, gw, gb] =
        FASTDL_CALL(conv2d_backward)
            .call(grads[0], saved[0], saved[1], ctx->saved_data["stride"].toIntVector(),
                  ctx->saved_data["padding"].toIntVector(),
                  ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt(),
                  mask);
    return {gi, gw, gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv2d_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups) {
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

// Autocast, as torch's conv2d on both devices: run in the autocast dtype (float16 by default
// on CUDA, bfloat16 on CPU); inputs autocast leaves alone (float64) go through unchanged.
template <c10::DeviceType device>
at::Tensor conv2d_forward_autocast(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups) {
  autocast::BelowAutocast<device> below;
  const auto dtype = at::autocast::get_autocast_dtype(device);
  const auto cast = [&](const at::Tensor& t) {
    return at::autocast::cached_cast(dtype, t, device);
  };
  std::optional<at::Tensor> b = bias;
  if (present(bias)) b = cast(*bias);
  return FASTDL_CALL(conv2d_forward)
      .call(cast(input), cast(weight), b, stride, padding, dilation, groups);
}

}  // namespace

at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return FASTDL_CALL(conv2d_forward).call(input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  return FASTDL_CALL(conv2d_backward)
      .call(grad_output, input, weight, stride, padding, dilation, groups, output_mask);
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_forward(input, weight, bias, stride, padding, dilation, groups);
}

at::Tensor conv1d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                  int64_t dilation, int64_t groups) {
  TORCH_CHECK(input.dim() == 2 || input.dim() == 3,
              "fastdl.conv1d: expected a 2-d (unbatched) or 3-d (batched) "
              "input, but got input of size: ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 3,
              "fastdl.conv1d: weight must be a 3-d (out_channels, in_channels / groups, k) "
              "tensor, got shape ",
              weight.sizes());
  const std::vector<int64_t> s{1, stride}, p{0, padding}, d{1, dilation};
  const auto out = fastdl::conv2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, s, p, d, groups);
  return out.squeeze(-2);
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "conv2d_forward(Tensor input, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] "
      "padding=0, "
      "int[2] dilation=1, int groups=1) -> Tensor output");
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] "
      "padding, "
      "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor grad_input, Tensor "
      "grad_weight, "
      "Tensor grad_bias)");
}

// The CPU kernels of cpu/conv.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(conv)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("conv2d_forward", &conv2d_forward_autograd);
  m.impl("conv2d_backward", autograd::not_differentiable_kernel());
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCUDA, m) {
  m.impl("conv2d_forward", &conv2d_forward_autocast<c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCPU, m) {
  m.impl("conv2d_forward", &conv2d_forward_autocast<c10::DeviceType::CPU>);
}

}  // namespace fastdl
