// Implicit-GEMM conv2d forward on tensor cores (WMMA) for float16/bfloat16 channels-last
// inputs, groups = 1: the output (N * OH * OW, K) = A @ B with A[m, r] the input patch of
// output pixel m (r = (ki, kj, c), gathered from NHWC on the fly, no column matrix) and
// B[r, k] the weight as (kh, kw, C, K). Included by cuda/conv.cu only.
#pragma once

#include "fastdl/conv/conv.h"

#include <ATen/core/Tensor.h>

#include <optional>

namespace fastdl::detail {

// Whether the tensor-core forward handles this problem: float16/bfloat16, a channels-last
// batched input, groups = 1, a device of compute capability 8.0 or newer.
bool conv2d_implicit_gemm_applies(const at::Tensor& input, const Conv2dShape& s);

// The forward (with bias) for a problem it applies to; a channels-last (N, K, OH, OW) output.
at::Tensor conv2d_forward_implicit_gemm(const at::Tensor& input, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const Conv2dShape& s);

}  // namespace fastdl::detail
