// What layer_norm and batch_norm share about their parameters' gradients.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace fastdl::detail {

// dtypes of the weight and bias gradients of a norm's backward op: the weight's (the weight and
// the bias share a dtype). Without a weight the op does not see the bias, which may be float32
// for a half input (mixed precision): its gradient is then in the accumulation dtype (float32
// for float16/bfloat16 inputs, else the input's), which autograd casts to the bias's dtype.
// A sum over many rows never rounds or overflows in half precision.
inline std::pair<at::ScalarType, at::ScalarType> norm_param_grad_dtypes(const at::Tensor& input,
                                                                        const at::Tensor& weight) {
  if (weight.defined()) return {weight.scalar_type(), weight.scalar_type()};
  const auto dtype = input.scalar_type();
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
  return {dtype, half ? at::kFloat : dtype};
}

}  // namespace fastdl::detail
