#include "fastdl/common/autograd.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <string>

namespace fastdl::autograd {
namespace {

// The tensors an argument holds: a tensor, an optional one, or a list of them.
void collect_tensors(const c10::IValue& value, std::vector<at::Tensor>& out) {
  if (value.isTensor()) {
    if (value.toTensor().defined()) out.push_back(value.toTensor());
  } else if (value.isTensorList()) {
    for (const at::Tensor& t : value.toTensorVector()) out.push_back(t);
  } else if (value.isList()) {
    for (const c10::IValue& v : value.toListRef()) collect_tensors(v, out);
  }
}

void not_differentiable_boxed(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                              torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t num_arguments = schema.arguments().size();
  std::vector<at::Tensor> inputs;
  for (size_t i = stack->size() - num_arguments; i < stack->size(); ++i) {
    collect_tensors((*stack)[i], inputs);
  }
  bool record = false;
  if (at::GradMode::is_enabled()) {
    for (const auto& t : inputs) record = record || t.requires_grad();
  }
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  if (!record) return;
  std::string name = schema.name();  // "fastdl::x_backward" -> "fastdl.x_backward"
  if (const auto colons = name.find("::"); colons != std::string::npos)
    name.replace(colons, 2, ".");
  auto node = c10::make_intrusive<torch::autograd::Error>(
      name + ": double backward is not supported", torch::autograd::collect_next_edges(inputs));
  const size_t num_returns = schema.returns().size();
  for (size_t i = stack->size() - num_returns; i < stack->size(); ++i) {
    if ((*stack)[i].isTensor()) torch::autograd::set_history((*stack)[i].toTensor(), node);
  }
}

}  // namespace

torch::CppFunction not_differentiable_kernel() {
  return torch::CppFunction::makeFromBoxedFunction<&not_differentiable_boxed>();
}

}  // namespace fastdl::autograd
