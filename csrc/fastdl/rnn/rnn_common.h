// Pieces the LSTM and GRU drivers share: argument checks, step order, the lengths tensor, the
// recurrent weight gradient.
#pragma once

#include "fastdl/common/checks.h"
#include "fastdl/common/tensors.h"
#include "fastdl/rnn/rnn.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/_to_copy.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>

namespace fastdl::detail {

struct RnnShape {
  int64_t steps;   // T
  int64_t batch;   // B
  int64_t input;   // I
  int64_t hidden;  // H
  int64_t state;   // P: the hidden state size (proj_size or H)
};

// Checks every argument of an LSTM (gate_count 4) or GRU (3) layer; cx, weight_hr and
// peephole only for the LSTM. lengths: int64 (batch,), on the CPU or the input's device,
// values in [0, seq_len].
inline RnnShape check_rnn_arguments(
    std::string_view op, int64_t gate_count, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor* cx, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
    const std::optional<at::Tensor>& weight_hr, const std::optional<at::Tensor>& peephole,
    const std::optional<at::Tensor>& lengths) {
  checks::floating(input, op, "input");
  TORCH_CHECK(input.dim() == 3, op,
              ": input must have 3 dimensions (seq_len, batch, input_size), got shape ",
              input.sizes());
  RnnShape s{input.size(0), input.size(1), input.size(2), 0, 0};
  for (auto [t, name] : {std::pair{&weight_ih, "weight_ih"}, std::pair{&weight_hh, "weight_hh"},
                         std::pair{&hx, "hx"}}) {
    TORCH_CHECK(t->defined(), op, ": ", name, " must be a tensor, got None");
    checks::like_input(*t, input, op, name);
  }
  TORCH_CHECK(weight_ih.dim() == 2 && weight_ih.size(0) % gate_count == 0, op,
              ": weight_ih must have shape [", gate_count, " * hidden_size, input_size], got ",
              weight_ih.sizes());
  s.hidden = weight_ih.size(0) / gate_count;
  TORCH_CHECK(weight_ih.size(1) == s.input, op, ": weight_ih must have shape [", weight_ih.size(0),
              ", input_size] with input_size = input.size(-1) = ", s.input, ", got ",
              weight_ih.sizes());
  s.state = s.hidden;
  if (present(weight_hr)) {
    checks::like_input(*weight_hr, input, op, "weight_hr");
    TORCH_CHECK(
        weight_hr->dim() == 2 && weight_hr->size(1) == s.hidden && weight_hr->size(0) >= 1 &&
            weight_hr->size(0) < s.hidden,
        op,
        ": weight_hr must have shape [proj_size, hidden_size] with 0 < proj_size < hidden_size = ",
        s.hidden, ", got ", weight_hr->sizes());
    s.state = weight_hr->size(0);
  }
  checks::shape(weight_hh, {gate_count * s.hidden, s.state}, op, "weight_hh");
  for (auto [t, name] : {std::pair{&bias_ih, "bias_ih"}, std::pair{&bias_hh, "bias_hh"}}) {
    if (!present(*t)) continue;
    checks::like_input(**t, input, op, name);
    checks::shape(**t, {gate_count * s.hidden}, op, name);
  }
  if (present(peephole)) {
    checks::like_input(*peephole, input, op, "peephole");
    checks::shape(*peephole, {3, s.hidden}, op, "peephole");
  }
  checks::shape(hx, {s.batch, s.state}, op, "hx");
  if (cx != nullptr) {
    TORCH_CHECK(cx->defined(), op, ": cx must be a tensor, got None");
    checks::like_input(*cx, input, op, "cx");
    checks::shape(*cx, {s.batch, s.hidden}, op, "cx");
  }
  if (present(lengths)) {
    const auto& l = *lengths;
    TORCH_CHECK(l.scalar_type() == at::kLong && l.dim() == 1 && l.size(0) == s.batch, op,
                ": lengths must be an int64 tensor of shape [batch] = [", s.batch, "], got ",
                l.scalar_type(), l.sizes());
    TORCH_CHECK(l.is_cpu() || l.device() == input.device(), op,
                ": lengths must be on the CPU or on the input's device (", input.device(),
                "), got ", l.device());
    if (s.batch > 0) {
      const auto host = l.cpu();
      const int64_t lo = host.min().item<int64_t>(), hi = host.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi <= s.steps, op, ": lengths must lie in [0, seq_len = ", s.steps,
                  "], got values in [", lo, ", ", hi, "]");
    }
  }
  return s;
}

// lengths on the kernels' device, contiguous (undefined when absent).
inline at::Tensor lengths_for(const std::optional<at::Tensor>& lengths, const at::Tensor& input) {
  if (!present(lengths)) return at::Tensor();
  return lengths->to(input.device()).contiguous();
}

// The time index of processing step s (0 .. T-1), and of the step before it.
inline int64_t time_of(int64_t s, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - s : s;
}
inline int64_t previous_time(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

// out = rows (hidden states read at step t; a scratch copy) with those inactive there (past
// their sequence's length) zeroed: their gradients are zero but their carried state may be inf
// or NaN, and 0 * inf is NaN in a product, where torch leaves such rows out. (carry_state
// also rewrites the scratch's inactive rows, with themselves.)
inline void active_rows_into(const RnnKernels& kernels, const at::Tensor& scratch,
                             const at::Tensor& lengths, int64_t t, const at::Tensor& out) {
  kernels.carry_state(scratch, scratch, out, lengths, t);
}

// dW_hh = sum_t dgates(t)^T h(t-1), dgates (T, B, G) the gradients of the recurrent products,
// hiddens (T, B, P) the carried states, h0 (B, P): the first step processed reads h0, the later
// ones the hiddens shifted by one in processing order; with lengths (on the device, or
// undefined), the rows of the steps past a sequence's end left out.
inline at::Tensor recurrent_weight_grad(const RnnKernels& kernels, const at::Tensor& dgates,
                                        const at::Tensor& hiddens, const at::Tensor& h0,
                                        const at::Tensor& weight_hh, const at::Tensor& lengths,
                                        bool reverse) {
  const int64_t T = dgates.size(0), B = dgates.size(1), G = dgates.size(2), P = hiddens.size(2);
  if (T == 0) return at::zeros_like(weight_hh);
  const int64_t first = reverse ? T - 1 : 0;
  auto h_first = h0;
  if (lengths.defined()) {
    h_first = at::empty_like(h0);
    active_rows_into(kernels, h0.clone(), lengths, first, h_first);
  }
  auto d_w_hh = rnn_mm(kernels, dgates[first].t(), h_first);
  if (T > 1) {
    const auto dg = reverse ? dgates.narrow(0, 0, T - 1) : dgates.narrow(0, 1, T - 1);
    auto hp = reverse ? hiddens.narrow(0, 1, T - 1) : hiddens.narrow(0, 0, T - 1);
    if (lengths.defined()) {
      const auto scratch = hp.clone();
      auto masked = at::empty_like(hp);
      for (int64_t i = 0; i < T - 1; ++i) {
        active_rows_into(kernels, scratch[i], lengths, reverse ? i : i + 1, masked[i]);
      }
      hp = masked;
    }
    kernels.matmul(dg.reshape({(T - 1) * B, G}).t(), hp.reshape({(T - 1) * B, P}), d_w_hh, true);
  }
  return d_w_hh;
}

}  // namespace fastdl::detail
