// Shared pieces of the C++ autograd Functions registered at the Autograd key.
#pragma once

#include "fastdl/common/tensors.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <optional>
#include <string>
#include <tuple>
#include <string_view>
#include <vector>

namespace fastdl::autograd {

// A torch::autograd::Function gives an input edge only to the tensor arguments that are
// present (an absent std::optional<Tensor> has none), and needs_input_grad counts edges.
// InputEdges maps each tensor argument's position to its edge; save it in forward and ask
// needs_grad(ctx, k) in backward.
class InputEdges {
 public:
  static constexpr const char* kKey = "fastdl_input_edges";

  // present[k]: whether tensor argument k was given. Stores the map in ctx.
  static void save(torch::autograd::AutogradContext* ctx, std::initializer_list<bool> present) {
    std::vector<int64_t> edges;
    int64_t next = 0;
    for (bool p : present) edges.push_back(p ? next++ : -1);
    ctx->saved_data[kKey] = edges;
  }

  // Whether tensor argument k needs a gradient.
  static bool needs_grad(torch::autograd::AutogradContext* ctx, size_t k) {
    const auto edges = ctx->saved_data[kKey].toIntVector();
    return edges.at(k) >= 0 && ctx->needs_input_grad(static_cast<size_t>(edges[k]));
  }
};

// save_for_backward rejects undefined tensors: save `always` and then the optional tensor
// when present; saved_optional(saved, i) reads it back (nullopt when it was absent).
inline void save_with_optional(torch::autograd::AutogradContext* ctx,
                               torch::autograd::variable_list always,
                               const std::optional<at::Tensor>& optional) {
  if (present(optional)) always.push_back(*optional);
  ctx->save_for_backward(always);
}

inline std::optional<at::Tensor> saved_optional(const torch::autograd::variable_list& saved,
                                                size_t i) {
  return i < saved.size() ? std::optional<at::Tensor>(saved[i]) : std::nullopt;
}

// The Autograd kernel of a backward op (backward ops are not differentiable): runs `run` below
// autograd and, when a graph is recorded over the call (create_graph=True), attaches the
// defined outputs to a node that raises if anything differentiates through them.
template <typename Run>
auto not_differentiable(std::string_view op, const torch::autograd::variable_list& inputs,
                        Run&& run) {
  bool record = false;
  if (at::GradMode::is_enabled()) {
    for (const auto& t : inputs) record = record || (t.defined() && t.requires_grad());
  }
  auto outputs = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return run();
  }();
  if (record) {
    auto node = c10::make_intrusive<torch::autograd::Error>(
        std::string(op) + ": double backward is not supported",
        torch::autograd::collect_next_edges(inputs));
    std::apply([&](auto&... t) { (torch::autograd::set_history(t, node), ...); }, outputs);
  }
  return outputs;
}

}  // namespace fastdl::autograd
