// Recurrent layers: LSTM (optionally with a projection, as torch's proj_size, and with diagonal
// peepholes) and GRU, one layer and one direction per call, time-major (seq_len, batch, feature).
//
// Forward: the input projections of all steps are one GEMM; each step is one recurrent GEMM
// and one fused pointwise kernel that writes what backward needs. Backward (BPTT): each step
// is one fused pointwise kernel and one GEMM; the weight gradients are GEMMs over all steps
// after the loop, the bias gradients column sums.
//
// Variable lengths: with `lengths` (batch,), element b takes part in steps t < lengths[b] only
// (in either direction), as torch does with packed sequences: its outputs at t >= lengths[b]
// are zero and its final state is the state after its last valid step.
#pragma once

#include "fastdl/common/dispatch.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastdl {

// Differentiable LSTM layer: (output (T, B, P), h_n (B, P), c_n (B, H)). P = proj_size
// (weight_hr's rows) or H. peephole: (3, H), the diagonal weights of i, f and o.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih = std::nullopt,
    const std::optional<at::Tensor>& bias_hh = std::nullopt,
    const std::optional<at::Tensor>& weight_hr = std::nullopt,
    const std::optional<at::Tensor>& peephole = std::nullopt,
    const std::optional<at::Tensor>& lengths = std::nullopt, bool reverse = false);

// Differentiable GRU layer: (output (T, B, H), h_n (B, H)).
std::tuple<at::Tensor, at::Tensor> gru(const at::Tensor& input, const at::Tensor& hx,
                                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                       const std::optional<at::Tensor>& bias_ih = std::nullopt,
                                       const std::optional<at::Tensor>& bias_hh = std::nullopt,
                                       const std::optional<at::Tensor>& lengths = std::nullopt,
                                       bool reverse = false);

// One step, as torch.nn.LSTMCell / GRUCell: input (B, I), states (B, H).
std::tuple<at::Tensor, at::Tensor> lstm_cell(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih = std::nullopt,
    const std::optional<at::Tensor>& bias_hh = std::nullopt);
at::Tensor gru_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& weight_ih,
                    const at::Tensor& weight_hh,
                    const std::optional<at::Tensor>& bias_ih = std::nullopt,
                    const std::optional<at::Tensor>& bias_hh = std::nullopt);

// The raw ops behind them (fastdl.functional calls these), whose forward also returns what
// its backward reads (shapes at detail::lstm_forward / gru_forward below); the backward ops
// take output_mask and are not differentiable.
using LstmForward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (grad_input, grad_hx, grad_cx, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh,
//  grad_weight_hr, grad_peephole); entries whose output_mask is false are undefined.
using LstmGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor, at::Tensor>;
using GruForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh).
using GruGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

LstmForward lstm_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                         const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                         const std::optional<at::Tensor>& bias_ih,
                         const std::optional<at::Tensor>& bias_hh,
                         const std::optional<at::Tensor>& weight_hr,
                         const std::optional<at::Tensor>& peephole,
                         const std::optional<at::Tensor>& lengths, bool reverse);
LstmGrads lstm_backward(const std::optional<at::Tensor>& grad_output,
                        const std::optional<at::Tensor>& grad_hy,
                        const std::optional<at::Tensor>& grad_cy, const at::Tensor& input,
                        const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& weight_ih,
                        const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_hr,
                        const std::optional<at::Tensor>& peephole,
                        const std::optional<at::Tensor>& lengths, bool reverse,
                        const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& hiddens,
                        const at::Tensor& hidden_pre, std::array<bool, 9> output_mask);
GruForward gru_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& weight_ih,
                       const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                       const std::optional<at::Tensor>& bias_hh,
                       const std::optional<at::Tensor>& lengths, bool reverse);
GruGrads gru_backward(const std::optional<at::Tensor>& grad_output,
                      const std::optional<at::Tensor>& grad_hy, const at::Tensor& input,
                      const at::Tensor& hx, const at::Tensor& weight_ih,
                      const at::Tensor& weight_hh, const std::optional<at::Tensor>& lengths,
                      bool reverse, const at::Tensor& work, const at::Tensor& hiddens,
                      std::array<bool, 6> output_mask);

namespace detail {

// ---- what the device-independent drivers (lstm.cpp, gru.cpp) ask of a device's kernels ----
// Every tensor is contiguous; per-step tensors are (B, X) rows of the sequence buffers.
// `lengths` is undefined or an int64 (B,) tensor on the kernel's device; element b is active
// at step t when t < lengths[b].

// Tensors marked [state] are in the state dtype (rnn_state_dtype: float32 for float16/bfloat16
// inputs, as torch keeps them): what carries from step to step (the cell, the running
// gradients) and what backward reads back (gates, GRU work) never rounds to half precision.
// The others (GEMM operands, outputs) are in the input's dtype; a product accumulated into a
// [state] tensor takes half operands and writes float (matmul's mixed case).
inline at::ScalarType rnn_state_dtype(const at::Tensor& input) {
  const auto dtype = input.scalar_type();
  return dtype == at::kHalf || dtype == at::kBFloat16 ? at::kFloat : dtype;
}

struct LstmStepForward {
  at::Tensor x_gates;                     // (B, 4H) W_ih x(t), no bias
  at::Tensor h_gates;                     // (B, 4H) W_hh h(t-1), no bias
  at::Tensor bias_ih, bias_hh, peephole;  // (4H), (4H), (3, H); each may be undefined
  at::Tensor c_prev;                      // [state] (B, H)
  at::Tensor h_prev;  // (B, H) read when `output` is defined (no projection): carried state
  at::Tensor lengths;
  int64_t t;
  at::Tensor gates;   // [state] out (B, 4H): activated i, f, g, o (zeros where inactive)
  at::Tensor c;       // [state] out (B, H): new cell state (c_prev where inactive)
  at::Tensor h;       // out (B, H): o ⊙ tanh(c) (h_prev where inactive, when no projection)
  at::Tensor output;  // out (B, H) or undefined (projection): h where active, else 0
};

struct LstmStepBackward {
  at::Tensor gates, c, c_prev;  // [state] saved by forward
  at::Tensor peephole;          // (3, H) or undefined
  // [state] (B, H) gradient of o ⊙ tanh(c); zeroed where active when `dh_is_state`
  at::Tensor dh;
  at::Tensor grad_output;  // (B, H) added to dh where active, or undefined
  bool dh_is_state;        // dh is the running state gradient (no projection)
  at::Tensor dc;           // [state] in/out (B, H): gradient of c(t), becomes that of c(t-1)
  at::Tensor lengths;
  int64_t t;
  at::Tensor dgates;  // out (B, 4H): pre-activation gradients (zeros where inactive)
};

struct GruStepForward {
  at::Tensor x_gates, h_gates;  // (B, 3H) W_ih x(t), W_hh h(t-1), no biases
  at::Tensor bias_ih, bias_hh;  // (3H) or undefined
  at::Tensor h_prev;            // (B, H)
  at::Tensor lengths;
  int64_t t;
  at::Tensor work;    // [state] out (B, 4H): r, z, n, gh_n
  at::Tensor h;       // out (B, H): new state (h_prev where inactive)
  at::Tensor output;  // out (B, H): h where active, else 0
};

struct GruStepBackward {
  at::Tensor work;    // [state]
  at::Tensor h_prev;  // (B, H)
  at::Tensor dh;      // [state] in/out (B, H): gradient of h(t) -> direct part of that of h(t-1)
  at::Tensor grad_output;  // (B, H) or undefined
  at::Tensor lengths;
  int64_t t;
  at::Tensor dx_gates, dh_gates;  // out (B, 3H): gradients of gi and gh (zeros where inactive)
};

struct RnnKernels {
  // out (+)= a (M, K) b (K, N), any strides (out's last stride 1): every product of the
  // drivers. On the CPU our kernels (a BLAS call costs most at the skinny per-step shapes); on
  // CUDA cuBLAS. `out` may be a [state] float32 tensor for half a and b.
  void (*matmul)(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate);
  void (*lstm_step_forward)(const LstmStepForward&);
  void (*lstm_step_backward)(const LstmStepBackward&);
  void (*gru_step_forward)(const GruStepForward&);
  void (*gru_step_backward)(const GruStepBackward&);
  // Projection path: state[b] = active ? state[b] : prev[b]; output[b] = active ? state[b] : 0.
  void (*carry_state)(const at::Tensor& state, const at::Tensor& prev, const at::Tensor& output,
                      const at::Tensor& lengths, int64_t t);
  // Projection path backward: where active, dh_total[b] = dh[b] + grad_output[b] and dh[b] = 0;
  // elsewhere dh_total[b] = 0 and dh[b] is kept. grad_output may be undefined; dh [state].
  void (*split_state_grad)(const at::Tensor& dh, const at::Tensor& grad_output,
                           const at::Tensor& dh_total, const at::Tensor& lengths, int64_t t);
  // out (C) = column sums of rows (N, C) (bias gradients).
  void (*column_sums)(const at::Tensor& rows, const at::Tensor& out);
  // out (3, H): sums over rows of dgates_i ⊙ c_prev, dgates_f ⊙ c_prev, dgates_o ⊙ c
  // (peephole gradients); dgates (N, 4H), c_prev and c (N, H) [state].
  void (*peephole_grad)(const at::Tensor& dgates, const at::Tensor& c_prev, const at::Tensor& c,
                        const at::Tensor& out);
  // The weights multiplied at every step (StepWeight below), prepared once per call for
  // step_matmul (on the CPU: made contiguous, or packed for the bfloat16 units); null for both:
  // matmul with the weight made contiguous.
  at::Tensor (*prepare_step_weight)(const at::Tensor& weight) = nullptr;
  void (*step_matmul)(const at::Tensor& a, const at::Tensor& weight, const at::Tensor& prepared,
                      at::Tensor& out, bool accumulate) = nullptr;
  // The LSTM step's recurrent product (h_prev times the prepared W_hh^T) and pointwise kernel
  // in one, where it takes these tensors (h_gates is then not written): false where it does
  // not. Null: never.
  bool (*lstm_step_forward_fused)(const LstmStepForward& step,
                                  const at::Tensor& prepared_w_hh_t) = nullptr;
};

// A weight (K, N) multiplied once per step (W_hh^T, W_hr^T; W_hh, W_hr in the backward),
// prepared once per call where the kernels pack it (a step's product of a small batch would
// otherwise repack it every time; the packing reads any strides), else made contiguous.
class StepWeight {
 public:
  StepWeight(const RnnKernels& kernels, const at::Tensor& weight)
      : kernels_(kernels),
        prepared_(kernels.prepare_step_weight && weight.defined()
                      ? kernels.prepare_step_weight(weight)
                      : at::Tensor()),
        weight_(prepared_.defined() || !weight.defined() ? weight : weight.contiguous()) {}
  // The LSTM step with this weight as W_hh^T: the kernels' fused product and pointwise kernel
  // where they have one for it, else the product into step.h_gates and the step kernel.
  void lstm_step_forward(const LstmStepForward& step) const {
    if (prepared_.defined() && kernels_.lstm_step_forward_fused &&
        kernels_.lstm_step_forward_fused(step, prepared_)) {
      return;
    }
    auto h_gates = step.h_gates;
    multiply(step.h_prev, h_gates, false);
    kernels_.lstm_step_forward(step);
  }

  // out (+)= a @ weight
  void multiply(const at::Tensor& a, at::Tensor& out, bool accumulate) const {
    if (prepared_.defined()) {
      kernels_.step_matmul(a, weight_, prepared_, out, accumulate);
    } else {
      kernels_.matmul(a, weight_, out, accumulate);
    }
  }

 private:
  const RnnKernels& kernels_;
  at::Tensor prepared_, weight_;
};

// a (M, K) times b (K, N) as a new tensor, through the device's matmul.
inline at::Tensor rnn_mm(const RnnKernels& kernels, const at::Tensor& a, const at::Tensor& b) {
  auto out = at::empty({a.size(0), b.size(1)}, a.options());
  kernels.matmul(a, b, out, false);
  return out;
}

// The drivers: argument checks, GEMMs and the time loop around a device's kernels.
// lstm_forward: (output, h_n, c_n, gates (T,B,4H), cells (T,B,H), hiddens (T,B,P), hidden_pre
// (T,B,H), or (0) without projection). hiddens are the carried states.
LstmForward lstm_forward(const RnnKernels& kernels, const at::Tensor& input, const at::Tensor& hx,
                         const at::Tensor& cx, const at::Tensor& weight_ih,
                         const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                         const std::optional<at::Tensor>& bias_hh,
                         const std::optional<at::Tensor>& weight_hr,
                         const std::optional<at::Tensor>& peephole,
                         const std::optional<at::Tensor>& lengths, bool reverse);

LstmGrads lstm_backward(const RnnKernels& kernels, const std::optional<at::Tensor>& grad_output,
                        const std::optional<at::Tensor>& grad_hy,
                        const std::optional<at::Tensor>& grad_cy, const at::Tensor& input,
                        const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& weight_ih,
                        const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_hr,
                        const std::optional<at::Tensor>& peephole,
                        const std::optional<at::Tensor>& lengths, bool reverse,
                        const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& hiddens,
                        const at::Tensor& hidden_pre, std::array<bool, 9> output_mask);

// gru_forward: (output, h_n, work (T,B,4H): r, z, n, gh_n, hiddens (T,B,H)).
GruForward gru_forward(const RnnKernels& kernels, const at::Tensor& input, const at::Tensor& hx,
                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                       const std::optional<at::Tensor>& bias_ih,
                       const std::optional<at::Tensor>& bias_hh,
                       const std::optional<at::Tensor>& lengths, bool reverse);

GruGrads gru_backward(const RnnKernels& kernels, const std::optional<at::Tensor>& grad_output,
                      const std::optional<at::Tensor>& grad_hy, const at::Tensor& input,
                      const at::Tensor& hx, const at::Tensor& weight_ih,
                      const at::Tensor& weight_hh, const std::optional<at::Tensor>& lengths,
                      bool reverse, const at::Tensor& work, const at::Tensor& hiddens,
                      std::array<bool, 6> output_mask);

}  // namespace detail
}  // namespace fastdl

// The ops' kernels for library `m` from a device's kernel table (a function returning
// const RnnKernels&): the LSTM's two, the GRU's two, or all four (FASTDL_RNN_KERNELS, under
// FASTDL_CUDA_KERNELS(m) in cuda/rnn.cu). cpu/rnn.cpp registers its own around the drivers
// (half inputs in float32), the LSTM's and the GRU's separately, for lstm.cpp and gru.cpp to
// pick the copy of the CPU's ISA (common/cpu_isa.h).
#define FASTDL_LSTM_KERNELS(m, kernels)                                                  \
  m.impl("lstm_forward",                                                                 \
         &::fastdl::detail::BindTable<&::fastdl::detail::lstm_forward, &kernels>::call); \
  m.impl("lstm_backward",                                                                \
         &::fastdl::detail::BindTable<&::fastdl::detail::lstm_backward, &kernels>::call)
#define FASTDL_GRU_KERNELS(m, kernels)                                                  \
  m.impl("gru_forward",                                                                 \
         &::fastdl::detail::BindTable<&::fastdl::detail::gru_forward, &kernels>::call); \
  m.impl("gru_backward",                                                                \
         &::fastdl::detail::BindTable<&::fastdl::detail::gru_backward, &kernels>::call)
#define FASTDL_RNN_KERNELS(m, kernels) \
  FASTDL_LSTM_KERNELS(m, kernels);     \
  FASTDL_GRU_KERNELS(m, kernels)
