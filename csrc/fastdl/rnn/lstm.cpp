// lstm: schema, argument checks, autocast, the device-independent driver (GEMMs and the
// time loop around a device's fused step kernels), autograd and the C++ entry points.
// Kernels: cpu/rnn.cpp and cuda/rnn.cu; gate formulas: rnn_math.h.
#include "fastdl/common/autocast.h"
#include "fastdl/common/autograd.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/dispatch.h"
#include "fastdl/rnn/rnn.h"
#include "fastdl/rnn/rnn_common.h"

#include <ATen/autocast_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.lstm";

}  // namespace

namespace detail {

LstmForward lstm_forward(const RnnKernels& kernels, const at::Tensor& input, const at::Tensor& hx,
                         const at::Tensor& cx, const at::Tensor& weight_ih,
                         const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                         const std::optional<at::Tensor>& bias_hh,
                         const std::optional<at::Tensor>& weight_hr,
                         const std::optional<at::Tensor>& peephole,
                         const std::optional<at::Tensor>& lengths, bool reverse) {
  const auto s = check_rnn_arguments(kOp, 4, input, hx, &cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                     weight_hr, peephole, lengths);
  const int64_t T = s.steps, B = s.batch, H = s.hidden, P = s.state;
  const bool projected = present(weight_hr);
  const auto x = input.contiguous();
  const auto opts = x.options();
  const auto state_opts = opts.dtype(rnn_state_dtype(x));
  const auto h0 = hx.contiguous(), c0 = cx.contiguous().to(state_opts.dtype());
  const auto len = lengths_for(lengths, x);

  // Input projections of every step in one GEMM (biases are added by the step kernel).
  const auto x_gates = rnn_mm(kernels, x.view({T * B, s.input}), weight_ih.t()).view({T, B, 4 * H});
  auto gates = at::empty({T, B, 4 * H}, state_opts);
  auto cells = at::empty({T, B, H}, state_opts);
  auto hiddens = at::empty({T, B, P}, opts);
  auto output = at::empty({T, B, P}, opts);
  auto hidden_pre = at::empty({projected ? T : 0, B, H}, opts);
  auto h_gates = at::empty({B, 4 * H}, opts);
  const StepWeight w_hh_t(kernels, weight_hh.t());  // (H, 4H)
  const StepWeight w_hr_t(kernels, projected ? weight_hr->t() : at::Tensor());

  LstmStepForward step;
  step.bias_ih = contiguous_or_undefined(bias_ih);
  step.bias_hh = contiguous_or_undefined(bias_hh);
  step.peephole = contiguous_or_undefined(peephole);
  step.lengths = len;
  step.h_gates = h_gates;
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = time_of(k, T, reverse);
    const auto h_prev = k == 0 ? h0 : hiddens[previous_time(t, reverse)];
    step.c_prev = k == 0 ? c0 : cells[previous_time(t, reverse)];
    step.x_gates = x_gates[t];
    step.h_prev = h_prev;
    step.t = t;
    step.gates = gates[t];
    step.c = cells[t];
    step.h = projected ? hidden_pre[t] : hiddens[t];
    step.output = projected ? at::Tensor() : output[t];
    w_hh_t.lstm_step_forward(step);
    if (projected) {
      auto state = hiddens[t];
      w_hr_t.multiply(hidden_pre[t], state, false);
      kernels.carry_state(state, h_prev, output[t], len, t);
    }
  }
  const int64_t last = reverse ? 0 : T - 1;
  auto h_n = T > 0 ? hiddens[last].clone() : h0.clone();
  auto c_n = (T > 0 ? cells[last] : c0).to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  return {output, h_n, c_n, gates, cells, hiddens, hidden_pre};
}

LstmGrads lstm_backward(const RnnKernels& kernels, const std::optional<at::Tensor>& grad_output,
                        const std::optional<at::Tensor>& grad_hy,
                        const std::optional<at::Tensor>& grad_cy, const at::Tensor& input,
                        const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& weight_ih,
                        const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_hr,
                        const std::optional<at::Tensor>& peephole,
                        const std::optional<at::Tensor>& lengths, bool reverse,
                        const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& hiddens,
                        const at::Tensor& hidden_pre, std::array<bool, 9> output_mask) {
  const auto s = check_rnn_arguments(kOp, 4, input, hx, &cx, weight_ih, weight_hh, std::nullopt,
                                     std::nullopt, weight_hr, peephole, lengths);
  const int64_t T = s.steps, B = s.batch, H = s.hidden, P = s.state;
  const bool projected = present(weight_hr);
  const auto x = input.contiguous();
  const auto opts = x.options();
  const auto state_opts = opts.dtype(rnn_state_dtype(x));
  const auto h0 = hx.contiguous(), c0 = cx.contiguous().to(state_opts.dtype());
  const auto len = lengths_for(lengths, x);
  TORCH_CHECK(gates.sizes() == at::IntArrayRef({T, B, 4 * H}) &&
                  cells.sizes() == at::IntArrayRef({T, B, H}) &&
                  hiddens.sizes() == at::IntArrayRef({T, B, P}),
              kOp, ": the saved gates/cells/hiddens do not match the input's shape");
  if (present(grad_output)) checks::shape(*grad_output, {T, B, P}, kOp, "grad_output");
  const auto gy = present(grad_output) ? grad_output->contiguous() : at::Tensor();

  // Running gradients of the state after the step being processed (state dtype).
  const auto state_copy = [&](const std::optional<at::Tensor>& g, at::IntArrayRef shape) {
    return present(g) ? g->contiguous().to(state_opts.dtype(), false, /*copy=*/true)
                      : at::zeros(shape, state_opts);
  };
  auto dh = state_copy(grad_hy, {B, P});
  auto dc = state_copy(grad_cy, {B, H});
  auto dgates = at::empty({T, B, 4 * H}, opts);
  auto dh_total = at::empty({projected ? T : 0, B, P}, opts);
  auto dr = projected ? at::empty({B, H}, state_opts) : at::Tensor();
  const StepWeight w_hr(kernels, projected ? *weight_hr : at::Tensor());
  const StepWeight w_hh(kernels, weight_hh);

  LstmStepBackward step;
  step.peephole = contiguous_or_undefined(peephole);
  step.dc = dc;
  step.lengths = len;
  step.dh_is_state = !projected;
  for (int64_t k = T - 1; k >= 0; --k) {
    const int64_t t = time_of(k, T, reverse);
    step.t = t;
    step.gates = gates[t];
    step.c = cells[t];
    step.c_prev = k == 0 ? c0 : cells[previous_time(t, reverse)];
    step.dgates = dgates[t];
    if (projected) {
      auto dh_total_t = dh_total[t];
      kernels.split_state_grad(dh, gy.defined() ? gy[t] : at::Tensor(), dh_total_t, len, t);
      w_hr.multiply(dh_total_t, dr, false);
      step.dh = dr;
      step.grad_output = at::Tensor();
    } else {
      step.dh = dh;
      step.grad_output = gy.defined() ? gy[t] : at::Tensor();
    }
    kernels.lstm_step_backward(step);
    w_hh.multiply(dgates[t], dh, true);  // dh(t-1) += dgates W_hh
  }

  const auto dgates_2d = dgates.view({T * B, 4 * H});
  at::Tensor d_input, d_w_ih, d_w_hh, d_b_ih, d_b_hh, d_w_hr, d_peephole;
  if (output_mask[0]) d_input = rnn_mm(kernels, dgates_2d, weight_ih).view({T, B, s.input});
  if (output_mask[3]) d_w_ih = rnn_mm(kernels, dgates_2d.t(), x.view({T * B, s.input}));
  if (output_mask[4])
    d_w_hh = recurrent_weight_grad(kernels, dgates, hiddens, h0, weight_hh, len, reverse);
  if (output_mask[5] || output_mask[6]) {
    auto db = at::empty({4 * H}, opts);
    kernels.column_sums(dgates_2d, db);
    if (output_mask[5]) d_b_ih = db;
    if (output_mask[6]) d_b_hh = output_mask[5] ? db.clone() : db;
  }
  if (output_mask[7] && projected) {
    d_w_hr = rnn_mm(kernels, dh_total.view({T * B, P}).t(), hidden_pre.view({T * B, H}));
  }
  if (output_mask[8] && present(peephole)) {
    // c(t-1) for every step: c0 then the cells shifted by one in processing order.
    at::Tensor c_prev_all = T == 0    ? cells
                            : reverse ? at::cat({cells.narrow(0, 1, T - 1), c0.unsqueeze(0)})
                                      : at::cat({c0.unsqueeze(0), cells.narrow(0, 0, T - 1)});
    d_peephole = at::empty({3, H}, opts);
    kernels.peephole_grad(dgates_2d, c_prev_all.view({T * B, H}), cells.view({T * B, H}),
                          d_peephole);
  }
  return {d_input,
          output_mask[1] ? dh.to(x.scalar_type()) : at::Tensor(),
          output_mask[2] ? dc.to(x.scalar_type()) : at::Tensor(),
          d_w_ih,
          d_w_hh,
          d_b_ih,
          d_b_hh,
          d_w_hr,
          d_peephole};
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class LstmFunction : public torch::autograd::Function<LstmFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& hx,
                               const at::Tensor& cx, const at::Tensor& weight_ih,
                               const at::Tensor& weight_hh,
                               const std::optional<at::Tensor>& bias_ih,
                               const std::optional<at::Tensor>& bias_hh,
                               const std::optional<at::Tensor>& weight_hr,
                               const std::optional<at::Tensor>& peephole,
                               const std::optional<at::Tensor>& lengths, bool reverse) {
    autograd::InputEdges::save(
        ctx, {true, true, true, true, true, present(bias_ih), present(bias_hh), present(weight_hr),
              present(peephole), present(lengths)});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, h_n, c_n, gates, cells, hiddens, hidden_pre] =
        FASTDL_CALL(lstm_forward)
            .call(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, peephole,
                  lengths, reverse);
    autograd::save_with_optional(
        ctx, {input, hx, cx, weight_ih, weight_hh, gates, cells, hiddens, hidden_pre}, weight_hr,
        peephole, lengths);
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({gates, cells, hiddens, hidden_pre});
    return {output, h_n, c_n, gates, cells, hiddens, hidden_pre};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto grad = [&](size_t i) {
      return grads[i].defined() ? std::optional<at::Tensor>(grads[i]) : std::nullopt;
    };
    std::array<bool, 9> mask{};
    for (size_t k = 0; k < 9; ++k) mask[k] = autograd::InputEdges::needs_grad(ctx, k);
    variable_list out(11);
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined()) return out;
    auto g =
        FASTDL_CALL(lstm_backward)
            .call(grad(0), grad(1), grad(2), saved[0], saved[1], saved[2], saved[3], saved[4],
                  autograd::saved_optional(ctx, saved, 0), autograd::saved_optional(ctx, saved, 1),
                  autograd::saved_optional(ctx, saved, 2), ctx->saved_data["reverse"].toBool(),
                  saved[5], saved[6], saved[7], saved[8], mask);
    std::tie(out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], out[8]) = g;
    return out;
  }
};

LstmForward lstm_forward_autograd(const at::Tensor& input, const at::Tensor& hx,
                                  const at::Tensor& cx, const at::Tensor& weight_ih,
                                  const at::Tensor& weight_hh,
                                  const std::optional<at::Tensor>& bias_ih,
                                  const std::optional<at::Tensor>& bias_hh,
                                  const std::optional<at::Tensor>& weight_hr,
                                  const std::optional<at::Tensor>& peephole,
                                  const std::optional<at::Tensor>& lengths, bool reverse) {
  auto o = LstmFunction::apply(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                               peephole, lengths, reverse);
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6]};
}

// Autocast, as torch's lstm on both devices: run in the autocast dtype (float16 by default on
// CUDA, bfloat16 on CPU).
template <c10::DeviceType device>
LstmForward lstm_forward_autocast(const at::Tensor& input, const at::Tensor& hx,
                                  const at::Tensor& cx, const at::Tensor& weight_ih,
                                  const at::Tensor& weight_hh,
                                  const std::optional<at::Tensor>& bias_ih,
                                  const std::optional<at::Tensor>& bias_hh,
                                  const std::optional<at::Tensor>& weight_hr,
                                  const std::optional<at::Tensor>& peephole,
                                  const std::optional<at::Tensor>& lengths, bool reverse) {
  autocast::BelowAutocast<device> below;
  const auto dtype = at::autocast::get_autocast_dtype(device);
  const auto cast = [&](const auto& t) { return at::autocast::cached_cast(dtype, t, device); };
  return FASTDL_CALL(lstm_forward)
      .call(cast(input), cast(hx), cast(cx), cast(weight_ih), cast(weight_hh), cast(bias_ih),
            cast(bias_hh), cast(weight_hr), cast(peephole), lengths, reverse);
}

}  // namespace

LstmForward lstm_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                         const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                         const std::optional<at::Tensor>& bias_ih,
                         const std::optional<at::Tensor>& bias_hh,
                         const std::optional<at::Tensor>& weight_hr,
                         const std::optional<at::Tensor>& peephole,
                         const std::optional<at::Tensor>& lengths, bool reverse) {
  return FASTDL_CALL(lstm_forward)
      .call(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, peephole, lengths,
            reverse);
}

LstmGrads lstm_backward(const std::optional<at::Tensor>& grad_output,
                        const std::optional<at::Tensor>& grad_hy,
                        const std::optional<at::Tensor>& grad_cy, const at::Tensor& input,
                        const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& weight_ih,
                        const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_hr,
                        const std::optional<at::Tensor>& peephole,
                        const std::optional<at::Tensor>& lengths, bool reverse,
                        const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& hiddens,
                        const at::Tensor& hidden_pre, std::array<bool, 9> output_mask) {
  return FASTDL_CALL(lstm_backward)
      .call(grad_output, grad_hy, grad_cy, input, hx, cx, weight_ih, weight_hh, weight_hr, peephole,
            lengths, reverse, gates, cells, hiddens, hidden_pre, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
    const std::optional<at::Tensor>& weight_hr, const std::optional<at::Tensor>& peephole,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  auto o = lstm_forward(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, peephole,
                        lengths, reverse);
  return {std::get<0>(o), std::get<1>(o), std::get<2>(o)};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell(const at::Tensor& input, const at::Tensor& hx,
                                             const at::Tensor& cx, const at::Tensor& weight_ih,
                                             const at::Tensor& weight_hh,
                                             const std::optional<at::Tensor>& bias_ih,
                                             const std::optional<at::Tensor>& bias_hh) {
  TORCH_CHECK(input.dim() == 2, "fastdl.lstm_cell: input must have shape (batch, input_size), got ",
              input.sizes());
  auto [output, h, c] = lstm(input.unsqueeze(0), hx, cx, weight_ih, weight_hh, bias_ih, bias_hh);
  return {h, c};
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "lstm_forward(Tensor input, Tensor hx, Tensor cx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih=None, Tensor? bias_hh=None, Tensor? weight_hr=None, Tensor? peephole=None, "
      "Tensor? lengths=None, bool reverse=False) -> (Tensor output, Tensor h_n, Tensor c_n, "
      "Tensor gates, Tensor cells, Tensor hiddens, Tensor hidden_pre)");
  m.def(
      "lstm_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, Tensor input, "
      "Tensor hx, Tensor cx, Tensor weight_ih, Tensor weight_hh, Tensor? weight_hr, "
      "Tensor? peephole, Tensor? lengths, bool reverse, Tensor gates, Tensor cells, "
      "Tensor hiddens, Tensor hidden_pre, bool[9] output_mask) -> (Tensor grad_input, "
      "Tensor grad_hx, Tensor grad_cx, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_bias_ih, Tensor grad_bias_hh, Tensor grad_weight_hr, Tensor grad_peephole)");
}

// The CPU kernels of cpu/rnn.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(lstm)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("lstm_forward", &lstm_forward_autograd);
  m.impl("lstm_backward", autograd::not_differentiable_kernel());
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCUDA, m) {
  m.impl("lstm_forward", &lstm_forward_autocast<c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCPU, m) {
  m.impl("lstm_forward", &lstm_forward_autocast<c10::DeviceType::CPU>);
}

}  // namespace fastdl
