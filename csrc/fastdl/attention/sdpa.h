// Scaled dot-product attention, flash style: O = softmax(scale * Q K^T + mask) V computed block
// by block with an online softmax, never holding the L x S score matrix; forward saves only O
// and the row log-sum-exp, backward recomputes the probabilities from it.
//
// The ops take 4-d tensors: query (B, Hq, L, E), key (B, Hk, S, E), value (B, Hk, S, Ev) with
// Hq a multiple of Hk (grouped-query attention: query head h reads key/value head
// h / (Hq / Hk)). fastdl.functional.scaled_dot_product_attention maps torch's signature (any
// leading dims, broadcasting, enable_gqa) onto them.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastdl {

// Forward op: (output (B, Hq, L, Ev) in the query's dtype, logsumexp (B, Hq, L) in float32
// for half inputs, else the query's dtype). attn_mask: bool (True = attend) or the query's
// dtype (added to the scores), of shape (B, Hq, L, S) (an expanded view is fine). Rows whose
// keys are all masked give zeros and logsumexp -inf. dropout_seed: an int64 scalar tensor on
// the CPU, required when dropout_p > 0; the keep mask is a hash of (seed, position), so
// backward regenerates it instead of storing it. scale defaults to 1/sqrt(E).
std::tuple<at::Tensor, at::Tensor> sdpa_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask = std::nullopt, double dropout_p = 0.0,
    bool is_causal = false, std::optional<double> scale = std::nullopt,
    const std::optional<at::Tensor>& dropout_seed = std::nullopt);

// Backward op: (grad_query, grad_key, grad_value, grad_attn_mask); an entry is undefined when
// its output_mask entry is false. grad_attn_mask has the shape (B, Hq, L, S).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdpa_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
    const at::Tensor& logsumexp, double dropout_p, bool is_causal, std::optional<double> scale,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 4> output_mask);

// Differentiable attention output (B, Hq, L, Ev).
at::Tensor sdpa(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                const std::optional<at::Tensor>& attn_mask = std::nullopt, double dropout_p = 0.0,
                bool is_causal = false, std::optional<double> scale = std::nullopt,
                const std::optional<at::Tensor>& dropout_seed = std::nullopt);

namespace detail {

// Problem sizes and options of one attention call, as the kernels read them.
struct SdpaShape {
  int64_t batch, q_heads, kv_heads, q_len, kv_len, head_dim, value_dim;
  double scale;
  double dropout_p;
  uint64_t seed;  // dropout seed (0 without dropout)
  bool is_causal;
  bool mask_is_bool;  // attn_mask given and bool
  bool has_mask;
  int64_t group() const { return q_heads / kv_heads; }
};

// The one place the arguments are checked; every kernel calls it first.
SdpaShape check_sdpa_forward(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                             double dropout_p, bool is_causal, std::optional<double> scale,
                             const std::optional<at::Tensor>& dropout_seed);
SdpaShape check_sdpa_backward(const at::Tensor& grad_output, const at::Tensor& query,
                              const at::Tensor& key, const at::Tensor& value,
                              const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
                              const at::Tensor& logsumexp, double dropout_p, bool is_causal,
                              std::optional<double> scale,
                              const std::optional<at::Tensor>& dropout_seed);

// The backward op's outputs, zero-filled (entries no block writes, e.g. with an empty key
// set, read as zero gradients), undefined where output_mask is false. Raises when a mask
// gradient is asked of a bool or absent mask.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdpa_gradient_buffers(
    const SdpaShape& shape, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    std::array<bool, 4> output_mask);

// q/k/v with a unit stride in the last dimension (what the kernels index), without copying
// when they have one already.
at::Tensor unit_last_stride(const at::Tensor& t);

}  // namespace detail
}  // namespace fastdl
