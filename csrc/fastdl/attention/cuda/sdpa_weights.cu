// sdpa_weights' CUDA row kernels (MultiheadAttention's need_weights; the GEMMs are in
// attention/sdpa_weights.cpp): raw scores to probabilities (mask, exp(s - lse), dropout) and
// the softmax backward, one warp per row.
#include "fastdl/attention/cuda/sdpa_kernels.cuh"
#include "fastdl/attention/sdpa_weights.h"

namespace fastdl {
namespace sdpa_cuda {
namespace {

// sdpa_weights rows, one warp per (batch, head, query row): scores (already scaled) become
// exp(s + mask - lse) divided by their sum (the fused forward's lse comes from its own products
// of the scores, a few ulp of |s| away; probabilities that do not sum to one would make the
// softmax backward of a saturated row noise); `dropped`, when set, gets them times dropout's
// keep factor.
template <typename T>
__global__ void probs_kernel(Params<T> p, T* scores, const acc_t<T>* lse, T* dropped,
                             int64_t rows) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = row % p.q_len, h = (row / p.q_len) % p.q_heads, b = row / (p.q_len * p.q_heads);
  const A row_lse = lse[row];
  A sum = 0;
  for (int64_t j = lane; j < p.kv_len; j += 32) {
    T* s = scores + row * p.kv_len + j;
    // The GEMM applied the scale already (Params::score would apply it again): add the mask.
    A v = static_cast<A>(*s);
    const int64_t m =
        b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3];
    if (p.mask_float) v += static_cast<A>(p.mask_float[m]);
    const bool masked = (p.causal && j > i) || (p.mask_bool && !p.mask_bool[m]);
    // A masked key scores -inf: exp(-inf - lse) = 0, or NaN in a NaN row (as the CPU kernel
    // and torch's softmax); exp_shifted gives 0 for a row with no key.
    const A e = softmax::exp_shifted(masked ? softmax::neg_inf<A>() : v, row_lse);
    sum += e;
    *s = static_cast<T>(e);  // half scores: rounded here and again below (within one ulp)
  }
  sum = warp_sum(sum);
  const A inv = sum > A(0) ? A(1) / sum : A(1);
  for (int64_t j = lane; j < p.kv_len; j += 32) {
    T* s = scores + row * p.kv_len + j;
    const A prob = static_cast<A>(*s) * inv;
    *s = static_cast<T>(prob);
    if (dropped)
      dropped[row * p.kv_len + j] = static_cast<T>(prob * p.template keep_factor<A>(b, h, i, j));
  }
}

// grad (in place) = P (dP - sum_j dP_j P_j), dP = grad * keep factor; one warp per row.
template <typename T>
__global__ void softmax_backward_kernel(Params<T> p, T* grad, const T* probs, int64_t rows) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = row % p.q_len, h = (row / p.q_len) % p.q_heads, b = row / (p.q_len * p.q_heads);
  T* g = grad + row * p.kv_len;
  const T* pr = probs + row * p.kv_len;
  A delta = 0;
  for (int64_t j = lane; j < p.kv_len; j += 32) {
    delta += static_cast<A>(g[j]) * p.template keep_factor<A>(b, h, i, j) * static_cast<A>(pr[j]);
  }
  delta = warp_sum(delta);
  for (int64_t j = lane; j < p.kv_len; j += 32) {
    const A dp = static_cast<A>(g[j]) * p.template keep_factor<A>(b, h, i, j);
    g[j] = static_cast<T>(static_cast<A>(pr[j]) * (dp - delta));
  }
}

}  // namespace
}  // namespace sdpa_cuda

namespace detail {

using sdpa_cuda::acc_t;
using sdpa_cuda::grid_blocks;
using sdpa_cuda::make_params;

void sdpa_weights_probs_cuda(at::Tensor& scores, const std::optional<at::Tensor>& attn_mask,
                             const at::Tensor& logsumexp, const SdpaShape& shape,
                             at::Tensor* dropped) {
  cuda::DeviceGuard guard(scores.device());
  const auto lse = logsumexp.contiguous();
  const int64_t rows = shape.batch * shape.q_heads * shape.q_len;
  if (rows == 0) return;
  constexpr int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, scores.scalar_type(), "sdpa_weights_probs_cuda", [&] {
        // Params with the scores as a stand-in for q/k/v: only the mask, sizes and dropout
        // are read.
        const auto params = make_params<scalar_t>(shape, scores, scores, scores, attn_mask);
        cuda::launch(sdpa_cuda::probs_kernel<scalar_t>,
                     {grid_blocks(cuda::ceil_div(rows, threads / 32)), threads, 0}, params,
                     scores.mutable_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t<scalar_t>>(),
                     dropped ? dropped->mutable_data_ptr<scalar_t>() : nullptr, rows);
      });
}

void sdpa_weights_softmax_backward_cuda(at::Tensor& grad, const at::Tensor& probs,
                                        const SdpaShape& shape) {
  cuda::DeviceGuard guard(grad.device());
  const int64_t rows = shape.batch * shape.q_heads * shape.q_len;
  if (rows == 0) return;
  constexpr int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "sdpa_weights_softmax_backward_cuda", [&] {
        const auto params = make_params<scalar_t>(shape, grad, grad, grad, std::nullopt);
        cuda::launch(sdpa_cuda::softmax_backward_kernel<scalar_t>,
                     {grid_blocks(cuda::ceil_div(rows, threads / 32)), threads, 0}, params,
                     grad.mutable_data_ptr<scalar_t>(), probs.const_data_ptr<scalar_t>(), rows);
      });
}

}  // namespace detail

namespace {
const detail::SdpaWeightsRows& cuda_weights_rows() {
  static const detail::SdpaWeightsRows rows{&detail::sdpa_weights_probs_cuda,
                                            &detail::sdpa_weights_softmax_backward_cuda};
  return rows;
}
}  // namespace

FASTDL_CUDA_KERNELS(m) { FASTDL_SDPA_WEIGHTS_KERNELS(m, cuda_weights_rows); }

}  // namespace fastdl
