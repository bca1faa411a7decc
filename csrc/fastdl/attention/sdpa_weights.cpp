// sdpa_weights: schema, checks, autograd, autocast and the device-generic host code (the GEMMs);
// the row kernels are beside the attention kernels, in cpu/sdpa.cpp and cuda/sdpa.cu, which
// register the ops for their device (FASTDL_SDPA_WEIGHTS_KERNELS).
#include "fastdl/attention/sdpa_weights.h"

#include "fastdl/attention/sdpa.h"
#include "fastdl/attention/sdpa_options.h"
#include "fastdl/common/autocast.h"
#include "fastdl/common/autograd.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/dispatch.h"

#include <ATen/autocast_mode.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.sdpa_weights";

detail::SdpaShape check_weights(const at::Tensor& query, const at::Tensor& key,
                                const std::optional<at::Tensor>& attn_mask, double dropout_p,
                                bool is_causal, std::optional<double> scale,
                                const std::optional<at::Tensor>& dropout_seed,
                                const at::Tensor& logsumexp) {
  // The value is not read: key stands in for it in the shared checks.
  const auto s = detail::check_sdpa_forward(query, key, key, attn_mask, dropout_p, is_causal, scale,
                                            dropout_seed);
  TORCH_CHECK(logsumexp.defined() &&
                  logsumexp.sizes() == at::IntArrayRef({s.batch, s.q_heads, s.q_len}) &&
                  logsumexp.device() == query.device(),
              kOp, ": logsumexp must have shape [", s.batch, ", ", s.q_heads, ", ", s.q_len,
              "] on ", query.device(), ", got ", logsumexp.sizes());
  const auto half = query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16;
  TORCH_CHECK(logsumexp.scalar_type() == (half ? at::kFloat : query.scalar_type()), kOp,
              ": logsumexp must be ", half ? at::kFloat : query.scalar_type(), ", got ",
              logsumexp.scalar_type());
  return s;
}

// Whether there is nothing to compute (no rows or no heads; group() would divide by zero).
bool empty_problem(const detail::SdpaShape& s) {
  return s.batch * s.kv_heads * s.q_len * s.kv_len == 0;
}

// scale * Q K^T as (B, Hq, L, S): under GQA the group's query rows are stacked so one batched
// GEMM per key/value head serves them all.
at::Tensor scaled_scores(const at::Tensor& query, const at::Tensor& key,
                         const detail::SdpaShape& s) {
  const auto q = query.reshape({s.batch * s.kv_heads, s.group() * s.q_len, s.head_dim});
  const auto k = key.reshape({s.batch * s.kv_heads, s.kv_len, s.head_dim});
  auto out = at::empty({s.batch * s.kv_heads, s.group() * s.q_len, s.kv_len}, query.options());
  at::baddbmm_out(out, out, q, k.transpose(1, 2), /*beta=*/0, /*alpha=*/s.scale);
  return out.view({s.batch, s.q_heads, s.q_len, s.kv_len});
}

}  // namespace

namespace detail {

at::Tensor sdpa_weights_kernel(const SdpaWeightsRows& rows, const at::Tensor& query,
                               const at::Tensor& key, const std::optional<at::Tensor>& attn_mask,
                               double dropout_p, bool is_causal, std::optional<double> scale,
                               const std::optional<at::Tensor>& dropout_seed,
                               const at::Tensor& logsumexp) {
  const auto s =
      check_weights(query, key, attn_mask, dropout_p, is_causal, scale, dropout_seed, logsumexp);
  if (empty_problem(s)) return at::zeros({s.batch, s.q_heads, s.q_len, s.kv_len}, query.options());
  auto weights = scaled_scores(query, key, s);
  if (s.dropout_p > 0) {
    auto dropped = at::empty_like(weights);
    rows.probs(weights, attn_mask, logsumexp, s, &dropped);
    return dropped;
  }
  rows.probs(weights, attn_mask, logsumexp, s, nullptr);
  return weights;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sdpa_weights_backward_kernel(
    const SdpaWeightsRows& rows, const at::Tensor& grad_weights, const at::Tensor& query,
    const at::Tensor& key, const std::optional<at::Tensor>& attn_mask, double dropout_p,
    bool is_causal, std::optional<double> scale, const std::optional<at::Tensor>& dropout_seed,
    const at::Tensor& logsumexp, std::array<bool, 3> output_mask) {
  const auto s =
      check_weights(query, key, attn_mask, dropout_p, is_causal, scale, dropout_seed, logsumexp);
  TORCH_CHECK(grad_weights.sizes() == at::IntArrayRef({s.batch, s.q_heads, s.q_len, s.kv_len}) &&
                  grad_weights.scalar_type() == query.scalar_type(),
              kOp, ": grad_weights must be ", query.scalar_type(), " of shape [", s.batch, ", ",
              s.q_heads, ", ", s.q_len, ", ", s.kv_len, "], got ", grad_weights.scalar_type(),
              grad_weights.sizes());
  if (empty_problem(s)) {
    const auto zeros_if = [](bool wanted, const at::Tensor& like) {
      return wanted ? at::zeros(like.sizes(), like.options()) : at::Tensor();
    };
    return {zeros_if(output_mask[0], query), zeros_if(output_mask[1], key),
            zeros_if(output_mask[2], grad_weights)};
  }
  auto p = scaled_scores(query, key, s);  // P recomputed, not stored
  rows.probs(p, attn_mask, logsumexp, s, nullptr);
  auto ds = grad_weights.contiguous().clone();
  rows.softmax_backward(ds, p, s);
  at::Tensor grad_query, grad_key, grad_mask;
  const auto ds3 = ds.view({s.batch * s.kv_heads, s.group() * s.q_len, s.kv_len});
  if (output_mask[0]) {
    const auto k = key.reshape({s.batch * s.kv_heads, s.kv_len, s.head_dim});
    grad_query =
        at::empty({s.batch * s.kv_heads, s.group() * s.q_len, s.head_dim}, query.options());
    at::baddbmm_out(grad_query, grad_query, ds3, k, 0, s.scale);
    grad_query = grad_query.view(query.sizes());
  }
  if (output_mask[1]) {
    const auto q = query.reshape({s.batch * s.kv_heads, s.group() * s.q_len, s.head_dim});
    grad_key = at::empty({s.batch * s.kv_heads, s.kv_len, s.head_dim}, key.options());
    at::baddbmm_out(grad_key, grad_key, ds3.transpose(1, 2), q, 0, s.scale);
    grad_key = grad_key.view(key.sizes());
  }
  if (output_mask[2]) grad_mask = ds;
  return {grad_query, grad_key, grad_mask};
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class WeightsFunction : public torch::autograd::Function<WeightsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                               const std::optional<at::Tensor>& attn_mask, double dropout_p,
                               bool is_causal, std::optional<double> scale,
                               const std::optional<at::Tensor>& dropout_seed,
                               const at::Tensor& logsumexp) {
    autograd::InputEdges::save(ctx, {true, true, present(attn_mask), present(dropout_seed), true});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto weights =
        FASTDL_CALL(sdpa_weights)
            .call(query, key, attn_mask, dropout_p, is_causal, scale, dropout_seed, logsumexp);
    autograd::save_with_optional(ctx, {query, key, logsumexp}, attn_mask);
    detail::SdpaOptions{dropout_p, is_causal, scale, dropout_seed}.save(ctx);
    return {weights};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto mask = autograd::saved_optional(ctx, saved, 0);
    const auto options = detail::SdpaOptions::load(ctx);
    const bool mask_grad = autograd::InputEdges::needs_grad(ctx, 2);
    TORCH_CHECK(!mask_grad || mask->scalar_type() != at::kBool, kOp,
                ": a bool attn_mask has no gradient");
    variable_list result(8);
    if (!grads[0].defined()) return result;
    auto [gq, gk, gm] = FASTDL_CALL(sdpa_weights_backward)
                            .call(grads[0], saved[0], saved[1], mask, options.dropout_p,
                                  options.is_causal, options.scale, options.dropout_seed, saved[2],
                                  {autograd::InputEdges::needs_grad(ctx, 0),
                                   autograd::InputEdges::needs_grad(ctx, 1), mask_grad});
    result[0] = gq;
    result[1] = gk;
    result[2] = gm;
    return result;
  }
};

at::Tensor sdpa_weights_autograd(const at::Tensor& query, const at::Tensor& key,
                                 const std::optional<at::Tensor>& attn_mask, double dropout_p,
                                 bool is_causal, std::optional<double> scale,
                                 const std::optional<at::Tensor>& dropout_seed,
                                 const at::Tensor& logsumexp) {
  return WeightsFunction::apply(query, key, attn_mask, dropout_p, is_causal, scale, dropout_seed,
                                logsumexp)[0];
}

// Autocast, like sdpa_forward's: the autocast dtype on both devices.
template <c10::DeviceType device>
at::Tensor sdpa_weights_autocast(const at::Tensor& query, const at::Tensor& key,
                                 const std::optional<at::Tensor>& attn_mask, double dropout_p,
                                 bool is_causal, std::optional<double> scale,
                                 const std::optional<at::Tensor>& dropout_seed,
                                 const at::Tensor& logsumexp) {
  autocast::BelowAutocast<device> below;
  const auto dtype = at::autocast::get_autocast_dtype(device);
  const auto cast = [&](const at::Tensor& t) {
    return at::autocast::cached_cast(dtype, t, device);
  };
  std::optional<at::Tensor> mask = attn_mask;
  if (present(mask) && mask->scalar_type() != at::kBool) mask = cast(*mask);
  return FASTDL_CALL(sdpa_weights)
      .call(cast(query), cast(key), mask, dropout_p, is_causal, scale, dropout_seed, logsumexp);
}

}  // namespace

at::Tensor sdpa_weights(const at::Tensor& query, const at::Tensor& key,
                        const std::optional<at::Tensor>& attn_mask, double dropout_p,
                        bool is_causal, std::optional<double> scale,
                        const std::optional<at::Tensor>& dropout_seed,
                        const at::Tensor& logsumexp) {
  return FASTDL_CALL(sdpa_weights)
      .call(query, key, attn_mask, dropout_p, is_causal, scale, dropout_seed, logsumexp);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sdpa_weights_backward(
    const at::Tensor& grad_weights, const at::Tensor& query, const at::Tensor& key,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
    std::optional<double> scale, const std::optional<at::Tensor>& dropout_seed,
    const at::Tensor& logsumexp, std::array<bool, 3> output_mask) {
  return FASTDL_CALL(sdpa_weights_backward)
      .call(grad_weights, query, key, attn_mask, dropout_p, is_causal, scale, dropout_seed,
            logsumexp, output_mask);
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "sdpa_weights(Tensor query, Tensor key, Tensor? attn_mask, float dropout_p, bool is_causal, "
      "float? scale, Tensor? dropout_seed, Tensor logsumexp) -> Tensor");
  m.def(
      "sdpa_weights_backward(Tensor grad_weights, Tensor query, Tensor key, Tensor? attn_mask, "
      "float dropout_p, bool is_causal, float? scale, Tensor? dropout_seed, Tensor logsumexp, "
      "bool[3] output_mask) -> (Tensor grad_query, Tensor grad_key, Tensor grad_attn_mask)");
}

// The CPU kernels of cpu/sdpa_weights.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(sdpa_weights)

TORCH_LIBRARY_IMPL(fastdl, AutocastCPU, m) {
  m.impl("sdpa_weights", &sdpa_weights_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCUDA, m) {
  m.impl("sdpa_weights", &sdpa_weights_autocast<c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("sdpa_weights", &sdpa_weights_autograd);
  m.impl("sdpa_weights_backward", autograd::not_differentiable_kernel());
}

}  // namespace fastdl
