// The attention probabilities P = softmax(scale * Q K^T + mask) (after dropout's keep mask, as
// torch.nn.MultiheadAttention returns them) materialised as a (B, Hq, L, S) tensor: what
// MultiheadAttention(need_weights=True) returns next to the fused attention output. The
// score products are batched GEMMs (at::baddbmm); the row work (scale, mask, exp(s - lse),
// dropout, and the softmax backward dS = P (dP - rowsum(dP P))) is ours, on CPU and CUDA.
#pragma once

#include "fastdl/common/dispatch.h"

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastdl {

// Forward op: the weights (B, Hq, L, S), given the logsumexp the fused forward returned for
// the same arguments. Same argument conventions as sdpa_forward (4-d, GQA, bool/float mask).
at::Tensor sdpa_weights(const at::Tensor& query, const at::Tensor& key,
                        const std::optional<at::Tensor>& attn_mask, double dropout_p,
                        bool is_causal, std::optional<double> scale,
                        const std::optional<at::Tensor>& dropout_seed, const at::Tensor& logsumexp);

// Backward op: (grad_query, grad_key, grad_attn_mask) of the weights.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sdpa_weights_backward(
    const at::Tensor& grad_weights, const at::Tensor& query, const at::Tensor& key,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
    std::optional<double> scale, const std::optional<at::Tensor>& dropout_seed,
    const at::Tensor& logsumexp, std::array<bool, 3> output_mask);

namespace detail {

struct SdpaShape;

// A device's row kernels. probs: raw products Q K^T (B, Hq, L, S contiguous, in place) become
// probabilities exp(scale * s + mask - lse) (0 where masked or lse = -inf); `dropped`, when
// given, receives them times dropout's keep factor. softmax_backward: grad (B, Hq, L, S, in
// place) becomes dS = P (dP - rowsum(dP P)) with dP = grad * keep factor.
struct SdpaWeightsRows {
  void (*probs)(at::Tensor& scores, const std::optional<at::Tensor>& attn_mask,
                const at::Tensor& logsumexp, const SdpaShape& shape, at::Tensor* dropped);
  void (*softmax_backward)(at::Tensor& grad, const at::Tensor& probs, const SdpaShape& shape);
};

// The ops' device-generic bodies (checks, GEMMs) around a device's row kernels.
at::Tensor sdpa_weights_kernel(const SdpaWeightsRows& rows, const at::Tensor& query,
                               const at::Tensor& key, const std::optional<at::Tensor>& attn_mask,
                               double dropout_p, bool is_causal, std::optional<double> scale,
                               const std::optional<at::Tensor>& dropout_seed,
                               const at::Tensor& logsumexp);
std::tuple<at::Tensor, at::Tensor, at::Tensor> sdpa_weights_backward_kernel(
    const SdpaWeightsRows& rows, const at::Tensor& grad_weights, const at::Tensor& query,
    const at::Tensor& key, const std::optional<at::Tensor>& attn_mask, double dropout_p,
    bool is_causal, std::optional<double> scale, const std::optional<at::Tensor>& dropout_seed,
    const at::Tensor& logsumexp, std::array<bool, 3> output_mask);

void sdpa_weights_probs_cuda(at::Tensor& scores, const std::optional<at::Tensor>& attn_mask,
                             const at::Tensor& logsumexp, const SdpaShape& shape,
                             at::Tensor* dropped);
void sdpa_weights_softmax_backward_cuda(at::Tensor& grad, const at::Tensor& probs,
                                        const SdpaShape& shape);

}  // namespace detail
}  // namespace fastdl

// Registers sdpa_weights / sdpa_weights_backward for library `m` with a device's row kernels.
#define FASTDL_SDPA_WEIGHTS_KERNELS(m, rows)                                                 \
  m.impl("sdpa_weights",                                                                     \
         &::fastdl::detail::BindTable<&::fastdl::detail::sdpa_weights_kernel, &rows>::call); \
  m.impl(                                                                                    \
      "sdpa_weights_backward",                                                               \
      &::fastdl::detail::BindTable<&::fastdl::detail::sdpa_weights_backward_kernel, &rows>::call)
