// induced_attention CUDA kernels. The CPU kernels' algorithm on the GPU (formulas shared in
// induced_attention_math.h); half types are read as such and accumulated in float.
//  forward:  a block of kWarps warps takes kWarps query rows of one (batch, head) and one key
//            split; key (and value) tiles of 32 rows are staged in shared memory and shared by
//            the warps. Each warp runs an online softmax for its row: lane j scores key j of
//            the tile, warp shuffles give the tile's max and sum, and the lanes then own value
//            features (e = lane, lane + 32, ...) of the running output. With several key
//            splits (few queries over many keys: flash-decoding) each split writes a partial
//            output and log-sum-exp in float, and a combine kernel merges them.
//  backward: delta = rowsum(dO * O); dQ by the forward's row kernel over all keys (recomputing
//            p from lse); dK and dV by the transposed kernel: a warp per key row, query tiles
//            staged in shared memory. No atomics: every output element has one writer.
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/common/tensors.h"
#include "fastdl/sets/induced_attention.h"
#include "fastdl/sets/induced_attention_math.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace fastdl {
namespace {

using cuda::acc_t;
using cuda::kWarpSize;

constexpr int kWarps = 4;         // rows (forward, dQ) or keys (dK/dV) per block
constexpr int kTile = kWarpSize;  // keys (or queries) per shared-memory tile
constexpr int64_t kMinKeysPerSplit = 256;

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = kWarpSize / 2; o > 0; o /= 2)
    v = softmax::max_nan(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = kWarpSize / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

// Copies rows [r0, r0 + kTile) of a (rows x d) matrix into a shared tile of stride d + 1
// (the padding keeps lanes reading different rows on different banks); rows past `rows` and
// padded rows (skip[r] true, when skip is given) are 0, so whatever padding holds (even NaN)
// cannot reach a result through a zero probability.
template <typename T, typename A>
__device__ __forceinline__ void load_tile(const induced::Rows<const T>& src, int64_t bh, int64_t r0,
                                          int64_t rows, int64_t d, A* tile,
                                          const bool* __restrict__ skip = nullptr) {
  const int64_t stride = d + 1;
  const auto slice = src.slice(bh);
  const int dd = static_cast<int>(d);  // head dims fit shared memory, so int arithmetic is safe
  for (int idx = threadIdx.x; idx < kTile * dd; idx += blockDim.x) {
    const int r = idx / dd, e = idx % dd;
    const bool keep = r0 + r < rows && !(skip && skip[r0 + r]);
    tile[r * stride + e] = keep ? static_cast<A>(slice.row(r0 + r)[e]) : A(0);
  }
}

// sum_e x[e] * tile_row[e]
template <typename A>
__device__ __forceinline__ A dot_shared(const A* x, const A* row, int64_t d) {
  A s = 0;
  for (int64_t e = 0; e < d; ++e) s += x[e] * row[e];
  return s;
}

// The block's dynamic shared memory (sized at launch).
template <typename A>
__device__ __forceinline__ A* shared_buffer() {
  FASTDL_DYNAMIC_SHARED(unsigned char, smem_raw);
  return reinterpret_cast<A*>(smem_raw);
}

// Blocks of kWarps warps; each block serves one (batch * head) slice bh, each warp one row
// (query or key) of it: blocks_per_slice blocks per slice.
struct WarpRow {
  int warp, lane;
  int64_t bh, row;
};
__device__ __forceinline__ WarpRow warp_row(int64_t blocks_per_slice) {
  const int warp = threadIdx.x / kWarpSize;
  return {warp, static_cast<int>(threadIdx.x % kWarpSize), blockIdx.x / blocks_per_slice,
          (blockIdx.x % blocks_per_slice) * kWarps + warp};
}

struct Dims {
  int64_t heads, L, S, E, Ev;
  int64_t query_blocks;  // ceil(L / kWarps) or ceil(S / kWarps) for the key-row kernel
  int64_t keys_per_split;
};

// Forward (and, with Backward = true, dQ): grid.x = batch*heads*query_blocks, grid.y = key split.
// Shared memory (A): q rows kWarps*E | (Backward: dO rows kWarps*Ev) | K tile kTile*(E+1) |
// V tile kTile*(Ev+1) | acc kWarps*max(E, Ev) | weights kWarps*kTile.
// A warp's 32 weights of a tile (p, or dS in backward: lane j's for key j) go through shared
// memory to every lane: the loops over output features (e = lane, lane + 32, ... < Ev) run a
// different number of times on different lanes, so no warp collective may sit inside them.
template <typename T, bool Backward>
__global__ void rows_kernel(induced::Rows<const T> q, induced::Rows<const T> k,
                            induced::Rows<const T> v, const bool* __restrict__ mask, acc_t<T> scale,
                            Dims dims,
                            // forward outputs
                            induced::Rows<T> out, acc_t<T>* __restrict__ lse,
                            acc_t<T>* __restrict__ part_out, acc_t<T>* __restrict__ part_lse,
                            // backward inputs / output
                            induced::Rows<const T> dout, const acc_t<T>* __restrict__ lse_in,
                            const acc_t<T>* __restrict__ delta, induced::Rows<T> dq) {
  using A = acc_t<T>;
  A* smem = shared_buffer<A>();
  const int64_t E = dims.E, Ev = dims.Ev, L = dims.L, S = dims.S;
  const auto [warp, lane, bh, row] = warp_row(dims.query_blocks);
  const bool active = row < L;
  const int64_t split = blockIdx.y;
  const int64_t s0 = split * dims.keys_per_split, s1 = min(S, s0 + dims.keys_per_split);
  const int64_t acc_width = Backward ? E : Ev;

  A* q_rows = smem;
  A* do_rows = q_rows + kWarps * E;
  A* k_tile = do_rows + (Backward ? kWarps * Ev : 0);
  A* v_tile = k_tile + kTile * (E + 1);
  A* acc = v_tile + kTile * (Ev + 1);
  A* weights = acc + kWarps * acc_width;
  A* my_q = q_rows + warp * E;
  A* my_do = do_rows + warp * Ev;
  A* my_acc = acc + warp * acc_width;
  A* my_w = weights + warp * kTile;

  const int64_t grow = bh * L + row;  // global row index
  for (int64_t e = lane; e < E; e += kWarpSize)
    my_q[e] = active ? static_cast<A>(q.row(bh, row)[e]) : A(0);
  if (Backward) {
    for (int64_t e = lane; e < Ev; e += kWarpSize)
      my_do[e] = active ? static_cast<A>(dout.row(bh, row)[e]) : A(0);
  }
  for (int64_t e = lane; e < acc_width; e += kWarpSize) my_acc[e] = 0;
  const bool* key_mask = mask ? mask + (bh / dims.heads) * S : nullptr;
  const A row_lse = Backward && active ? lse_in[grow] : A(0);
  const A row_delta = Backward && active ? delta[grow] : A(0);
  // A fully padded row has no gradient (its lse is -inf): skip the work, keep the syncs.
  const bool work = active && (!Backward || row_lse != softmax::neg_inf<A>());

  A m = softmax::neg_inf<A>(), l = 0;
  for (int64_t t0 = s0; t0 < s1; t0 += kTile) {
    __syncthreads();  // the previous tile is no longer read (and q/dO rows are written)
    load_tile(k, bh, t0, s1, E, k_tile, key_mask);
    load_tile(v, bh, t0, s1, Ev, v_tile, key_mask);
    __syncthreads();
    if (!work) continue;
    const int64_t key = t0 + lane;
    const bool valid = key < s1 && !(key_mask && key_mask[key]);
    const A score =
        valid ? scale * dot_shared(my_q, k_tile + lane * (E + 1), E) : softmax::neg_inf<A>();
    if (!Backward) {
      const A tile_max = warp_max(score);
      if (tile_max == softmax::neg_inf<A>()) continue;  // every key of the tile is padded
      const A m_new = softmax::max_nan(m, tile_max);
      const A alpha = softmax::exp_shifted(m, m_new);
      const A p = valid ? softmax::exp_of(score - m_new) : A(0);
      l = l * alpha + warp_sum(p);
      m = m_new;
      my_w[lane] = p;
      __syncwarp();
      for (int64_t e = lane; e < Ev; e += kWarpSize) {
        A a = my_acc[e] * alpha;
        for (int j = 0; j < kTile; ++j) a += my_w[j] * v_tile[j * (Ev + 1) + e];
        my_acc[e] = a;
      }
    } else {
      const A p = valid ? softmax::exp_shifted(score, row_lse) : A(0);
      const A dp = valid ? dot_shared(my_do, v_tile + lane * (Ev + 1), Ev) : A(0);
      my_w[lane] = p * (dp - row_delta) * scale;  // dS
      __syncwarp();
      for (int64_t e = lane; e < E; e += kWarpSize) {
        A a = my_acc[e];
        for (int j = 0; j < kTile; ++j) a += my_w[j] * k_tile[j * (E + 1) + e];
        my_acc[e] = a;
      }
    }
  }
  if (!active) return;
  if (Backward) {
    for (int64_t e = lane; e < E; e += kWarpSize) dq.row(bh, row)[e] = static_cast<T>(my_acc[e]);
    return;
  }
  const A inv = softmax::inverse_or_zero(l);
  const A row_lse_out = softmax::log_sum_exp(m, l);
  if (part_out == nullptr) {
    for (int64_t e = lane; e < Ev; e += kWarpSize)
      out.row(bh, row)[e] = static_cast<T>(my_acc[e] * inv);
    if (lane == 0) lse[grow] = row_lse_out;
  } else {
    const int64_t rows = gridDim.x / dims.query_blocks * L;  // batch*heads*L
    for (int64_t e = lane; e < Ev; e += kWarpSize)
      part_out[(split * rows + grow) * Ev + e] = my_acc[e] * inv;
    if (lane == 0) part_lse[split * rows + grow] = row_lse_out;
  }
}

// Merges the key splits' partial results: one warp per row.
template <typename T>
__global__ void combine_kernel(const acc_t<T>* __restrict__ part_out,
                               const acc_t<T>* __restrict__ part_lse, induced::Rows<T> out,
                               acc_t<T>* __restrict__ lse, int64_t rows, int64_t splits, int64_t L,
                               int64_t Ev) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row =
      static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  A mx = softmax::neg_inf<A>();
  for (int64_t j = lane; j < splits; j += kWarpSize)
    mx = softmax::max_nan(mx, part_lse[j * rows + row]);
  mx = warp_max(mx);
  A total = 0;
  for (int64_t j = lane; j < splits; j += kWarpSize)
    total += softmax::exp_shifted(part_lse[j * rows + row], mx);
  total = warp_sum(total);
  const A row_lse = softmax::log_sum_exp(mx, total);
  if (lane == 0) lse[row] = row_lse;
  for (int64_t e = lane; e < Ev; e += kWarpSize) {
    A a = 0;
    for (int64_t j = 0; j < splits; ++j) {
      const A w = softmax::exp_shifted(part_lse[j * rows + row], row_lse);
      if (w != A(0)) a += w * part_out[(j * rows + row) * Ev + e];
    }
    out.row(row / L, row % L)[e] = static_cast<T>(a);
  }
}

// delta[row] = dO[row] . O[row]: one warp per row.
template <typename T>
__global__ void delta_kernel(induced::Rows<const T> dout, induced::Rows<const T> out,
                             acc_t<T>* __restrict__ delta, int64_t rows, int64_t L, int64_t Ev) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row =
      static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  A s = 0;
  const T* dout_row = dout.row(row / L, row % L);
  const T* out_row = out.row(row / L, row % L);
  for (int64_t e = lane; e < Ev; e += kWarpSize)
    s += static_cast<A>(dout_row[e]) * static_cast<A>(out_row[e]);
  s = warp_sum(s);
  if (lane == 0) delta[row] = s;
}

// dK and dV: a warp per key row; grid.x = batch*heads*ceil(S / kWarps). Query tiles (q, dO,
// lse, delta) are staged in shared memory. Shared memory (A): k rows kWarps*E | v rows
// kWarps*Ev | q tile kTile*(E+1) | dO tile kTile*(Ev+1) | lse, delta 2*kTile |
// dk acc kWarps*E | dv acc kWarps*Ev | weights 2*kWarps*kTile (p and dS, as rows_kernel's).
template <typename T>
__global__ void key_rows_kernel(induced::Rows<const T> q, induced::Rows<const T> k,
                                induced::Rows<const T> v, const bool* __restrict__ mask,
                                acc_t<T> scale, Dims dims, induced::Rows<const T> dout,
                                const acc_t<T>* __restrict__ lse,
                                const acc_t<T>* __restrict__ delta, induced::Rows<T> dk,
                                induced::Rows<T> dv) {
  using A = acc_t<T>;
  A* smem = shared_buffer<A>();
  const int64_t E = dims.E, Ev = dims.Ev, L = dims.L, S = dims.S;
  const auto [warp, lane, bh, key] = warp_row(dims.query_blocks);
  const bool active = key < S;
  const bool padded = active && mask && mask[(bh / dims.heads) * S + key];
  const bool work = active && !padded;  // a padded key gets zero gradients

  A* k_rows = smem;
  A* v_rows = k_rows + kWarps * E;
  A* q_tile = v_rows + kWarps * Ev;
  A* do_tile = q_tile + kTile * (E + 1);
  A* lse_tile = do_tile + kTile * (Ev + 1);
  A* delta_tile = lse_tile + kTile;
  A* dk_acc = delta_tile + kTile;
  A* dv_acc = dk_acc + kWarps * E;
  A* my_p = dv_acc + kWarps * Ev + warp * 2 * kTile;
  A* my_ds = my_p + kTile;
  A* my_k = k_rows + warp * E;
  A* my_v = v_rows + warp * Ev;
  A* my_dk = dk_acc + warp * E;
  A* my_dv = dv_acc + warp * Ev;

  for (int64_t e = lane; e < E; e += kWarpSize) {
    my_k[e] = work ? static_cast<A>(k.row(bh, key)[e]) : A(0);
    my_dk[e] = 0;
  }
  for (int64_t e = lane; e < Ev; e += kWarpSize) {
    my_v[e] = work ? static_cast<A>(v.row(bh, key)[e]) : A(0);
    my_dv[e] = 0;
  }
  for (int64_t t0 = 0; t0 < L; t0 += kTile) {
    __syncthreads();
    load_tile(q, bh, t0, L, E, q_tile);
    load_tile(dout, bh, t0, L, Ev, do_tile);
    for (int64_t i = threadIdx.x; i < kTile; i += blockDim.x) {
      lse_tile[i] = t0 + i < L ? lse[bh * L + t0 + i] : softmax::neg_inf<A>();
      delta_tile[i] = t0 + i < L ? delta[bh * L + t0 + i] : A(0);
    }
    __syncthreads();
    if (!work) continue;
    const A score = scale * dot_shared(my_k, q_tile + lane * (E + 1), E);
    const A p = softmax::exp_shifted(score, lse_tile[lane]);  // 0 past L (lse -inf)
    const A dp = dot_shared(my_v, do_tile + lane * (Ev + 1), Ev);
    my_p[lane] = p;
    my_ds[lane] = p * (dp - delta_tile[lane]) * scale;
    __syncwarp();
    if (dv.data) {
      for (int64_t e = lane; e < Ev; e += kWarpSize) {
        A a = my_dv[e];
        for (int i = 0; i < kTile; ++i) a += my_p[i] * do_tile[i * (Ev + 1) + e];
        my_dv[e] = a;
      }
    }
    if (dk.data) {
      for (int64_t e = lane; e < E; e += kWarpSize) {
        A a = my_dk[e];
        for (int i = 0; i < kTile; ++i) a += my_ds[i] * q_tile[i * (E + 1) + e];
        my_dk[e] = a;
      }
    }
  }
  if (!active) return;
  if (dk.data)
    for (int64_t e = lane; e < E; e += kWarpSize) dk.row(bh, key)[e] = static_cast<T>(my_dk[e]);
  if (dv.data)
    for (int64_t e = lane; e < Ev; e += kWarpSize) dv.row(bh, key)[e] = static_cast<T>(my_dv[e]);
}

// Dynamic shared memory of `bytes` for `kernel` (a clear error when the device has less).
template <typename Kernel>
void reserve_shared_memory(Kernel kernel, size_t bytes, const detail::InducedShape& s) {
  const std::string what = "head dims E = " + std::to_string(s.head_dim) +
                           ", Ev = " + std::to_string(s.value_dim) + " (use smaller heads)";
  cuda::reserve_dynamic_shared(kernel, bytes, "fastdl.induced_attention", what);
}

unsigned grid_for(int64_t blocks) {
  TORCH_CHECK(blocks <= cuda::max_grid_x(),
              "fastdl.induced_attention: too many rows for one launch (", blocks, " blocks)");
  return static_cast<unsigned>(blocks);
}

using induced::rows_of;

std::tuple<at::Tensor, at::Tensor> induced_attention_forward_cuda(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, std::optional<double> scale_arg) {
  cuda::DeviceGuard guard(query.device());
  auto f =
      detail::prepare_induced_attention_forward(query, key, value, key_padding_mask, scale_arg);
  const auto& s = f.shape;
  const double scale = f.scale;
  const auto &q = f.query, &k = f.key, &v = f.value, &mask = f.mask;
  auto &out = f.output, &lse = f.lse;
  const auto acc_opts = lse.options();
  const int64_t BH = s.batch * s.heads;
  if (BH * s.queries == 0) return {out, lse};
  const int64_t sms = cuda::device_properties().multiProcessorCount;
  const auto part = induced::partition(BH, s.queries, s.keys, kWarps, 8 * sms, kMinKeysPerSplit);
  const int64_t splits = std::min<int64_t>(part.key_splits, cuda::max_grid_yz());
  const int64_t keys_per_split = s.keys > 0 ? (s.keys + splits - 1) / splits : 0;
  const int64_t query_blocks = cuda::ceil_div(s.queries, kWarps);
  Dims dims{s.heads, s.queries, s.keys, s.head_dim, s.value_dim, query_blocks, keys_per_split};
  const int64_t rows = BH * s.queries;
  at::Tensor part_out, part_lse;
  if (splits > 1) {
    part_out = at::empty({splits, rows, s.value_dim}, acc_opts);
    part_lse = at::empty({splits, rows}, acc_opts);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, query.scalar_type(), "induced_attention_forward_cuda", [&] {
        using A = acc_t<scalar_t>;
        const size_t bytes =
            sizeof(A) * (kWarps * s.head_dim + kTile * (s.head_dim + 1) +
                         kTile * (s.value_dim + 1) + kWarps * s.value_dim + kWarps * kTile);
        auto kernel = rows_kernel<scalar_t, false>;
        reserve_shared_memory(kernel, bytes, s);
        const dim3 grid(grid_for(BH * query_blocks), static_cast<unsigned>(splits));
        cuda::launch(kernel, {grid, kWarps * kWarpSize, bytes}, rows_of<const scalar_t>(q),
                     rows_of<const scalar_t>(k), rows_of<const scalar_t>(v),
                     data_or_null<bool>(mask), static_cast<A>(scale), dims, rows_of<scalar_t>(out),
                     lse.mutable_data_ptr<A>(), mutable_data_or_null<A>(part_out),
                     mutable_data_or_null<A>(part_lse),
                     induced::Rows<const scalar_t>{nullptr, 0, 0, 0, 1}, nullptr, nullptr,
                     induced::Rows<scalar_t>{nullptr, 0, 0, 0, 1});
        if (splits > 1) {
          cuda::launch(
              combine_kernel<scalar_t>, {grid_for(cuda::ceil_div(rows, 8)), 8 * kWarpSize, 0},
              part_out.const_data_ptr<A>(), part_lse.const_data_ptr<A>(), rows_of<scalar_t>(out),
              lse.mutable_data_ptr<A>(), rows, splits, s.queries, s.value_dim);
        }
      });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> induced_attention_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& key_padding_mask,
    const at::Tensor& output, const at::Tensor& lse, double scale,
    std::array<bool, 3> output_mask) {
  cuda::DeviceGuard guard(query.device());
  auto b = detail::prepare_induced_attention_backward(
      grad_output, query, key, value, key_padding_mask, output, lse, scale, output_mask);
  const auto& s = b.shape;
  const auto &q = b.query, &k = b.key, &v = b.value, &mask = b.mask, &dout = b.grad_output,
             &out = b.output;
  const auto& lse_c = b.lse;
  // Every element of the gradients is written by the kernels (zeros where a row or key gets
  // none); the zero fill covers empty problems.
  auto &dq = b.grad_query, &dk = b.grad_key, &dv = b.grad_value;
  const int64_t BH = s.batch * s.heads, rows = BH * s.queries;
  if (rows * s.keys == 0) return {dq, dk, dv};
  auto delta = at::empty({rows}, lse_c.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, query.scalar_type(), "induced_attention_backward_cuda", [&] {
        using A = acc_t<scalar_t>;
        cuda::launch(delta_kernel<scalar_t>, {grid_for(cuda::ceil_div(rows, 8)), 8 * kWarpSize, 0},
                     rows_of<const scalar_t>(dout), rows_of<const scalar_t>(out),
                     delta.mutable_data_ptr<A>(), rows, s.queries, s.value_dim);
        if (dq.defined()) {
          const int64_t blocks = cuda::ceil_div(s.queries, kWarps);
          Dims dims{s.heads, s.queries, s.keys, s.head_dim, s.value_dim, blocks, s.keys};
          const size_t bytes =
              sizeof(A) * (kWarps * s.head_dim + kWarps * s.value_dim + kTile * (s.head_dim + 1) +
                           kTile * (s.value_dim + 1) + kWarps * s.head_dim + kWarps * kTile);
          auto kernel = rows_kernel<scalar_t, true>;
          reserve_shared_memory(kernel, bytes, s);
          cuda::launch(kernel, {grid_for(BH * blocks), kWarps * kWarpSize, bytes},
                       rows_of<const scalar_t>(q), rows_of<const scalar_t>(k),
                       rows_of<const scalar_t>(v), data_or_null<bool>(mask), static_cast<A>(scale),
                       dims, induced::Rows<scalar_t>{nullptr, 0, 0, 0, 1}, nullptr, nullptr,
                       nullptr, rows_of<const scalar_t>(dout), lse_c.const_data_ptr<A>(),
                       delta.const_data_ptr<A>(), rows_of<scalar_t>(dq));
        }
        if (dk.defined() || dv.defined()) {
          const int64_t blocks = cuda::ceil_div(s.keys, kWarps);
          Dims dims{s.heads, s.queries, s.keys, s.head_dim, s.value_dim, blocks, s.keys};
          const size_t bytes =
              sizeof(A) * (2 * kWarps * (s.head_dim + s.value_dim) + kTile * (s.head_dim + 1) +
                           kTile * (s.value_dim + 1) + 2 * kTile + 2 * kWarps * kTile);
          auto kernel = key_rows_kernel<scalar_t>;
          reserve_shared_memory(kernel, bytes, s);
          cuda::launch(kernel, {grid_for(BH * blocks), kWarps * kWarpSize, bytes},
                       rows_of<const scalar_t>(q), rows_of<const scalar_t>(k),
                       rows_of<const scalar_t>(v), data_or_null<bool>(mask), static_cast<A>(scale),
                       dims, rows_of<const scalar_t>(dout), lse_c.const_data_ptr<A>(),
                       delta.const_data_ptr<A>(), rows_of<scalar_t>(dk), rows_of<scalar_t>(dv));
        }
      });
  return {dq, dk, dv};
}

}  // namespace

FASTDL_CUDA_KERNELS(m) {
  m.impl("induced_attention_forward", &induced_attention_forward_cuda);
  m.impl("induced_attention_backward", &induced_attention_backward_cuda);
}

}  // namespace fastdl
