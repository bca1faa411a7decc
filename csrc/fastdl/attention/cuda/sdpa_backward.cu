// sdpa backward on CUDA cores: delta = rowsum(dO * O), the dQ kernel, the dK/dV kernel (see
// sdpa_kernels.cuh).
#include "fastdl/attention/cuda/sdpa_kernels.cuh"

namespace fastdl {
namespace sdpa_cuda {
namespace {

// delta[row] = sum_e dO[row, e] * O[row, e], one warp per row.
template <typename T>
__global__ void delta_kernel(BackwardArgs<T> g, const T* out, acc_t<T>* delta, int64_t heads,
                             int64_t q_len, int64_t Ev, int64_t rows) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = row % q_len, h = (row / q_len) % heads, b = row / (q_len * heads);
  const T* d = g.dout_row(b, h, i);
  const T* o = out + row * Ev;
  A s = 0;
  for (int64_t e = lane; e < Ev; e += 32) s += static_cast<A>(d[e]) * static_cast<A>(o[e]);
  s = warp_sum(s);
  if (lane == 0) delta[row] = s;
}

template <typename T, int kChunks>
__global__ void __launch_bounds__(kWarps * 32)
    backward_dq_kernel(Params<T> p, BackwardArgs<T> g, T* dq, T* dmask, int64_t row_blocks) {
  using A = acc_t<T>;
  FASTDL_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t E = p.head_dim, Ev = p.value_dim;
  A* ks = reinterpret_cast<A*>(smem);  // [kTileKeys][E + 1]
  A* vs = ks + kTileKeys * (E + 1);    // [kTileKeys][Ev + 1]
  A* qs = vs + kTileKeys * (Ev + 1);   // [kRowsPerBlock][E]
  A* dos = qs + kRowsPerBlock * E;     // [kRowsPerBlock][Ev]
  const BlockIndex at(blockIdx.x, p.q_heads, row_blocks);
  const int64_t b = at.b, h = at.h, kv_h = at.h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = at.block * kRowsPerBlock;
  const int64_t rows = imin(kRowsPerBlock, p.q_len - row0);
  stage_rows<T, A>(
      qs, kRowsPerBlock, E, E, rows, [&](int64_t r) { return p.q_row(b, h, row0 + r); },
      threadIdx.x, blockDim.x);
  stage_rows<T, A>(
      dos, kRowsPerBlock, Ev, Ev, rows, [&](int64_t r) { return g.dout_row(b, h, row0 + r); },
      threadIdx.x, blockDim.x);
  A acc[kRowsPerWarp][kChunks];  // in registers: the loops over r and c are unrolled
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) acc[r][c] = 0;
  }
  const int64_t keys = p.visible_keys(row0 + rows - 1);
  for (int64_t k0 = 0; k0 < keys; k0 += kTileKeys) {
    __syncthreads();
    const int64_t tile = imin(kTileKeys, p.kv_len - k0);
    stage_rows<T, A>(
        ks, kTileKeys, E, E + 1, tile, [&](int64_t r) { return p.k_row(b, kv_h, k0 + r); },
        threadIdx.x, blockDim.x);
    stage_rows<T, A>(
        vs, kTileKeys, Ev, Ev + 1, tile, [&](int64_t r) { return p.v_row(b, kv_h, k0 + r); },
        threadIdx.x, blockDim.x);
    __syncthreads();
    const int64_t j = k0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int local = warp * kRowsPerWarp + r;
      const int64_t i = row0 + local;
      if (i < p.q_len) {  // uniform across the warp
        const int64_t row = (b * p.q_heads + h) * p.q_len + i;
        const A row_lse = g.lse[row];
        const A s = p.score(dot(qs + local * E, ks + lane * (E + 1), E), b, h, i, j);
        const A prob = row_lse == softmax::neg_inf<A>() ? A(0) : softmax::exp_shifted(s, row_lse);
        const A dp =
            dot(dos + local * Ev, vs + lane * (Ev + 1), Ev) * p.template keep_factor<A>(b, h, i, j);
        A ds = prob * (dp - g.delta[row]);
        if (dmask && j < p.kv_len) dmask[row * p.kv_len + j] = static_cast<T>(ds);
        ds *= static_cast<A>(p.scale);
        for (int jj = 0; jj < kTileKeys; ++jj) {
          const A dsj = __shfl_sync(kFullMask, ds, jj);
#pragma unroll
          for (int c = 0; c < kChunks; ++c) {
            const int64_t e = lane + 32 * c;
            if (e < E) acc[r][c] += dsj * ks[jj * (E + 1) + e];
          }
        }
      }
    }
  }
  if (!dq) return;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = row0 + warp * kRowsPerWarp + r;
    if (i < p.q_len) {
      T* dq_row = dq + ((b * p.q_heads + h) * p.q_len + i) * E;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int64_t e = lane + 32 * c;
        if (e < E) dq_row[e] = static_cast<T>(acc[r][c]);
      }
    }
  }
}

// dK and dV of a tile of kKeys keys of one (batch, key/value head): a block of kWarps warps
// walks the query rows of the head group kDkdvRows at a time. Per query tile the threads
// score its (row, key) pairs (P after dropout and dS into shared memory), then each thread
// adds a kDkdvRows-term sum to the dK / dV entries it owns (accumulated in shared memory; the
// same thread owns an entry in every tile). No atomics: a block owns its keys.
// Shared memory (A): K, V, dK, dV tiles [kKeys][E + 1 | Ev + 1] | Q, dO tiles
// [kDkdvRows][E + 1 | Ev + 1] | P, dS [kDkdvRows][kKeys + 1] | lse, delta [kDkdvRows].
constexpr int kDkdvRows = 16;

template <int kKeys>
size_t dkdv_shared_elements(int64_t E, int64_t Ev) {
  return static_cast<size_t>(kKeys * 2 * ((E + 1) + (Ev + 1)) + kDkdvRows * ((E + 1) + (Ev + 1)) +
                             2 * kDkdvRows * (kKeys + 1) + 2 * kDkdvRows);
}

template <typename T, int kKeys>
__global__ void __launch_bounds__(kWarps * 32)
    backward_dkdv_kernel(Params<T> p, BackwardArgs<T> g, T* dk, T* dv, int64_t kv_heads,
                         int64_t key_blocks) {
  using A = acc_t<T>;
  FASTDL_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t E = p.head_dim, Ev = p.value_dim, pe = E + 1, pv = Ev + 1;
  constexpr int kPitch = kKeys + 1;
  A* ks = reinterpret_cast<A*>(smem);
  A* vs = ks + kKeys * pe;
  A* dks = vs + kKeys * pv;
  A* dvs = dks + kKeys * pe;
  A* qs = dvs + kKeys * pv;
  A* dos = qs + kDkdvRows * pe;
  A* probs = dos + kDkdvRows * pv;  // P times dropout's keep factor
  A* dss = probs + kDkdvRows * kPitch;
  A* lse_t = dss + kDkdvRows * kPitch;
  A* delta_t = lse_t + kDkdvRows;
  const BlockIndex at(blockIdx.x, kv_heads, key_blocks);
  const int64_t b = at.b, kv_h = at.h;
  const int64_t k0 = at.block * kKeys;
  const int64_t tile = imin(kKeys, p.kv_len - k0);
  const int t = threadIdx.x, nt = blockDim.x;
  stage_rows<T, A>(
      ks, kKeys, E, pe, tile, [&](int64_t r) { return p.k_row(b, kv_h, k0 + r); }, t, nt);
  stage_rows<T, A>(
      vs, kKeys, Ev, pv, tile, [&](int64_t r) { return p.v_row(b, kv_h, k0 + r); }, t, nt);
  for (int64_t idx = t; idx < kKeys * pe; idx += nt) dks[idx] = 0;
  for (int64_t idx = t; idx < kKeys * pv; idx += nt) dvs[idx] = 0;
  const A scale = static_cast<A>(p.scale);
  // Under is_causal, query rows before the first key see none of this block's keys.
  const int64_t first_row = p.causal ? imin(k0, p.q_len) : 0;
  for (int64_t h = kv_h * p.group; h < (kv_h + 1) * p.group; ++h) {
    for (int64_t i0 = first_row; i0 < p.q_len; i0 += kDkdvRows) {
      const int64_t rows = imin(kDkdvRows, p.q_len - i0);
      __syncthreads();  // the previous tile's P and dS are consumed (the first time: K, V staged)
      stage_rows<T, A>(
          qs, kDkdvRows, E, pe, rows, [&](int64_t r) { return p.q_row(b, h, i0 + r); }, t, nt);
      stage_rows<T, A>(
          dos, kDkdvRows, Ev, pv, rows, [&](int64_t r) { return g.dout_row(b, h, i0 + r); }, t, nt);
      for (int r = t; r < kDkdvRows; r += nt) {
        const int64_t row = (b * p.q_heads + h) * p.q_len + i0 + r;
        lse_t[r] = r < rows ? g.lse[row] : softmax::neg_inf<A>();
        delta_t[r] = r < rows ? g.delta[row] : A(0);
      }
      __syncthreads();
      for (int idx = t; idx < kDkdvRows * kKeys; idx += nt) {
        const int r = idx / kKeys, c = idx % kKeys;
        const int64_t i = i0 + r, j = k0 + c;
        A dropped = 0, ds = 0;
        if (r < rows && c < tile && lse_t[r] != softmax::neg_inf<A>()) {
          const A s = p.score(dot(qs + r * pe, ks + c * pe, E), b, h, i, j);
          const A prob = softmax::exp_shifted(s, lse_t[r]);
          if (prob != A(0)) {
            const A keep = p.template keep_factor<A>(b, h, i, j);
            const A dp = dot(dos + r * pv, vs + c * pv, Ev) * keep;
            ds = prob * (dp - delta_t[r]) * scale;
            dropped = prob * keep;
          }
        }
        probs[r * kPitch + c] = dropped;
        dss[r * kPitch + c] = ds;
      }
      __syncthreads();
      // dV[c] += sum_r P[r][c] dO[r]; dK[c] += sum_r dS[r][c] Q[r].
      for (int64_t idx = t; idx < kKeys * Ev; idx += nt) {
        const int64_t c = idx / Ev, e = idx % Ev;
        A a = 0;
#pragma unroll
        for (int r = 0; r < kDkdvRows; ++r) a += probs[r * kPitch + c] * dos[r * pv + e];
        dvs[c * pv + e] += a;
      }
      for (int64_t idx = t; idx < kKeys * E; idx += nt) {
        const int64_t c = idx / E, e = idx % E;
        A a = 0;
#pragma unroll
        for (int r = 0; r < kDkdvRows; ++r) a += dss[r * kPitch + c] * qs[r * pe + e];
        dks[c * pe + e] += a;
      }
    }
  }
  __syncthreads();
  for (int64_t idx = t; idx < tile * E; idx += nt) {
    const int64_t r = idx / E, e = idx % E;
    if (dk)
      dk[((b * kv_heads + kv_h) * p.kv_len + k0 + r) * E + e] = static_cast<T>(dks[r * pe + e]);
  }
  for (int64_t idx = t; idx < tile * Ev; idx += nt) {
    const int64_t r = idx / Ev, e = idx % Ev;
    if (dv)
      dv[((b * kv_heads + kv_h) * p.kv_len + k0 + r) * Ev + e] = static_cast<T>(dvs[r * pv + e]);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdpa_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
    const at::Tensor& logsumexp, double dropout_p, bool is_causal, std::optional<double> scale,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 4> output_mask) {
  const auto shape =
      detail::check_sdpa_backward(grad_output, query, key, value, attn_mask, output, logsumexp,
                                  dropout_p, is_causal, scale, dropout_seed);
  check_cuda_dims(shape);
  cuda::DeviceGuard guard(query.device());
  const auto q = detail::unit_last_stride(query);
  const auto k = detail::unit_last_stride(key);
  const auto v = detail::unit_last_stride(value);
  const auto dout = detail::unit_last_stride(grad_output);
  const auto out = output.contiguous();
  const auto lse = logsumexp.contiguous();
  auto [grad_query, grad_key, grad_value, grad_mask] =
      detail::sdpa_gradient_buffers(shape, q, k, v, output_mask);
  const int64_t rows = shape.batch * shape.q_heads * shape.q_len;
  // No output element (Ev = 0 included): zero gradients, as the CPU kernel.
  if (rows == 0 || shape.kv_len == 0 || shape.value_dim == 0) {
    return {grad_query, grad_key, grad_value, grad_mask};
  }
  auto delta = at::empty({rows}, lse.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "sdpa_backward_cuda", [&] {
        using A = acc_t<scalar_t>;
        const auto params = make_params<scalar_t>(shape, q, k, v, attn_mask);
        BackwardArgs<scalar_t> args{};
        args.dout = dout.const_data_ptr<scalar_t>();
        for (int d = 0; d < 3; ++d) args.dout_stride[d] = dout.stride(d);
        args.lse = lse.const_data_ptr<A>();
        args.delta = delta.const_data_ptr<A>();
        {
          constexpr int threads = 256;
          cuda::launch(delta_kernel<scalar_t>,
                       {grid_blocks(cuda::ceil_div(rows, threads / 32)), threads, 0}, args,
                       out.const_data_ptr<scalar_t>(), delta.mutable_data_ptr<A>(), shape.q_heads,
                       shape.q_len, shape.value_dim, rows);
        }
        if (output_mask[0] || output_mask[3]) {
          const int64_t row_blocks = cuda::ceil_div(shape.q_len, kRowsPerBlock);
          const size_t smem =
              sizeof(A) * (kTileKeys * (shape.head_dim + 1) + kTileKeys * (shape.value_dim + 1) +
                           kRowsPerBlock * (shape.head_dim + shape.value_dim));
          with_chunks(shape.head_dim, [&](auto chunks) {
            auto kernel = backward_dq_kernel<scalar_t, decltype(chunks)::value>;
            allow_shared_memory(kernel, smem);
            cuda::launch(kernel,
                         {grid_blocks(shape.batch * shape.q_heads * row_blocks), kWarps * 32, smem},
                         params, args, mutable_data_or_null<scalar_t>(grad_query),
                         mutable_data_or_null<scalar_t>(grad_mask), row_blocks);
          });
        }
        if (output_mask[1] || output_mask[2]) {
          const auto optin = cuda::device_properties().sharedMemPerBlockOptin;
          const auto launch = [&](auto keys) {
            constexpr int kKeys = decltype(keys)::value;
            auto kernel = backward_dkdv_kernel<scalar_t, kKeys>;
            const size_t smem =
                sizeof(A) * dkdv_shared_elements<kKeys>(shape.head_dim, shape.value_dim);
            allow_shared_memory(kernel, smem);
            const int64_t key_blocks = cuda::ceil_div(shape.kv_len, kKeys);
            cuda::launch(
                kernel, {grid_blocks(shape.batch * shape.kv_heads * key_blocks), kWarps * 32, smem},
                params, args, mutable_data_or_null<scalar_t>(grad_key),
                mutable_data_or_null<scalar_t>(grad_value), shape.kv_heads, key_blocks);
          };
          // 32 keys a block when they fit in shared memory, else 16 (float64 at the widest dims).
          if (sizeof(A) * dkdv_shared_elements<32>(shape.head_dim, shape.value_dim) <= optin) {
            launch(std::integral_constant<int, 32>{});
          } else {
            launch(std::integral_constant<int, 16>{});
          }
        }
      });
  return {grad_query, grad_key, grad_value, grad_mask};
}

}  // namespace
}  // namespace sdpa_cuda

FASTDL_CUDA_KERNELS(m) { m.impl("sdpa_backward", &sdpa_cuda::sdpa_backward_cuda); }

}  // namespace fastdl
