// sdpa (scaled dot-product attention): schema, argument checks, autograd, autocast and the
// C++ entry points. Kernels: cpu/sdpa.cpp and cuda/sdpa.cu; shared formulas: sdpa_math.h.
#include "fastdl/attention/sdpa.h"

#include "fastdl/attention/sdpa_options.h"
#include "fastdl/common/autocast.h"
#include "fastdl/common/autograd.h"
#include "fastdl/common/checks.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/dispatch.h"

#include <ATen/autocast_mode.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.scaled_dot_product_attention";
}  // namespace

namespace detail {

SdpaShape check_sdpa_forward(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                             double dropout_p, bool is_causal, std::optional<double> scale,
                             const std::optional<at::Tensor>& dropout_seed) {
  checks::floating(query, kOp, "query");
  checks::floating(key, kOp, "key");
  checks::floating(value, kOp, "value");
  TORCH_CHECK(
      query.scalar_type() == key.scalar_type() && query.scalar_type() == value.scalar_type(), kOp,
      ": expected query, key and value to have the same dtype, got query.dtype: ",
      query.scalar_type(), ", key.dtype: ", key.scalar_type(),
      " and value.dtype: ", value.scalar_type());
  checks::same_device(key, query, kOp, "key", "query");
  checks::same_device(value, query, kOp, "value", "query");
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4, kOp,
              ": query, key and value must be 4-d (B, H, L, E), (B, H, S, E), (B, H, S, Ev), got "
              "shapes ",
              query.sizes(), ", ", key.sizes(), " and ", value.sizes());
  SdpaShape s{};
  s.batch = query.size(0);
  s.q_heads = query.size(1);
  s.q_len = query.size(2);
  s.head_dim = query.size(3);
  s.kv_heads = key.size(1);
  s.kv_len = key.size(2);
  s.value_dim = value.size(3);
  TORCH_CHECK(key.size(0) == s.batch && value.size(0) == s.batch, kOp,
              ": query, key and value must have the same batch size, got ", query.sizes(), ", ",
              key.sizes(), " and ", value.sizes());
  TORCH_CHECK(key.size(3) == s.head_dim, kOp,
              ": key's last dimension must equal query's (E = ", s.head_dim, "), got key of shape ",
              key.sizes());
  TORCH_CHECK(value.size(1) == s.kv_heads && value.size(2) == s.kv_len, kOp,
              ": value must have key's heads and length (", s.kv_heads, ", ", s.kv_len,
              "), got value of shape ", value.sizes());
  TORCH_CHECK(s.kv_heads > 0 ? s.q_heads % s.kv_heads == 0 : s.q_heads == 0, kOp,
              ": the number of query heads (", s.q_heads,
              ") must be a multiple of the number of key/value heads (", s.kv_heads, ")");
  TORCH_CHECK(s.head_dim > 0 || scale.has_value(), kOp,
              ": query's last dimension E must be positive for the default scale 1/sqrt(E), got ",
              query.sizes());
  s.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  TORCH_CHECK(std::isfinite(s.scale), kOp, ": scale must be finite, got ", s.scale);
  // dropout_p = 1 drops every weight, as torch: the output and gradients are zeros (the keep
  // test u >= 1 never passes, so the infinite 1 / (1 - p) is never applied).
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, kOp, ": dropout_p must be in [0, 1], got ",
              dropout_p);
  s.dropout_p = dropout_p;
  s.is_causal = is_causal;
  s.has_mask = present(attn_mask);
  if (s.has_mask) {
    const auto& mask = *attn_mask;
    TORCH_CHECK(!is_causal, kOp, ": explicit attn_mask should not be set when is_causal=True");
    TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == query.scalar_type(), kOp,
                ": expected attn_mask dtype to be bool or to match query dtype (",
                query.scalar_type(), "), got ", mask.scalar_type());
    checks::same_device(mask, query, kOp, "attn_mask", "query");
    checks::shape(mask, {s.batch, s.q_heads, s.q_len, s.kv_len}, kOp, "attn_mask");
    s.mask_is_bool = mask.scalar_type() == at::kBool;
  }
  if (dropout_p > 0.0) {
    TORCH_CHECK(present(dropout_seed), kOp, ": dropout_seed is required when dropout_p > 0");
    const auto& seed = *dropout_seed;
    TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1 && seed.device().is_cpu(), kOp,
                ": dropout_seed must be an int64 tensor with one element on the CPU, got ",
                seed.scalar_type(), seed.sizes(), " on ", seed.device());
    s.seed = static_cast<uint64_t>(seed.item<int64_t>());
  }
  return s;
}

SdpaShape check_sdpa_backward(const at::Tensor& grad_output, const at::Tensor& query,
                              const at::Tensor& key, const at::Tensor& value,
                              const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
                              const at::Tensor& logsumexp, double dropout_p, bool is_causal,
                              std::optional<double> scale,
                              const std::optional<at::Tensor>& dropout_seed) {
  const auto s =
      check_sdpa_forward(query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_seed);
  const std::array<int64_t, 4> out_shape{s.batch, s.q_heads, s.q_len, s.value_dim};
  for (const auto& [t, name] :
       {std::pair{&grad_output, "grad_output"}, std::pair{&output, "output"}}) {
    TORCH_CHECK(t->defined(), kOp, ": ", name, " must be a tensor, got None");
    checks::shape(*t, out_shape, kOp, name);
    TORCH_CHECK(t->scalar_type() == query.scalar_type(), kOp, ": ", name, " must be ",
                query.scalar_type(), ", got ", t->scalar_type());
    checks::same_device(*t, query, kOp, name, "query");
  }
  TORCH_CHECK(logsumexp.defined(), kOp, ": logsumexp must be a tensor, got None");
  checks::shape(logsumexp, {s.batch, s.q_heads, s.q_len}, kOp, "logsumexp");
  checks::same_device(logsumexp, query, kOp, "logsumexp", "query");
  const auto half = query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16;
  TORCH_CHECK(logsumexp.scalar_type() == (half ? at::kFloat : query.scalar_type()), kOp,
              ": logsumexp must be ", half ? at::kFloat : query.scalar_type(), ", got ",
              logsumexp.scalar_type());
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdpa_gradient_buffers(
    const SdpaShape& shape, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    std::array<bool, 4> output_mask) {
  TORCH_CHECK(!output_mask[3] || (shape.has_mask && !shape.mask_is_bool), kOp,
              ": a gradient for attn_mask needs a float attn_mask");
  const auto zeros_if = [](bool wanted, at::IntArrayRef sizes, const at::Tensor& like) {
    return wanted ? at::zeros(sizes, like.options()) : at::Tensor();
  };
  return {zeros_if(output_mask[0], query.sizes(), query),
          zeros_if(output_mask[1], key.sizes(), key),
          zeros_if(output_mask[2], value.sizes(), value),
          zeros_if(output_mask[3], {shape.batch, shape.q_heads, shape.q_len, shape.kv_len}, query)};
}

at::Tensor unit_last_stride(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class SdpaFunction : public torch::autograd::Function<SdpaFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                               double dropout_p, bool is_causal, std::optional<double> scale,
                               const std::optional<at::Tensor>& dropout_seed) {
    autograd::InputEdges::save(ctx, {true, true, true, present(attn_mask), present(dropout_seed)});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, logsumexp] =
        FASTDL_CALL(sdpa_forward)
            .call(query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_seed);
    autograd::save_with_optional(ctx, {query, key, value, output, logsumexp}, attn_mask);
    detail::SdpaOptions{dropout_p, is_causal, scale, dropout_seed}.save(ctx);
    ctx->mark_non_differentiable({logsumexp});
    return {output, logsumexp};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto mask = autograd::saved_optional(ctx, saved, 0);
    const auto options = detail::SdpaOptions::load(ctx);
    const bool mask_grad = autograd::InputEdges::needs_grad(ctx, 3);
    TORCH_CHECK(!mask_grad || mask->scalar_type() != at::kBool, kOp,
                ": a bool attn_mask has no gradient");
    const std::array<bool, 4> needs = {autograd::InputEdges::needs_grad(ctx, 0),
                                       autograd::InputEdges::needs_grad(ctx, 1),
                                       autograd::InputEdges::needs_grad(ctx, 2), mask_grad};
    variable_list result(8);
    if (!grads[0].defined()) return result;
    auto [grad_query, grad_key, grad_value, grad_mask] =
        FASTDL_CALL(sdpa_backward)
            .call(grads[0], saved[0], saved[1], saved[2], mask, saved[3], saved[4],
                  options.dropout_p, options.is_causal, options.scale, options.dropout_seed, needs);
    result[0] = grad_query;
    result[1] = grad_key;
    result[2] = grad_value;
    result[3] = grad_mask;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> sdpa_forward_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
    std::optional<double> scale, const std::optional<at::Tensor>& dropout_seed) {
  auto out =
      SdpaFunction::apply(query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_seed);
  return {out[0], out[1]};
}

// Autocast, as torch's scaled_dot_product_attention: it runs in the autocast dtype on both
// devices (a float mask is cast with the inputs, a bool one kept).
template <c10::DeviceType device>
std::tuple<at::Tensor, at::Tensor> sdpa_forward_autocast(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
    std::optional<double> scale, const std::optional<at::Tensor>& dropout_seed) {
  autocast::BelowAutocast<device> below;
  const auto dtype = at::autocast::get_autocast_dtype(device);
  const auto cast = [&](const at::Tensor& t) {
    return at::autocast::cached_cast(dtype, t, device);
  };
  std::optional<at::Tensor> mask = attn_mask;
  if (present(mask) && mask->scalar_type() != at::kBool) mask = cast(*mask);
  return FASTDL_CALL(sdpa_forward)
      .call(cast(query), cast(key), cast(value), mask, dropout_p, is_causal, scale, dropout_seed);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sdpa_forward(const at::Tensor& query, const at::Tensor& key,
                                                const at::Tensor& value,
                                                const std::optional<at::Tensor>& attn_mask,
                                                double dropout_p, bool is_causal,
                                                std::optional<double> scale,
                                                const std::optional<at::Tensor>& dropout_seed) {
  return FASTDL_CALL(sdpa_forward)
      .call(query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdpa_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
    const at::Tensor& logsumexp, double dropout_p, bool is_causal, std::optional<double> scale,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 4> output_mask) {
  return FASTDL_CALL(sdpa_backward)
      .call(grad_output, query, key, value, attn_mask, output, logsumexp, dropout_p, is_causal,
            scale, dropout_seed, output_mask);
}

at::Tensor sdpa(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
                std::optional<double> scale, const std::optional<at::Tensor>& dropout_seed) {
  return std::get<0>(
      sdpa_forward(query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_seed));
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "sdpa_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
      "float dropout_p=0.0, bool is_causal=False, float? scale=None, Tensor? dropout_seed=None) "
      "-> (Tensor output, Tensor logsumexp)");
  m.def(
      "sdpa_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, "
      "Tensor? attn_mask, Tensor output, Tensor logsumexp, float dropout_p, bool is_causal, "
      "float? scale, Tensor? dropout_seed, bool[4] output_mask) "
      "-> (Tensor grad_query, Tensor grad_key, Tensor grad_value, Tensor grad_attn_mask)");
}

// The CPU kernels of cpu/sdpa.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(sdpa)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("sdpa_forward", &sdpa_forward_autograd);
  m.impl("sdpa_backward", autograd::not_differentiable_kernel());
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCPU, m) {
  m.impl("sdpa_forward", &sdpa_forward_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCUDA, m) {
  m.impl("sdpa_forward", &sdpa_forward_autocast<c10::DeviceType::CUDA>);
}

}  // namespace fastdl
