// max_pool2d and avg_pool2d: schemas, argument checks, autograd and the C++ entry points.
// Kernels: cpu/pooling.cpp and cuda/pooling.cu; window geometry: pooling_math.h.
#include "fastdl/common/cpu_isa.h"
#include "fastdl/pooling/pooling.h"

#include "fastdl/common/autograd.h"
#include "fastdl/common/checks.h"
#include "fastdl/common/dispatch.h"

#include <ATen/ops/empty.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>

namespace fastdl {
namespace {
constexpr const char* kMaxOp = "fastdl.max_pool2d";
constexpr const char* kAvgOp = "fastdl.avg_pool2d";
}  // namespace

namespace detail {

std::vector<int64_t> Pool2dShape::output_sizes() const {
  if (batched) return {batch, channels, out_h, out_w};
  return {channels, out_h, out_w};
}

int64_t pool_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                         bool ceil_mode) {
  const int64_t numerator =
      in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // Floor division (the numerator can be negative when the window exceeds the padded input).
  int64_t out = numerator / stride - ((numerator % stride != 0) && (numerator < 0) ? 1 : 0) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

namespace {

Pool2dShape check_pool2d(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         bool ceil_mode) {
  checks::floating(input, op, "input");
  const auto [kh, kw] = checks::int_pair(kernel_size, op, "kernel_size");
  const auto [sh, sw] = checks::int_pair(stride, op, "stride", std::array<int64_t, 2>{kh, kw});
  const auto [ph, pw] = checks::int_pair(padding, op, "padding");
  const auto [dh, dw] = checks::int_pair(dilation, op, "dilation");
  TORCH_CHECK(kh > 0 && kw > 0, op, ": kernel_size must be greater than zero, got (", kh, ", ", kw,
              ")");
  TORCH_CHECK(sh > 0 && sw > 0, op, ": stride must be greater than zero, got (", sh, ", ", sw, ")");
  TORCH_CHECK(dh > 0 && dw > 0, op, ": dilation must be greater than zero, got (", dh, ", ", dw,
              ")");
  TORCH_CHECK(ph >= 0 && pw >= 0, op, ": padding must be non-negative, got (", ph, ", ", pw, ")");
  TORCH_CHECK(ph <= kh / 2 && pw <= kw / 2, op,
              ": pad should be at most half of effective kernel size, got padding=(", ph, ", ", pw,
              "), kernel_size=(", kh, ", ", kw, ") and dilation=(", dh, ", ", dw, ")");
  const bool batched = input.dim() == 4;
  TORCH_CHECK((input.dim() == 3 && input.numel() > 0) ||
                  (batched && input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0),
              op,
              ": input must be a 3-d (C, H, W) or 4-d (N, C, H, W) tensor with non-zero C, H "
              "and W (N may be 0), got shape ",
              input.sizes());
  Pool2dShape s{};
  s.batched = batched;
  s.batch = batched ? input.size(0) : 1;
  s.channels = input.size(-3);
  s.in_h = input.size(-2);
  s.in_w = input.size(-1);
  s.kh = kh;
  s.kw = kw;
  s.sh = sh;
  s.sw = sw;
  s.ph = ph;
  s.pw = pw;
  s.dh = dh;
  s.dw = dw;
  s.out_h = pool_output_size(s.in_h, kh, sh, ph, dh, ceil_mode);
  s.out_w = pool_output_size(s.in_w, kw, sw, pw, dw, ceil_mode);
  TORCH_CHECK(s.out_h > 0 && s.out_w > 0, op, ": output size is too small: input ", input.sizes(),
              " with kernel_size=(", kh, ", ", kw, "), stride=(", sh, ", ", sw, "), padding=(", ph,
              ", ", pw, "), dilation=(", dh, ", ", dw, ") gives an output of ", s.out_h, "x",
              s.out_w);
  s.channels_last = batched && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return s;
}

void check_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                       const Pool2dShape& s) {
  checks::floating(grad_output, op, "grad_output");
  checks::same_device(grad_output, input, op, "grad_output", "input");
  const auto sizes = s.output_sizes();
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(sizes) &&
                  grad_output.scalar_type() == input.scalar_type(),
              op, ": grad_output must have the output's shape ", at::IntArrayRef(sizes),
              " and dtype ", input.scalar_type(), ", got ", grad_output.sizes(), " and ",
              grad_output.scalar_type());
}

}  // namespace

Pool2dShape check_max_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, bool ceil_mode) {
  return check_pool2d(kMaxOp, input, kernel_size, stride, padding, dilation, ceil_mode);
}

Pool2dShape check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& indices, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode) {
  const auto s = check_pool2d(kMaxOp, input, kernel_size, stride, padding, dilation, ceil_mode);
  check_grad_output(kMaxOp, grad_output, input, s);
  TORCH_CHECK(indices.defined(), kMaxOp, ": indices must be a tensor, got None");
  checks::same_device(indices, input, kMaxOp, "indices", "input");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.sizes() == grad_output.sizes(), kMaxOp,
              ": indices must be an int64 tensor of the output's shape ", grad_output.sizes(),
              ", got ", indices.scalar_type(), indices.sizes());
  return s;
}

Pool2dShape check_avg_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     bool ceil_mode, bool count_include_pad,
                                     std::optional<int64_t> divisor_override) {
  (void)count_include_pad;
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, kAvgOp,
              ": divisor_override must be non-zero (or None), got 0");
  return check_pool2d(kAvgOp, input, kernel_size, stride, padding, at::IntArrayRef{1}, ceil_mode);
}

Pool2dShape check_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, bool ceil_mode,
                                      bool count_include_pad,
                                      std::optional<int64_t> divisor_override) {
  const auto s = check_avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode,
                                          count_include_pad, divisor_override);
  check_grad_output(kAvgOp, grad_output, input, s);
  return s;
}

at::Tensor pool2d_kernel_layout(const at::Tensor& t, const Pool2dShape& shape) {
  const auto t4 = shape.batched ? t : t.unsqueeze(0);
  return t4.contiguous(shape.channels_last ? at::MemoryFormat::ChannelsLast
                                           : at::MemoryFormat::Contiguous);
}

at::Tensor pool2d_empty(const Pool2dShape& shape, int64_t h, int64_t w,
                        const at::TensorOptions& options) {
  return at::empty({shape.batch, shape.channels, h, w},
                   options.memory_format(shape.channels_last ? at::MemoryFormat::ChannelsLast
                                                             : at::MemoryFormat::Contiguous));
}

at::Tensor pool2d_result(const at::Tensor& t, const Pool2dShape& shape) {
  return shape.batched ? t : t.squeeze(0);
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save_geometry(AutogradContext* ctx, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                   at::IntArrayRef padding, bool ceil_mode) {
  ctx->saved_data["kernel_size"] = kernel_size.vec();
  ctx->saved_data["stride"] = stride.vec();
  ctx->saved_data["padding"] = padding.vec();
  ctx->saved_data["ceil_mode"] = ceil_mode;
}

class MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, indices] = FASTDL_CALL(max_pool2d_forward)
                                 .call(input, kernel_size, stride, padding, dilation, ceil_mode);
    ctx->save_for_backward({input, indices});
    save_geometry(ctx, kernel_size, stride, padding, ceil_mode);
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->mark_non_differentiable({indices});
    return {output, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined())
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    auto grad_input =
        FASTDL_CALL(max_pool2d_backward)
            .call(grads[0], saved[0], saved[1], ctx->saved_data["kernel_size"].toIntVector(),
                  ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
                  ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["ceil_mode"].toBool());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class AvgPool2dFunction : public torch::autograd::Function<AvgPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto output = FASTDL_CALL(avg_pool2d_forward)
                      .call(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override);
    ctx->save_for_backward({input});
    save_geometry(ctx, kernel_size, stride, padding, ceil_mode);
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] =
        divisor_override.has_value() ? c10::IValue(*divisor_override) : c10::IValue();
    return {output};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined())
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
              at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const auto& divisor = ctx->saved_data["divisor_override"];
    auto grad_input =
        FASTDL_CALL(avg_pool2d_backward)
            .call(grads[0], saved[0], ctx->saved_data["kernel_size"].toIntVector(),
                  ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
                  ctx->saved_data["ceil_mode"].toBool(),
                  ctx->saved_data["count_include_pad"].toBool(),
                  divisor.isNone() ? std::nullopt : std::optional<int64_t>(divisor.toInt()));
    return {grad_input,   at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_autograd(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  auto out = MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode);
  return {out[0], out[1]};
}

at::Tensor avg_pool2d_forward_autograd(const at::Tensor& input, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       bool ceil_mode, bool count_include_pad,
                                       std::optional<int64_t> divisor_override) {
  return AvgPool2dFunction::apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                  divisor_override)[0];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward(const at::Tensor& input,
                                                      at::IntArrayRef kernel_size,
                                                      at::IntArrayRef stride,
                                                      at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, bool ceil_mode) {
  return FASTDL_CALL(max_pool2d_forward)
      .call(input, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& indices, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode) {
  return FASTDL_CALL(max_pool2d_backward)
      .call(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor avg_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                              bool count_include_pad, std::optional<int64_t> divisor_override) {
  return FASTDL_CALL(avg_pool2d_forward)
      .call(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
  return FASTDL_CALL(avg_pool2d_backward)
      .call(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
            divisor_override);
}

at::Tensor max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode));
}

at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      std::optional<int64_t> divisor_override) {
  return avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override);
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "max_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride=[], int[2] padding=0, "
      "int[2] dilation=1, bool ceil_mode=False) -> (Tensor output, Tensor indices)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor grad_input");
  m.def(
      "avg_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride=[], int[2] padding=0, "
      "bool ceil_mode=False, bool count_include_pad=True, int? divisor_override=None) -> Tensor "
      "output");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor "
      "grad_input");
}

// The CPU kernels of cpu/pooling.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(pooling)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward_autograd);
  m.impl("max_pool2d_backward", autograd::not_differentiable_kernel());
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_autograd);
  m.impl("avg_pool2d_backward", autograd::not_differentiable_kernel());
}

// No autocast kernels: torch's CPU and CUDA autocast have no rule for pooling, which keeps the
// input's dtype; the kernels take float16/bfloat16 on both devices (computing in float32).

}  // namespace fastdl
