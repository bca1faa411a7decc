// What the sdpa CUDA kernels share (sdpa_forward.cu, sdpa_tensor_core.cu, sdpa_backward.cu,
// sdpa_weights.cu): the tiling constants, the Params every kernel reads, warp reductions, the
// staging of rows in shared memory, and the launch helpers.
//
// The kernels: flash attention on CUDA cores, every dtype, accumulating in float32
// (float64 for float64). Head dims up to 256.
//
// Forward: a block of 4 warps owns 16 query rows (4 per warp) of one (batch, head). Tiles of
// 32 keys and values are staged in shared memory; lane j scores key j of the tile against each
// of its warp's rows, the warp keeps the online-softmax state (row max m, sum l) and each lane
// accumulates output columns lane, lane + 32, ... Only O and the row log-sum-exp are written.
// Backward: delta_i = rowsum(dO_i * O_i); a dQ kernel shaped like the forward recomputes
// P = exp(S - lse) and dS = P (dP - delta) per tile and accumulates dQ = scale dS K (and writes
// dS for a float mask's gradient); a dK/dV kernel gives each block of 4 warps a tile of 32
// keys, walks the query rows of the key/value head's group 16 at a time and accumulates
// dV = P^T dO and dK = scale dS^T Q in shared memory. No atomics.
// float16/bfloat16 forward with head dims 64 or 128 (E == Ev): a tensor-core kernel (WMMA
// 16x16x16, float accumulation) over 64-query x 64-key tiles; everything else on CUDA cores.
// Not yet: tensor cores in backward, wgmma.
#pragma once

#include "fastdl/attention/sdpa.h"
#include "fastdl/attention/sdpa_math.h"
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/common/tensors.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <type_traits>

namespace fastdl::sdpa_cuda {

using cuda::acc_t;

constexpr int kTileKeys = 32;  // keys per tile in the forward and dQ kernels: one per lane
constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int64_t kMaxHeadDim = 256;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// Everything the kernels read about one call. Strides are in elements; q/k/v/dO have a unit
// last stride.
template <typename T>
struct Params {
  const T* q;
  const T* k;
  const T* v;
  int64_t q_stride[3], k_stride[3], v_stride[3];
  const bool* mask_bool;  // at most one of the two masks is set
  const T* mask_float;
  int64_t mask_stride[4];
  int64_t batch, q_heads, group, q_len, kv_len, head_dim, value_dim;
  double scale;
  float dropout_p;    // compared with the hash's uniform (float, as on the CPU)
  double keep_scale;  // 1 / (1 - p), in double so float64 matches the CPU exactly
  uint64_t seed;
  bool causal;

  __device__ const T* q_row(int64_t b, int64_t h, int64_t i) const {
    return q + b * q_stride[0] + h * q_stride[1] + i * q_stride[2];
  }
  __device__ const T* k_row(int64_t b, int64_t kv_h, int64_t j) const {
    return k + b * k_stride[0] + kv_h * k_stride[1] + j * k_stride[2];
  }
  __device__ const T* v_row(int64_t b, int64_t kv_h, int64_t j) const {
    return v + b * v_stride[0] + kv_h * v_stride[1] + j * v_stride[2];
  }

  // scale * dot + mask for query i and key j, -inf when masked (bool mask false, causal,
  // or a key past the end of the set).
  template <typename A>
  __device__ A score(A dot, int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (j >= kv_len || (causal && j > i)) return softmax::neg_inf<A>();
    const int64_t m =
        b * mask_stride[0] + h * mask_stride[1] + i * mask_stride[2] + j * mask_stride[3];
    A s = dot * static_cast<A>(scale);
    if (mask_float) s += static_cast<A>(mask_float[m]);
    if (mask_bool && !mask_bool[m]) s = softmax::neg_inf<A>();
    return s;
  }

  // Dropout's factor for P[b, h, i, j]: 0 or 1 / (1 - p); 1 without dropout.
  template <typename A>
  __device__ A keep_factor(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (dropout_p <= 0.0f) return A(1);
    const auto index = static_cast<uint64_t>(((b * q_heads + h) * q_len + i) * kv_len + j);
    return detail::sdpa_dropout_keep(seed, index, dropout_p) ? static_cast<A>(keep_scale) : A(0);
  }

  // Keys a causal block of query rows ending at `last_row` can see.
  __device__ int64_t visible_keys(int64_t last_row) const {
    return causal ? imin(last_row + 1, kv_len) : kv_len;
  }
};

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v = softmax::max_nan(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Copies `rows` rows of `dim` values (row r at src(r)) into shared memory with row pitch
// `pitch`, converting to the accumulation type; rows past `valid` are zero.
template <typename T, typename A, typename RowPtr>
__device__ void stage_rows(A* dst, int rows, int64_t dim, int64_t pitch, int64_t valid,
                           const RowPtr& src, int thread, int threads) {
  for (int64_t idx = thread; idx < rows * dim; idx += threads) {
    const int64_t r = idx / dim, e = idx % dim;
    dst[r * pitch + e] = r < valid ? static_cast<A>(src(r)[e]) : A(0);
  }
}

// Dot product of two rows in shared memory.
template <typename A>
__device__ __forceinline__ A dot(const A* x, const A* y, int64_t n) {
  A s = 0;
  for (int64_t e = 0; e < n; ++e) s += x[e] * y[e];
  return s;
}

// (batch, head, row block) of block `blk` for grids over batch * heads * row_blocks.
struct BlockIndex {
  int64_t b, h, block;
  __device__ BlockIndex(int64_t blk, int64_t heads, int64_t blocks)
      : b(blk / (heads * blocks)), h((blk / blocks) % heads), block(blk % blocks) {}
};

// What the backward kernels read besides Params.
template <typename T>
struct BackwardArgs {
  const T* dout;
  int64_t dout_stride[3];
  const acc_t<T>* lse;
  const acc_t<T>* delta;
  __device__ const T* dout_row(int64_t b, int64_t h, int64_t i) const {
    return dout + b * dout_stride[0] + h * dout_stride[1] + i * dout_stride[2];
  }
};

template <typename T>
Params<T> make_params(const detail::SdpaShape& s, const at::Tensor& q, const at::Tensor& k,
                      const at::Tensor& v, const std::optional<at::Tensor>& mask) {
  Params<T> p{};
  p.q = q.const_data_ptr<T>();
  p.k = k.const_data_ptr<T>();
  p.v = v.const_data_ptr<T>();
  for (int d = 0; d < 3; ++d) {
    p.q_stride[d] = q.stride(d);
    p.k_stride[d] = k.stride(d);
    p.v_stride[d] = v.stride(d);
  }
  if (present(mask)) {
    if (mask->scalar_type() == at::kBool) {
      p.mask_bool = mask->const_data_ptr<bool>();
    } else {
      p.mask_float = mask->const_data_ptr<T>();
    }
    for (int d = 0; d < 4; ++d) p.mask_stride[d] = mask->stride(d);
  }
  p.batch = s.batch;
  p.q_heads = s.q_heads;
  p.group = s.group();
  p.q_len = s.q_len;
  p.kv_len = s.kv_len;
  p.head_dim = s.head_dim;
  p.value_dim = s.value_dim;
  p.scale = s.scale;
  p.dropout_p = static_cast<float>(s.dropout_p);
  p.keep_scale = 1.0 / (1.0 - s.dropout_p);
  p.seed = s.seed;
  p.causal = s.is_causal;
  return p;
}

// Output columns per lane (a multiple of 32 covering dim), as a template bucket.
inline int chunks_for(int64_t dim) { return dim <= 32 ? 1 : dim <= 64 ? 2 : dim <= 128 ? 4 : 8; }

// Launches kernel<..., chunks> for the chunk count of `dim` (launch takes the count as an
// integral constant).
template <typename Launch>
void with_chunks(int64_t dim, const Launch& launch) {
  static_switch<1, 2, 4, 8>(chunks_for(dim), launch);
}

// Allows `kernel` `bytes` of dynamic shared memory (a clear error when the device has less).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  cuda::reserve_dynamic_shared(kernel, bytes, "fastdl.scaled_dot_product_attention", "head dims");
}

inline void check_cuda_dims(const detail::SdpaShape& s) {
  TORCH_CHECK(s.head_dim <= kMaxHeadDim && s.value_dim <= kMaxHeadDim,
              "fastdl.scaled_dot_product_attention: CUDA kernels take head dims up to ",
              kMaxHeadDim, ", got E = ", s.head_dim, " and Ev = ", s.value_dim);
}

inline int64_t grid_blocks(int64_t blocks) {
  TORCH_CHECK(blocks <= cuda::max_grid_x(), "fastdl attention: problem too large (", blocks,
              " blocks)");
  return blocks;
}

// The tensor-core forward (sdpa_tensor_core.cu) for half types when it applies (E == Ev in
// {64, 128}, sm_80+ with the shared memory it needs); false when it does not, and always false
// for float and double (the template, which the half overloads win over).
template <typename T>
bool launch_forward_tensor_core(const detail::SdpaShape&, const Params<T>&, at::Tensor&,
                                at::Tensor&) {
  return false;
}
bool launch_forward_tensor_core(const detail::SdpaShape& shape, const Params<at::Half>& params,
                                at::Tensor& output, at::Tensor& logsumexp);
bool launch_forward_tensor_core(const detail::SdpaShape& shape, const Params<at::BFloat16>& params,
                                at::Tensor& output, at::Tensor& logsumexp);

}  // namespace fastdl::sdpa_cuda
