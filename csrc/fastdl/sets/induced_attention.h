// Induced-point attention: the fused multi-head attention core of the Set Transformer's MAB,
// for the extreme shapes of ISAB (m inducing points over n elements, then n elements over m).
//
//   out[b,h,i] = sum_j softmax_j(scale * q[b,h,i] . k[b,h,j]) v[b,h,j]
//
// over the keys j that key_padding_mask[b, j] does not mark (True = padded, as
// torch.nn.MultiheadAttention's key_padding_mask). Two partitions of the work, both exact for
// any sizes, picked from the shapes:
//  - few queries over many keys (L <= S): the key axis is split into chunks processed in
//    parallel; each gives a partial output and log-sum-exp, combined with the log-sum-exp
//    trick (flash-decoding);
//  - many queries over a short key set (L > S): each block of query rows runs one online
//    softmax over all keys, held in cache (CPU) or shared memory (CUDA).
// Neither materialises the (L, S) score matrix. Forward saves only the output and each row's
// log-sum-exp; backward recomputes the probabilities from them.
//
// A query row whose keys are all padded (or S = 0) has output 0, log-sum-exp -inf and zero
// gradients (documented choice: no NaN from an empty softmax).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastdl {

// Differentiable induced attention: the output (B, H, L, Ev) only. scale defaults to
// 1/sqrt(E).
at::Tensor induced_attention(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value,
                             const std::optional<at::Tensor>& key_padding_mask = std::nullopt,
                             std::optional<double> scale = std::nullopt);

// Forward op: (output (B, H, L, Ev), lse (B, H, L)); lse is float32 for half inputs.
std::tuple<at::Tensor, at::Tensor> induced_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, std::optional<double> scale);

// Backward op: (grad_query, grad_key, grad_value); an entry is undefined when its output_mask
// entry is false. scale is the resolved scale the forward used.
std::tuple<at::Tensor, at::Tensor, at::Tensor> induced_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& key_padding_mask,
    const at::Tensor& output, const at::Tensor& lse, double scale, std::array<bool, 3> output_mask);

namespace detail {

// Sizes of one induced attention problem.
struct InducedShape {
  int64_t batch;
  int64_t heads;
  int64_t queries;    // L
  int64_t keys;       // S
  int64_t head_dim;   // E (query/key features)
  int64_t value_dim;  // Ev
};

// The one place the arguments are checked; every kernel calls these first.
InducedShape check_induced_attention_forward(const at::Tensor& query, const at::Tensor& key,
                                             const at::Tensor& value,
                                             const std::optional<at::Tensor>& key_padding_mask,
                                             std::optional<double> scale);
InducedShape check_induced_attention_backward(const at::Tensor& grad_output,
                                              const at::Tensor& query, const at::Tensor& key,
                                              const at::Tensor& value,
                                              const std::optional<at::Tensor>& key_padding_mask,
                                              const at::Tensor& output, const at::Tensor& lse,
                                              double scale);
// scale, or 1/sqrt(head_dim) when absent (1 for head_dim 0).
double induced_attention_scale(std::optional<double> scale, int64_t head_dim);

}  // namespace detail
}  // namespace fastdl

namespace fastdl::detail {

// What a kernel of each device needs, checked and prepared in one place: inputs whose last dim
// is contiguous (other strides are read in place), the mask contiguous, outputs allocated.
struct InducedForward {
  InducedShape shape;
  double scale;                        // resolved
  at::Tensor query, key, value, mask;  // mask undefined when absent
  at::Tensor
      output;      // (batch, heads, L, Ev) laid out as (batch, L, heads, Ev): merging heads is free
  at::Tensor lse;  // (batch, heads, L), float32 for half inputs
};
InducedForward prepare_induced_attention_forward(const at::Tensor& query, const at::Tensor& key,
                                                 const at::Tensor& value,
                                                 const std::optional<at::Tensor>& key_padding_mask,
                                                 std::optional<double> scale);

struct InducedBackward {
  InducedShape shape;
  at::Tensor query, key, value, mask, grad_output, output, lse;
  // Zero-filled gradients in the inputs' layouts; undefined where output_mask is false.
  at::Tensor grad_query, grad_key, grad_value;
};
InducedBackward prepare_induced_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& key_padding_mask,
    const at::Tensor& output, const at::Tensor& lse, double scale, std::array<bool, 3> output_mask);

}  // namespace fastdl::detail
