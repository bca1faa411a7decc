// sdpa_weights CPU row kernels: the attention probabilities from the raw score products and
// the softmax backward, one parallel task per block of (batch, head, query) rows.
#include "fastdl/attention/cpu/sdpa_rows.h"
#include "fastdl/attention/sdpa_weights.h"
#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu_isa.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using cpu::Vec;
using sdpa_cpu::apply_dropout;
using sdpa_cpu::finish_scores;
using sdpa_cpu::MaskView;

// Calls fn(b, h, i, row index) for every (batch, query head, query row), in parallel.
template <typename F>
void for_each_row(const detail::SdpaShape& shape, const F& fn) {
  const int64_t rows = shape.batch * shape.q_heads * shape.q_len;
  at::parallel_for(0, rows, cpu::grain(shape.kv_len), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % shape.q_len;
      const int64_t h = (row / shape.q_len) % shape.q_heads;
      const int64_t b = row / (shape.q_len * shape.q_heads);
      fn(b, h, i, row);
    }
  });
}

void sdpa_weights_probs_cpu(at::Tensor& scores, const std::optional<at::Tensor>& attn_mask,
                            const at::Tensor& logsumexp, const detail::SdpaShape& shape,
                            at::Tensor* dropped) {
  if (cpu::is_half(scores.scalar_type())) {
    // float16/bfloat16 scores (the half GEMM's): the float kernel on a float copy, the
    // probabilities rounded back in place (the log-sum-exp is float32 already).
    auto scores_f = cpu::to_compute_dtype(scores);
    auto dropped_f = dropped ? cpu::to_compute_dtype(*dropped) : at::Tensor();
    sdpa_weights_probs_cpu(scores_f, cpu::to_compute_dtype(attn_mask), logsumexp, shape,
                           dropped ? &dropped_f : nullptr);
    cpu::convert_into(scores_f, scores);
    if (dropped) cpu::convert_into(dropped_f, *dropped);
    return;
  }
  const auto lse = logsumexp.contiguous();
  const int64_t S = shape.kv_len;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "sdpa_weights_probs_cpu", [&] {
    using T = scalar_t;
    const auto mask = MaskView<T>::make(attn_mask);
    T* s = scores.mutable_data_ptr<T>();
    T* d = dropped ? dropped->mutable_data_ptr<T>() : nullptr;
    const T* l = lse.const_data_ptr<T>();
    for_each_row(shape, [&](int64_t b, int64_t h, int64_t i, int64_t row) {
      T* r = s + row * S;
      // The scores arrive scaled (the GEMM's alpha): add the mask, then exp(s - lse), divided
      // by its sum: the fused forward's lse comes from its own products of the same scores, a
      // few ulp of |s| away, and probabilities that do not sum to one would make the softmax
      // backward's dS = P (dP - sum P dP) of a saturated row noise instead of ~0.
      finish_scores(r, S, 1, S, i, 0, T(1), mask, b, h, shape.is_causal);
      const T sum = cpu::exp_shifted_row(r, S, l[row]);
      if (sum > T(0) && sum != T(1)) cpu::scale_inplace(r, T(1) / sum, S);
      if (d) {
        std::copy(r, r + S, d + row * S);
        apply_dropout(d + row * S, S, 1, S, shape, b, h, i, 0);
      }
    });
  });
}

void sdpa_weights_softmax_backward_cpu(at::Tensor& grad, const at::Tensor& probs,
                                       const detail::SdpaShape& shape) {
  if (cpu::is_half(grad.scalar_type())) {  // as above: in float, rounded back in place
    auto grad_f = cpu::to_compute_dtype(grad);
    sdpa_weights_softmax_backward_cpu(grad_f, cpu::to_compute_dtype(probs), shape);
    cpu::convert_into(grad_f, grad);
    return;
  }
  const int64_t S = shape.kv_len;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "sdpa_weights_softmax_backward_cpu", [&] {
    using T = scalar_t;
    constexpr int64_t L = Vec<T>::size();
    T* g = grad.mutable_data_ptr<T>();
    const T* p = probs.const_data_ptr<T>();
    for_each_row(shape, [&](int64_t b, int64_t h, int64_t i, int64_t row) {
      T* dp = g + row * S;
      const T* pr = p + row * S;
      if (shape.dropout_p > 0) apply_dropout(dp, S, 1, S, shape, b, h, i, 0);
      // delta = sum_c dP P: the softmax backward's row term.
      Vec<T> acc(T(0));
      int64_t c = 0;
      for (; c + L <= S; c += L)
        acc = at::vec::fmadd(Vec<T>::loadu(dp + c), Vec<T>::loadu(pr + c), acc);
      T delta = cpu::horizontal_sum(acc);
      for (; c < S; ++c) delta += dp[c] * pr[c];
      for (c = 0; c + L <= S; c += L) {
        (Vec<T>::loadu(pr + c) * (Vec<T>::loadu(dp + c) - Vec<T>(delta))).store(dp + c);
      }
      for (; c < S; ++c) dp[c] = pr[c] * (dp[c] - delta);
    });
  });
}

const detail::SdpaWeightsRows& cpu_weights_rows() {
  static const detail::SdpaWeightsRows rows{&sdpa_weights_probs_cpu,
                                            &sdpa_weights_softmax_backward_cpu};
  return rows;
}
}  // namespace

FASTDL_CPU_KERNELS(sdpa_weights, m) { FASTDL_SDPA_WEIGHTS_KERNELS(m, cpu_weights_rows); }

}  // namespace fastdl::CPU_CAPABILITY
