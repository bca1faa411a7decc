// Registers the LSTM/GRU drivers for one dispatch key with that device's kernel table
// (FASTDL_RNN_KERNELS below).
#pragma once

#include "fastdl/rnn/rnn.h"

#include <torch/library.h>

namespace fastdl::detail {

template <const RnnKernels& (*kernels)()>
struct RnnImpls {
  static auto lstm_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                           const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                           const std::optional<at::Tensor>& bias_ih,
                           const std::optional<at::Tensor>& bias_hh,
                           const std::optional<at::Tensor>& weight_hr,
                           const std::optional<at::Tensor>& peephole,
                           const std::optional<at::Tensor>& lengths, bool reverse) {
    return detail::lstm_forward(kernels(), input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                weight_hr, peephole, lengths, reverse);
  }
  static LstmGrads lstm_backward(
      const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
      const std::optional<at::Tensor>& grad_cy, const at::Tensor& input, const at::Tensor& hx,
      const at::Tensor& cx, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
      const std::optional<at::Tensor>& weight_hr, const std::optional<at::Tensor>& peephole,
      const std::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& gates,
      const at::Tensor& cells, const at::Tensor& hiddens, const at::Tensor& hidden_pre,
      std::array<bool, 9> mask) {
    return detail::lstm_backward(kernels(), grad_output, grad_hy, grad_cy, input, hx, cx, weight_ih,
                                 weight_hh, weight_hr, peephole, lengths, reverse, gates, cells,
                                 hiddens, hidden_pre, mask);
  }
  static auto gru_forward(const at::Tensor& input, const at::Tensor& hx,
                          const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                          const std::optional<at::Tensor>& bias_ih,
                          const std::optional<at::Tensor>& bias_hh,
                          const std::optional<at::Tensor>& lengths, bool reverse) {
    return detail::gru_forward(kernels(), input, hx, weight_ih, weight_hh, bias_ih, bias_hh,
                               lengths, reverse);
  }
  static GruGrads gru_backward(const std::optional<at::Tensor>& grad_output,
                               const std::optional<at::Tensor>& grad_hy, const at::Tensor& input,
                               const at::Tensor& hx, const at::Tensor& weight_ih,
                               const at::Tensor& weight_hh,
                               const std::optional<at::Tensor>& lengths, bool reverse,
                               const at::Tensor& work, const at::Tensor& hiddens,
                               std::array<bool, 6> mask) {
    return detail::gru_backward(kernels(), grad_output, grad_hy, input, hx, weight_ih, weight_hh,
                                lengths, reverse, work, hiddens, mask);
  }
};

}  // namespace fastdl::detail

// The four ops' kernels for library `m` from a device's kernel table: in cpu/rnn.cpp
// TORCH_LIBRARY_IMPL(fastdl, CPU, m) { FASTDL_RNN_KERNELS(m, cpu_kernels); }, in cuda/rnn.cu
// under FASTDL_CUDA_KERNELS(m).
#define FASTDL_RNN_KERNELS(m, kernels)               \
  using Impls = ::fastdl::detail::RnnImpls<kernels>; \
  m.impl("lstm_forward", &Impls::lstm_forward);      \
  m.impl("lstm_backward", &Impls::lstm_backward);    \
  m.impl("gru_forward", &Impls::gru_forward);        \
  m.impl("gru_backward", &Impls::gru_backward)
