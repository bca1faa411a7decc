// Shared pieces of the C++ autograd Functions registered at the Autograd key.
#pragma once

#include "fastdl/common/tensors.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <optional>
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

// save_for_backward rejects undefined tensors: save_with_optional saves `always`, then those of
// the optional tensors that are present, and where each went; saved_optional(ctx, saved, k)
// reads the k-th optional back (nullopt when it was absent).
template <typename... Optionals>
void save_with_optional(torch::autograd::AutogradContext* ctx,
                        torch::autograd::variable_list always, const Optionals&... optionals) {
  std::vector<int64_t> slots;  // index in the saved list of each optional, -1 when absent
  const auto add = [&](const std::optional<at::Tensor>& t) {
    slots.push_back(present(t) ? static_cast<int64_t>(always.size()) : -1);
    if (present(t)) always.push_back(*t);
  };
  (add(optionals), ...);
  ctx->saved_data["fastdl_optional_slots"] = slots;
  ctx->save_for_backward(always);
}

inline std::optional<at::Tensor> saved_optional(torch::autograd::AutogradContext* ctx,
                                                const torch::autograd::variable_list& saved,
                                                size_t k) {
  const int64_t slot = ctx->saved_data["fastdl_optional_slots"].toIntVector().at(k);
  return slot >= 0 ? std::optional<at::Tensor>(saved.at(slot)) : std::nullopt;
}

// The Autograd kernel of every backward op (backward ops are not differentiable), boxed so one
// kernel serves every schema: m.impl("x_backward", autograd::not_differentiable_kernel()).
// It runs the op below autograd and, when a graph is recorded over the call
// (create_graph=True), attaches the defined outputs to a node that raises
// "fastdl.x_backward: double backward is not supported" if anything differentiates them.
torch::CppFunction not_differentiable_kernel();

}  // namespace fastdl::autograd
