// sdpa forward on CUDA cores, every dtype (the tensor-core forward takes half types where it
// applies): see sdpa_kernels.cuh.
#include "fastdl/attention/cuda/sdpa_kernels.cuh"

namespace fastdl {
namespace sdpa_cuda {
namespace {

template <typename T, int kChunks>
__global__ void __launch_bounds__(kWarps * 32)
    forward_kernel(Params<T> p, T* out, acc_t<T>* lse, int64_t row_blocks) {
  using A = acc_t<T>;
  FASTDL_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t E = p.head_dim, Ev = p.value_dim;
  A* ks = reinterpret_cast<A*>(smem);  // [kTileKeys][E + 1] (padded: lane j reads row j)
  A* vs = ks + kTileKeys * (E + 1);    // [kTileKeys][Ev]
  A* qs = vs + kTileKeys * Ev;         // [kRowsPerBlock][E]
  const BlockIndex at(blockIdx.x, p.q_heads, row_blocks);
  const int64_t b = at.b, h = at.h, kv_h = at.h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = at.block * kRowsPerBlock;
  const int64_t rows = imin(kRowsPerBlock, p.q_len - row0);
  stage_rows<T, A>(
      qs, kRowsPerBlock, E, E, rows, [&](int64_t r) { return p.q_row(b, h, row0 + r); },
      threadIdx.x, blockDim.x);

  // Per-row state in registers: every loop over r and c below has a compile-time trip count
  // and is unrolled (a `break` would keep the arrays in local memory).
  A o[kRowsPerWarp][kChunks];
  A m[kRowsPerWarp], l[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = softmax::neg_inf<A>();
    l[r] = 0;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) o[r][c] = 0;
  }
  const int64_t keys = p.visible_keys(row0 + rows - 1);
  for (int64_t k0 = 0; k0 < keys; k0 += kTileKeys) {
    __syncthreads();  // the previous tile is consumed (and, the first time, qs is staged)
    const int64_t tile = imin(kTileKeys, p.kv_len - k0);
    stage_rows<T, A>(
        ks, kTileKeys, E, E + 1, tile, [&](int64_t r) { return p.k_row(b, kv_h, k0 + r); },
        threadIdx.x, blockDim.x);
    stage_rows<T, A>(
        vs, kTileKeys, Ev, Ev, tile, [&](int64_t r) { return p.v_row(b, kv_h, k0 + r); },
        threadIdx.x, blockDim.x);
    __syncthreads();
    const int64_t j = k0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int local = warp * kRowsPerWarp + r;
      const int64_t i = row0 + local;
      if (i < p.q_len) {  // uniform across the warp
        const A s = p.score(dot(qs + local * E, ks + lane * (E + 1), E), b, h, i, j);
        const A new_m = softmax::max_nan(m[r], warp_max(s));
        A prob = softmax::exp_shifted(s, new_m);
        const A correction = softmax::exp_shifted(m[r], new_m);
        m[r] = new_m;
        l[r] = l[r] * correction + warp_sum(prob);
        prob *= p.template keep_factor<A>(b, h, i, j);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) o[r][c] *= correction;
        for (int jj = 0; jj < kTileKeys; ++jj) {
          const A pj = __shfl_sync(kFullMask, prob, jj);
#pragma unroll
          for (int c = 0; c < kChunks; ++c) {
            const int64_t e = lane + 32 * c;
            if (e < Ev) o[r][c] += pj * vs[jj * Ev + e];
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = row0 + warp * kRowsPerWarp + r;
    if (i < p.q_len) {
      // A NaN score left m and l NaN: the output row and its saved log-sum-exp stay NaN (so
      // backward gives the row NaN gradients, as torch; -inf would mean "no key" and zero
      // them); a row that saw no key gives 0 and -inf.
      const A inv = softmax::inverse_or_zero(l[r]);
      T* out_row = out + ((b * p.q_heads + h) * p.q_len + i) * Ev;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int64_t e = lane + 32 * c;
        if (e < Ev) out_row[e] = static_cast<T>(o[r][c] * inv);
      }
      if (lane == 0) {
        lse[(b * p.q_heads + h) * p.q_len + i] = softmax::log_sum_exp(m[r], l[r]);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> sdpa_forward_cuda(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
    std::optional<double> scale, const std::optional<at::Tensor>& dropout_seed) {
  const auto shape = detail::check_sdpa_forward(query, key, value, attn_mask, dropout_p, is_causal,
                                                scale, dropout_seed);
  check_cuda_dims(shape);
  cuda::DeviceGuard guard(query.device());
  const auto q = detail::unit_last_stride(query);
  const auto k = detail::unit_last_stride(key);
  const auto v = detail::unit_last_stride(value);
  auto output = at::empty({shape.batch, shape.q_heads, shape.q_len, shape.value_dim}, q.options());
  const auto half = q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16;
  auto logsumexp = at::empty({shape.batch, shape.q_heads, shape.q_len},
                             q.options().dtype(half ? at::kFloat : q.scalar_type()));
  const int64_t row_blocks = cuda::ceil_div(shape.q_len, kRowsPerBlock);
  const int64_t blocks = shape.batch * shape.q_heads * row_blocks;
  if (blocks == 0) return {output, logsumexp};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "sdpa_forward_cuda", [&] {
        using A = acc_t<scalar_t>;
        const auto params = make_params<scalar_t>(shape, q, k, v, attn_mask);
        if (launch_forward_tensor_core(shape, params, output, logsumexp)) return;
        const size_t smem =
            sizeof(A) * (kTileKeys * (shape.head_dim + 1) + kTileKeys * shape.value_dim +
                         kRowsPerBlock * shape.head_dim);
        with_chunks(shape.value_dim, [&](auto chunks) {
          auto kernel = forward_kernel<scalar_t, decltype(chunks)::value>;
          allow_shared_memory(kernel, smem);
          cuda::launch(kernel, {grid_blocks(blocks), kWarps * 32, smem}, params,
                       output.mutable_data_ptr<scalar_t>(), logsumexp.mutable_data_ptr<A>(),
                       row_blocks);
        });
      });
  return {output, logsumexp};
}

}  // namespace
}  // namespace sdpa_cuda

FASTDL_CUDA_KERNELS(m) { m.impl("sdpa_forward", &sdpa_cuda::sdpa_forward_cuda); }

}  // namespace fastdl
