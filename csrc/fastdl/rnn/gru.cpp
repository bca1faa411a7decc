// gru: schema, argument checks, autocast, the device-independent driver (GEMMs and the
// time loop around a device's fused step kernels), autograd and the C++ entry points.
// Kernels: cpu/rnn.cpp and cuda/rnn.cu; gate formulas: rnn_math.h.
#include "fastdl/common/autocast.h"
#include "fastdl/common/autograd.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/dispatch.h"
#include "fastdl/rnn/rnn.h"
#include "fastdl/rnn/rnn_common.h"

#include <ATen/autocast_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.gru";

}  // namespace

namespace detail {

GruForward gru_forward(const RnnKernels& kernels, const at::Tensor& input, const at::Tensor& hx,
                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                       const std::optional<at::Tensor>& bias_ih,
                       const std::optional<at::Tensor>& bias_hh,
                       const std::optional<at::Tensor>& lengths, bool reverse) {
  const auto s = check_rnn_arguments(kOp, 3, input, hx, nullptr, weight_ih, weight_hh, bias_ih,
                                     bias_hh, std::nullopt, std::nullopt, lengths);
  const int64_t T = s.steps, B = s.batch, H = s.hidden;
  const auto x = input.contiguous();
  const auto opts = x.options();
  const auto h0 = hx.contiguous();

  // Input projections of every step in one GEMM (biases are added by the step kernel, which
  // needs W_hn h + b_hn apart from W_in x + b_in).
  const auto x_gates = rnn_mm(kernels, x.view({T * B, s.input}), weight_ih.t()).view({T, B, 3 * H});
  auto work = at::empty({T, B, 4 * H}, opts.dtype(rnn_state_dtype(x)));
  auto hiddens = at::empty({T, B, H}, opts);
  auto output = at::empty({T, B, H}, opts);
  auto h_gates = at::empty({B, 3 * H}, opts);
  const StepWeight w_hh_t(kernels, weight_hh.t());  // (H, 3H)

  GruStepForward step;
  step.bias_ih = contiguous_or_undefined(bias_ih);
  step.bias_hh = contiguous_or_undefined(bias_hh);
  step.lengths = lengths_for(lengths, x);
  step.h_gates = h_gates;
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = time_of(k, T, reverse);
    step.h_prev = k == 0 ? h0 : hiddens[previous_time(t, reverse)];
    w_hh_t.multiply(step.h_prev, h_gates, false);
    step.x_gates = x_gates[t];
    step.t = t;
    step.work = work[t];
    step.h = hiddens[t];
    step.output = output[t];
    kernels.gru_step_forward(step);
  }
  auto h_n = T > 0 ? hiddens[reverse ? 0 : T - 1].clone() : h0.clone();
  return {output, h_n, work, hiddens};
}

GruGrads gru_backward(const RnnKernels& kernels, const std::optional<at::Tensor>& grad_output,
                      const std::optional<at::Tensor>& grad_hy, const at::Tensor& input,
                      const at::Tensor& hx, const at::Tensor& weight_ih,
                      const at::Tensor& weight_hh, const std::optional<at::Tensor>& lengths,
                      bool reverse, const at::Tensor& work, const at::Tensor& hiddens,
                      std::array<bool, 6> output_mask) {
  const auto s = check_rnn_arguments(kOp, 3, input, hx, nullptr, weight_ih, weight_hh, std::nullopt,
                                     std::nullopt, std::nullopt, std::nullopt, lengths);
  const int64_t T = s.steps, B = s.batch, H = s.hidden;
  const auto x = input.contiguous();
  const auto opts = x.options();
  const auto h0 = hx.contiguous();
  TORCH_CHECK(work.sizes() == at::IntArrayRef({T, B, 4 * H}) &&
                  hiddens.sizes() == at::IntArrayRef({T, B, H}),
              kOp, ": the saved work/hiddens do not match the input's shape");
  if (present(grad_output)) checks::shape(*grad_output, {T, B, H}, kOp, "grad_output");

  // The running gradient of the state, in the state dtype.
  const auto state_dtype = rnn_state_dtype(x);
  auto dh = present(grad_hy) ? grad_hy->contiguous().to(state_dtype, false, /*copy=*/true)
                             : at::zeros({B, H}, opts.dtype(state_dtype));
  auto dx_gates = at::empty({T, B, 3 * H}, opts);
  auto dh_gates = at::empty({T, B, 3 * H}, opts);
  const auto gy = present(grad_output) ? grad_output->contiguous() : at::Tensor();
  const StepWeight w_hh(kernels, weight_hh);

  const auto len = lengths_for(lengths, x);
  GruStepBackward step;
  step.dh = dh;
  step.lengths = len;
  for (int64_t k = T - 1; k >= 0; --k) {
    const int64_t t = time_of(k, T, reverse);
    step.t = t;
    step.work = work[t];
    step.h_prev = k == 0 ? h0 : hiddens[previous_time(t, reverse)];
    step.grad_output = gy.defined() ? gy[t] : at::Tensor();
    step.dx_gates = dx_gates[t];
    step.dh_gates = dh_gates[t];
    kernels.gru_step_backward(step);
    w_hh.multiply(dh_gates[t], dh, true);  // dh(t-1) = z ⊙ dh(t) + dgh W_hh
  }

  const auto dgi = dx_gates.view({T * B, 3 * H});
  const auto dgh = dh_gates.view({T * B, 3 * H});
  at::Tensor d_input, d_w_ih, d_w_hh, d_b_ih, d_b_hh;
  if (output_mask[0]) d_input = rnn_mm(kernels, dgi, weight_ih).view({T, B, s.input});
  if (output_mask[2]) d_w_ih = rnn_mm(kernels, dgi.t(), x.view({T * B, s.input}));
  if (output_mask[3])
    d_w_hh = recurrent_weight_grad(kernels, dh_gates, hiddens, h0, weight_hh, len, reverse);
  if (output_mask[4]) {
    d_b_ih = at::empty({3 * H}, opts);
    kernels.column_sums(dgi, d_b_ih);
  }
  if (output_mask[5]) {
    d_b_hh = at::empty({3 * H}, opts);
    kernels.column_sums(dgh, d_b_hh);
  }
  return {d_input, output_mask[1] ? dh.to(x.scalar_type()) : at::Tensor(), d_w_ih, d_w_hh, d_b_ih,
          d_b_hh};
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class GruFunction : public torch::autograd::Function<GruFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& hx,
                               const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                               const std::optional<at::Tensor>& bias_ih,
                               const std::optional<at::Tensor>& bias_hh,
                               const std::optional<at::Tensor>& lengths, bool reverse) {
    autograd::InputEdges::save(
        ctx, {true, true, true, true, present(bias_ih), present(bias_hh), present(lengths)});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, h_n, work, hiddens] =
        FASTDL_CALL(gru_forward)
            .call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse);
    autograd::save_with_optional(ctx, {input, hx, weight_ih, weight_hh, work, hiddens}, lengths);
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({work, hiddens});
    return {output, h_n, work, hiddens};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    std::array<bool, 6> mask{};
    for (size_t k = 0; k < 6; ++k) mask[k] = autograd::InputEdges::needs_grad(ctx, k);
    auto grad = [&](size_t i) {
      return grads[i].defined() ? std::optional<at::Tensor>(grads[i]) : std::nullopt;
    };
    variable_list out(8);
    if (!grads[0].defined() && !grads[1].defined()) return out;
    auto g = FASTDL_CALL(gru_backward)
                 .call(grad(0), grad(1), saved[0], saved[1], saved[2], saved[3],
                       autograd::saved_optional(ctx, saved, 0), ctx->saved_data["reverse"].toBool(),
                       saved[4], saved[5], mask);
    std::tie(out[0], out[1], out[2], out[3], out[4], out[5]) = g;
    return out;
  }
};

GruForward gru_forward_autograd(const at::Tensor& input, const at::Tensor& hx,
                                const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                const std::optional<at::Tensor>& bias_ih,
                                const std::optional<at::Tensor>& bias_hh,
                                const std::optional<at::Tensor>& lengths, bool reverse) {
  auto o = GruFunction::apply(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse);
  return {o[0], o[1], o[2], o[3]};
}

// Autocast on CUDA, as torch's gru: run in the autocast dtype (float16 by default). torch's CPU
// autocast has no rule for gru: the input's dtype is kept there.
GruForward gru_forward_autocast_cuda(const at::Tensor& input, const at::Tensor& hx,
                                     const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                     const std::optional<at::Tensor>& bias_ih,
                                     const std::optional<at::Tensor>& bias_hh,
                                     const std::optional<at::Tensor>& lengths, bool reverse) {
  autocast::BelowAutocast<c10::DeviceType::CUDA> below;
  const auto dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  const auto cast = [&](const auto& t) {
    return at::autocast::cached_cast(dtype, t, c10::DeviceType::CUDA);
  };
  return FASTDL_CALL(gru_forward)
      .call(cast(input), cast(hx), cast(weight_ih), cast(weight_hh), cast(bias_ih), cast(bias_hh),
            lengths, reverse);
}

}  // namespace

GruForward gru_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& weight_ih,
                       const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                       const std::optional<at::Tensor>& bias_hh,
                       const std::optional<at::Tensor>& lengths, bool reverse) {
  return FASTDL_CALL(gru_forward)
      .call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse);
}

GruGrads gru_backward(const std::optional<at::Tensor>& grad_output,
                      const std::optional<at::Tensor>& grad_hy, const at::Tensor& input,
                      const at::Tensor& hx, const at::Tensor& weight_ih,
                      const at::Tensor& weight_hh, const std::optional<at::Tensor>& lengths,
                      bool reverse, const at::Tensor& work, const at::Tensor& hiddens,
                      std::array<bool, 6> output_mask) {
  return FASTDL_CALL(gru_backward)
      .call(grad_output, grad_hy, input, hx, weight_ih, weight_hh, lengths, reverse, work, hiddens,
            output_mask);
}

std::tuple<at::Tensor, at::Tensor> gru(const at::Tensor& input, const at::Tensor& hx,
                                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                       const std::optional<at::Tensor>& bias_ih,
                                       const std::optional<at::Tensor>& bias_hh,
                                       const std::optional<at::Tensor>& lengths, bool reverse) {
  auto o = gru_forward(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse);
  return {std::get<0>(o), std::get<1>(o)};
}

at::Tensor gru_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& weight_ih,
                    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                    const std::optional<at::Tensor>& bias_hh) {
  TORCH_CHECK(input.dim() == 2, "fastdl.gru_cell: input must have shape (batch, input_size), got ",
              input.sizes());
  return std::get<1>(gru(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh));
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "gru_forward(Tensor input, Tensor hx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih=None, Tensor? bias_hh=None, Tensor? lengths=None, bool reverse=False) "
      "-> (Tensor output, Tensor h_n, Tensor work, Tensor hiddens)");
  m.def(
      "gru_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor hx, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? lengths, bool reverse, Tensor work, "
      "Tensor hiddens, bool[6] output_mask) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh)");
}

// The CPU kernels of cpu/rnn.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(gru)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("gru_forward", &gru_forward_autograd);
  m.impl("gru_backward", autograd::not_differentiable_kernel());
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCUDA, m) { m.impl("gru_forward", &gru_forward_autocast_cuda); }

}  // namespace fastdl
