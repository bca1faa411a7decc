// The LSTM/GRU CPU ops: a table of kernels per dtype (rnn_kernels.h's step kernels and the
// matmuls) for the shared drivers (lstm.cpp, gru.cpp), float16/bfloat16 inputs computed in
// float32, and the registration.
#include "fastdl/rnn/cpu/rnn_kernels.h"

#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu/matmul.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/rnn/rnn.h"
#include "fastdl/rnn/rnn_common.h"

#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <tuple>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

// float32 and float64 (float16 in float32): the step weights made contiguous once per call
// (the transposed W_hh^T by our vector transposes) for matmul's skinny kernel.
const detail::RnnKernels& cpu_kernels() {
  static const detail::RnnKernels k = [] {
    detail::RnnKernels table = step_kernels();
    table.prepare_step_weight = &cpu::contiguous_matrix;
    table.step_matmul = [](const at::Tensor& a, const at::Tensor&, const at::Tensor& prepared,
                           at::Tensor& out,
                           bool accumulate) { cpu::matmul(a, prepared, out, accumulate); };
    return table;
  }();
  return k;
}

// bfloat16 (in float32 copies that hold bfloat16 values): every product rounds its operands to
// bfloat16 and runs on the CPU's bfloat16 units where it has them (AMX tiles, AVX512_BF16),
// float32 sums, as torch's bfloat16 LSTM/GRU do on oneDNN; the step weights are packed once
// per call. The step kernels and the state stay float32.
void step_matmul_bf16(const at::Tensor& a, const at::Tensor& weight, const at::Tensor& prepared,
                      at::Tensor& out, bool accumulate) {
  if (prepared.scalar_type() == at::kShort) {  // packed (the drivers' outputs are contiguous)
    cpu::matmul_prepacked_bf16(a, prepared, weight.size(1), out, accumulate);
  } else {  // no bfloat16 units: a contiguous float32 copy
    cpu::matmul(a, prepared, out, accumulate);
  }
}

const detail::RnnKernels& cpu_bf16_kernels() {
  static const detail::RnnKernels k = [] {
    detail::RnnKernels table = step_kernels();
    table.matmul = &cpu::matmul_bf16;
    table.prepare_step_weight = [](const at::Tensor& w) {
      auto packed = cpu::prepack_bf16(w);
      return packed.defined() ? packed : cpu::contiguous_matrix(w);
    };
    table.step_matmul = &step_matmul_bf16;
    table.lstm_step_forward_fused = &lstm_step_forward_fused;
    return table;
  }();
  return k;
}

// The table for half inputs: bfloat16's where the input is bfloat16.
const detail::RnnKernels& half_kernels(const detail::RnnKernels& k, const at::Tensor& input) {
  return input.scalar_type() == at::kBFloat16 ? cpu_bf16_kernels() : k;
}

// ---- float16/bfloat16: the drivers in float32 on converted copies ----
// torch's CPU LSTM/GRU compute half inputs in float32 too. The arguments are checked as given
// (a half input with float32 weights is refused, as torch refuses it), converted, and the
// results rounded once to the input's dtype, but for those kept in the state dtype (float32,
// rnn.h: gates, cells, GRU work), which the backward reads back as the CUDA path saves them.

const auto in_float = [](const auto& t) { return cpu::to_compute_dtype(t); };

template <typename Tuple>
Tuple rounded(Tuple results, at::ScalarType dtype, std::initializer_list<size_t> state_entries) {
  size_t i = 0;
  std::apply(
      [&](auto&... t) {
        ((t = std::find(state_entries.begin(), state_entries.end(), i++) != state_entries.end()
                  ? t
                  : cpu::converted(t, dtype)),
         ...);
      },
      results);
  return results;
}

constexpr const char* kLstm = "fastdl.lstm";
constexpr const char* kGru = "fastdl.gru";

LstmForward lstm_forward_cpu(const detail::RnnKernels& k, const at::Tensor& input,
                             const at::Tensor& hx, const at::Tensor& cx,
                             const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                             const std::optional<at::Tensor>& bias_ih,
                             const std::optional<at::Tensor>& bias_hh,
                             const std::optional<at::Tensor>& weight_hr,
                             const std::optional<at::Tensor>& peephole,
                             const std::optional<at::Tensor>& lengths, bool reverse) {
  if (!cpu::is_half(input.scalar_type())) {
    return detail::lstm_forward(k, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                peephole, lengths, reverse);
  }
  detail::check_rnn_arguments(kLstm, 4, input, hx, &cx, weight_ih, weight_hh, bias_ih, bias_hh,
                              weight_hr, peephole, lengths);
  return rounded(detail::lstm_forward(half_kernels(k, input), in_float(input), in_float(hx),
                                      in_float(cx), in_float(weight_ih), in_float(weight_hh),
                                      in_float(bias_ih), in_float(bias_hh), in_float(weight_hr),
                                      in_float(peephole), lengths, reverse),
                 input.scalar_type(), {3, 4});  // gates, cells: [state]
}

LstmGrads lstm_backward_cpu(const detail::RnnKernels& k,
                            const std::optional<at::Tensor>& grad_output,
                            const std::optional<at::Tensor>& grad_hy,
                            const std::optional<at::Tensor>& grad_cy, const at::Tensor& input,
                            const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& weight_ih,
                            const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_hr,
                            const std::optional<at::Tensor>& peephole,
                            const std::optional<at::Tensor>& lengths, bool reverse,
                            const at::Tensor& gates, const at::Tensor& cells,
                            const at::Tensor& hiddens, const at::Tensor& hidden_pre,
                            std::array<bool, 9> output_mask) {
  if (!cpu::is_half(input.scalar_type())) {
    return detail::lstm_backward(k, grad_output, grad_hy, grad_cy, input, hx, cx, weight_ih,
                                 weight_hh, weight_hr, peephole, lengths, reverse, gates, cells,
                                 hiddens, hidden_pre, output_mask);
  }
  detail::check_rnn_arguments(kLstm, 4, input, hx, &cx, weight_ih, weight_hh, std::nullopt,
                              std::nullopt, weight_hr, peephole, lengths);
  return rounded(
      detail::lstm_backward(half_kernels(k, input), in_float(grad_output), in_float(grad_hy),
                            in_float(grad_cy), in_float(input), in_float(hx), in_float(cx),
                            in_float(weight_ih), in_float(weight_hh), in_float(weight_hr),
                            in_float(peephole), lengths, reverse, gates, cells, in_float(hiddens),
                            in_float(hidden_pre), output_mask),
      input.scalar_type(), {});
}

GruForward gru_forward_cpu(const detail::RnnKernels& k, const at::Tensor& input,
                           const at::Tensor& hx, const at::Tensor& weight_ih,
                           const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                           const std::optional<at::Tensor>& bias_hh,
                           const std::optional<at::Tensor>& lengths, bool reverse) {
  if (!cpu::is_half(input.scalar_type())) {
    return detail::gru_forward(k, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                               reverse);
  }
  detail::check_rnn_arguments(kGru, 3, input, hx, nullptr, weight_ih, weight_hh, bias_ih, bias_hh,
                              std::nullopt, std::nullopt, lengths);
  return rounded(detail::gru_forward(half_kernels(k, input), in_float(input), in_float(hx),
                                     in_float(weight_ih), in_float(weight_hh), in_float(bias_ih),
                                     in_float(bias_hh), lengths, reverse),
                 input.scalar_type(), {2});  // work: [state]
}

GruGrads gru_backward_cpu(const detail::RnnKernels& k, const std::optional<at::Tensor>& grad_output,
                          const std::optional<at::Tensor>& grad_hy, const at::Tensor& input,
                          const at::Tensor& hx, const at::Tensor& weight_ih,
                          const at::Tensor& weight_hh, const std::optional<at::Tensor>& lengths,
                          bool reverse, const at::Tensor& work, const at::Tensor& hiddens,
                          std::array<bool, 6> output_mask) {
  if (!cpu::is_half(input.scalar_type())) {
    return detail::gru_backward(k, grad_output, grad_hy, input, hx, weight_ih, weight_hh, lengths,
                                reverse, work, hiddens, output_mask);
  }
  detail::check_rnn_arguments(kGru, 3, input, hx, nullptr, weight_ih, weight_hh, std::nullopt,
                              std::nullopt, std::nullopt, std::nullopt, lengths);
  return rounded(
      detail::gru_backward(half_kernels(k, input), in_float(grad_output), in_float(grad_hy),
                           in_float(input), in_float(hx), in_float(weight_ih), in_float(weight_hh),
                           lengths, reverse, work, in_float(hiddens), output_mask),
      input.scalar_type(), {});
}

}  // namespace

FASTDL_CPU_KERNELS(lstm, m) {
  m.impl("lstm_forward", &detail::BindTable<&lstm_forward_cpu, &cpu_kernels>::call);
  m.impl("lstm_backward", &detail::BindTable<&lstm_backward_cpu, &cpu_kernels>::call);
}
FASTDL_CPU_KERNELS(gru, m) {
  m.impl("gru_forward", &detail::BindTable<&gru_forward_cpu, &cpu_kernels>::call);
  m.impl("gru_backward", &detail::BindTable<&gru_backward_cpu, &cpu_kernels>::call);
}

}  // namespace fastdl::CPU_CAPABILITY
