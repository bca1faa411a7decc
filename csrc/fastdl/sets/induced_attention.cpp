// induced_attention: schema, argument checks, autograd, autocast and the C++ entry points.
// Kernels: cpu/induced_attention.cpp and cuda/induced_attention.cu; shared formulas and the
// work partition: induced_attention_math.h.
#include "fastdl/common/cpu_isa.h"
#include "fastdl/sets/induced_attention.h"

#include "fastdl/common/autocast.h"
#include "fastdl/common/autograd.h"
#include "fastdl/common/checks.h"
#include "fastdl/common/dispatch.h"

#include <ATen/autocast_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>

namespace fastdl {
namespace {
constexpr const char* kOp = "fastdl.induced_attention";

void check_rank4(const at::Tensor& t, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == 4, kOp, ": ", name, " must be 4-d ", layout, ", got shape ", t.sizes());
}
}  // namespace

namespace detail {

namespace {
// t itself when its last dim is contiguous (what the kernels need), else a contiguous copy.
at::Tensor rows_ready(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

at::Tensor mask_or_undefined(const std::optional<at::Tensor>& mask) {
  return present(mask) ? mask->contiguous() : at::Tensor();
}
}  // namespace

InducedForward prepare_induced_attention_forward(const at::Tensor& query, const at::Tensor& key,
                                                 const at::Tensor& value,
                                                 const std::optional<at::Tensor>& key_padding_mask,
                                                 std::optional<double> scale) {
  const auto s = check_induced_attention_forward(query, key, value, key_padding_mask, scale);
  const bool half = query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16;
  auto output =
      at::empty({s.batch, s.queries, s.heads, s.value_dim}, query.options()).transpose(1, 2);
  auto lse = at::empty({s.batch, s.heads, s.queries},
                       query.options().dtype(half ? at::kFloat : query.scalar_type()));
  return {s,
          induced_attention_scale(scale, s.head_dim),
          rows_ready(query),
          rows_ready(key),
          rows_ready(value),
          mask_or_undefined(key_padding_mask),
          output,
          lse};
}

InducedBackward prepare_induced_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& key_padding_mask,
    const at::Tensor& output, const at::Tensor& lse, double scale,
    std::array<bool, 3> output_mask) {
  const auto s = check_induced_attention_backward(grad_output, query, key, value, key_padding_mask,
                                                  output, lse, scale);
  InducedBackward b{s,
                    rows_ready(query),
                    rows_ready(key),
                    rows_ready(value),
                    mask_or_undefined(key_padding_mask),
                    rows_ready(grad_output),
                    rows_ready(output),
                    lse.contiguous(),
                    {},
                    {},
                    {}};
  // zeros_like keeps the (dense) layout of the prepared input, so gradients match the inputs.
  const auto zeros = [](bool need, const at::Tensor& like) {
    return need ? rows_ready(at::zeros_like(like)) : at::Tensor();
  };
  b.grad_query = zeros(output_mask[0], b.query);
  b.grad_key = zeros(output_mask[1], b.key);
  b.grad_value = zeros(output_mask[2], b.value);
  return b;
}

double induced_attention_scale(std::optional<double> scale, int64_t head_dim) {
  if (scale.has_value()) return *scale;
  return head_dim > 0 ? 1.0 / std::sqrt(static_cast<double>(head_dim)) : 1.0;
}

InducedShape check_induced_attention_forward(const at::Tensor& query, const at::Tensor& key,
                                             const at::Tensor& value,
                                             const std::optional<at::Tensor>& key_padding_mask,
                                             std::optional<double> scale) {
  checks::floating(query, kOp, "query");
  checks::floating(key, kOp, "key");
  checks::floating(value, kOp, "value");
  check_rank4(query, "query", "(batch, heads, L, E)");
  check_rank4(key, "key", "(batch, heads, S, E)");
  check_rank4(value, "value", "(batch, heads, S, Ev)");
  checks::same_device(key, query, kOp, "key", "query");
  checks::same_device(value, query, kOp, "value", "query");
  TORCH_CHECK(
      key.scalar_type() == query.scalar_type() && value.scalar_type() == query.scalar_type(), kOp,
      ": query, key and value must have the same dtype, got ", query.scalar_type(), ", ",
      key.scalar_type(), " and ", value.scalar_type());
  const int64_t B = query.size(0), H = query.size(1), L = query.size(2), E = query.size(3);
  TORCH_CHECK(key.size(0) == B && key.size(1) == H && key.size(3) == E, kOp,
              ": key must have shape (batch, heads, S, E) = (", B, ", ", H, ", S, ", E,
              ") matching query ", query.sizes(), ", got ", key.sizes());
  const int64_t S = key.size(2);
  TORCH_CHECK(value.size(0) == B && value.size(1) == H && value.size(2) == S, kOp,
              ": value must have shape (batch, heads, S, Ev) = (", B, ", ", H, ", ", S,
              ", Ev) matching key ", key.sizes(), ", got ", value.sizes());
  if (present(key_padding_mask)) {
    const auto& mask = *key_padding_mask;
    TORCH_CHECK(mask.scalar_type() == at::kBool, kOp,
                ": key_padding_mask must be a bool tensor (True = padded key), got ",
                mask.scalar_type());
    checks::same_device(mask, query, kOp, "key_padding_mask", "query");
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == S, kOp,
                ": key_padding_mask must have shape (batch, S) = (", B, ", ", S, "), got ",
                mask.sizes());
  }
  if (scale.has_value()) {
    TORCH_CHECK(std::isfinite(*scale), kOp, ": scale must be finite, got ", *scale);
  }
  return {B, H, L, S, E, value.size(3)};
}

InducedShape check_induced_attention_backward(const at::Tensor& grad_output,
                                              const at::Tensor& query, const at::Tensor& key,
                                              const at::Tensor& value,
                                              const std::optional<at::Tensor>& key_padding_mask,
                                              const at::Tensor& output, const at::Tensor& lse,
                                              double scale) {
  const auto shape = check_induced_attention_forward(query, key, value, key_padding_mask, scale);
  const std::vector<int64_t> out_shape = {shape.batch, shape.heads, shape.queries, shape.value_dim};
  for (const auto& [t, name] :
       {std::pair<const at::Tensor*, const char*>{&grad_output, "grad_output"},
        {&output, "output"}}) {
    checks::floating(*t, kOp, name);
    checks::same_device(*t, query, kOp, name, "query");
    TORCH_CHECK(t->sizes() == at::IntArrayRef(out_shape) && t->scalar_type() == query.scalar_type(),
                kOp, ": ", name, " must be ", query.scalar_type(), " of shape ",
                at::IntArrayRef(out_shape), ", got ", t->scalar_type(), t->sizes());
  }
  const bool half = query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16;
  const auto lse_dtype = half ? at::kFloat : query.scalar_type();
  TORCH_CHECK(lse.defined() && lse.device() == query.device() && lse.scalar_type() == lse_dtype &&
                  lse.sizes() == at::IntArrayRef({shape.batch, shape.heads, shape.queries}),
              kOp, ": lse must be ", lse_dtype, " of shape (", shape.batch, ", ", shape.heads, ", ",
              shape.queries, ") on ", query.device(), ", got ",
              lse.defined() ? lse.sizes() : at::IntArrayRef{});
  return shape;
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class InducedAttentionFunction : public torch::autograd::Function<InducedAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value,
                               const std::optional<at::Tensor>& key_padding_mask,
                               std::optional<double> scale) {
    autograd::InputEdges::save(ctx, {true, true, true, present(key_padding_mask)});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, lse] =
        FASTDL_CALL(induced_attention_forward).call(query, key, value, key_padding_mask, scale);
    // Only the output and the rows' log-sum-exp are kept: backward recomputes probabilities.
    autograd::save_with_optional(ctx, {query, key, value, output, lse}, key_padding_mask);
    ctx->saved_data["scale"] = detail::induced_attention_scale(scale, query.size(3));
    ctx->mark_non_differentiable({lse});
    return {output, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {autograd::InputEdges::needs_grad(ctx, 0),
                                      autograd::InputEdges::needs_grad(ctx, 1),
                                      autograd::InputEdges::needs_grad(ctx, 2)};
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2])) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [dq, dk, dv] =
        FASTDL_CALL(induced_attention_backward)
            .call(grads[0], saved[0], saved[1], saved[2], autograd::saved_optional(ctx, saved, 0),
                  saved[3], saved[4], ctx->saved_data["scale"].toDouble(), mask);
    return {dq, dk, dv, at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> induced_attention_forward_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, std::optional<double> scale) {
  auto out = InducedAttentionFunction::apply(query, key, value, key_padding_mask, scale);
  return {out[0], out[1]};
}

// Autocast, as torch's attention on both devices: run in the autocast dtype (float16 by
// default on CUDA, bfloat16 on CPU).
template <c10::DeviceType device>
std::tuple<at::Tensor, at::Tensor> induced_attention_forward_autocast(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, std::optional<double> scale) {
  autocast::BelowAutocast<device> below;
  const auto dtype = at::autocast::get_autocast_dtype(device);
  const auto cast = [&](const at::Tensor& t) {
    return at::autocast::cached_cast(dtype, t, device);
  };
  return FASTDL_CALL(induced_attention_forward)
      .call(cast(query), cast(key), cast(value), key_padding_mask, scale);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> induced_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, std::optional<double> scale) {
  return FASTDL_CALL(induced_attention_forward).call(query, key, value, key_padding_mask, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> induced_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& key_padding_mask,
    const at::Tensor& output, const at::Tensor& lse, double scale,
    std::array<bool, 3> output_mask) {
  return FASTDL_CALL(induced_attention_backward)
      .call(grad_output, query, key, value, key_padding_mask, output, lse, scale, output_mask);
}

at::Tensor induced_attention(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value,
                             const std::optional<at::Tensor>& key_padding_mask,
                             std::optional<double> scale) {
  return std::get<0>(induced_attention_forward(query, key, value, key_padding_mask, scale));
}

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "induced_attention_forward(Tensor query, Tensor key, Tensor value, "
      "Tensor? key_padding_mask=None, float? scale=None) -> (Tensor output, Tensor lse)");
  m.def(
      "induced_attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, "
      "Tensor? key_padding_mask, Tensor output, Tensor lse, float scale, bool[3] output_mask) "
      "-> (Tensor grad_query, Tensor grad_key, Tensor grad_value)");
}

// The CPU kernels of cpu/induced_attention.cpp, in the copy for this CPU's ISA.
FASTDL_REGISTER_CPU_KERNELS(induced_attention)

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("induced_attention_forward", &induced_attention_forward_autograd);
  m.impl("induced_attention_backward", autograd::not_differentiable_kernel());
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCPU, m) {
  m.impl("induced_attention_forward", &induced_attention_forward_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(fastdl, AutocastCUDA, m) {
  m.impl("induced_attention_forward", &induced_attention_forward_autocast<c10::DeviceType::CUDA>);
}

}  // namespace fastdl
