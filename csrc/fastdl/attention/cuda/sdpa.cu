// sdpa CUDA kernels: flash attention on CUDA cores, every dtype, accumulating in float32
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
#include "fastdl/attention/sdpa.h"
#include "fastdl/attention/sdpa_weights.h"
#include "fastdl/attention/sdpa_math.h"
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/common/tensors.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

namespace fastdl {
namespace {

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
    if (j >= kv_len || (causal && j > i)) return detail::sdpa_neg_inf<A>();
    const int64_t m =
        b * mask_stride[0] + h * mask_stride[1] + i * mask_stride[2] + j * mask_stride[3];
    A s = dot * static_cast<A>(scale);
    if (mask_float) s += static_cast<A>(mask_float[m]);
    if (mask_bool && !mask_bool[m]) s = detail::sdpa_neg_inf<A>();
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
  for (int offset = 16; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(kFullMask, v, offset));
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
    m[r] = detail::sdpa_neg_inf<A>();
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
        const A new_m = max(m[r], warp_max(s));
        A prob = detail::sdpa_exp_shifted(s, new_m);
        const A correction = detail::sdpa_exp_shifted(m[r], new_m);
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
      const A inv = l[r] > A(0) ? A(1) / l[r] : A(0);
      T* out_row = out + ((b * p.q_heads + h) * p.q_len + i) * Ev;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int64_t e = lane + 32 * c;
        if (e < Ev) out_row[e] = static_cast<T>(o[r][c] * inv);
      }
      if (lane == 0) {
        lse[(b * p.q_heads + h) * p.q_len + i] =
            l[r] > A(0) ? m[r] + log(l[r]) : detail::sdpa_neg_inf<A>();
      }
    }
  }
}

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
        const A prob =
            row_lse == detail::sdpa_neg_inf<A>() ? A(0) : detail::sdpa_exp_shifted(s, row_lse);
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
        lse_t[r] = r < rows ? g.lse[row] : detail::sdpa_neg_inf<A>();
        delta_t[r] = r < rows ? g.delta[row] : A(0);
      }
      __syncthreads();
      for (int idx = t; idx < kDkdvRows * kKeys; idx += nt) {
        const int r = idx / kKeys, c = idx % kKeys;
        const int64_t i = i0 + r, j = k0 + c;
        A dropped = 0, ds = 0;
        if (r < rows && c < tile && lse_t[r] != detail::sdpa_neg_inf<A>()) {
          const A s = p.score(dot(qs + r * pe, ks + c * pe, E), b, h, i, j);
          const A prob = detail::sdpa_exp_shifted(s, lse_t[r]);
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

// ---- Tensor-core forward (float16/bfloat16, E == Ev in {64, 128}) --------------------------
//
// 4 warps own 64 query rows (16 each) of one (batch, head). Per 64-key tile: each warp computes
// its 16 x 64 scores with WMMA (Q from shared memory row-major, K read as a column-major
// K^T), stores them (float) to shared memory, runs the online softmax on them row by row
// (mask, causal, dropout as the CUDA-core kernel), writes P in the input type, rescales its
// float output rows and adds P V with WMMA, the accumulators living in shared memory so rows can
// be rescaled (WMMA fragments do not expose their row mapping).

constexpr int kTcRows = 64;  // query rows per block
constexpr int kTcKeys = 64;  // keys per tile
constexpr int kTcWarps = 4;
static_assert(kTcRows == kTcKeys,
              "stage_tile16 stages K and V tiles with the query tile's row count");
static_assert(kTcRows == 16 * kTcWarps, "each warp owns 16 query rows");
static_assert(kTcKeys == 64, "the softmax step gives each lane two keys of a tile");

// The WMMA element type of a torch half type.
template <typename T>
struct WmmaType;
template <>
struct WmmaType<at::Half> {
  using type = __half;
};
template <>
struct WmmaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// Shared-memory pitches (elements): multiples of 8 (16-bit) / 4 (float) as WMMA requires,
// padded to spread banks.
template <int D>
struct TcLayout {
  static constexpr int qk_pitch = D + 8;       // q and k tiles, 16-bit
  static constexpr int v_pitch = D + 8;        // v tile, 16-bit
  static constexpr int s_pitch = kTcKeys + 4;  // scores, float
  static constexpr int p_pitch = kTcKeys + 8;  // probabilities, 16-bit
  static constexpr int o_pitch = D + 4;        // output accumulators, float
  static constexpr size_t bytes =
      2 * (2 * kTcRows * qk_pitch + kTcKeys * v_pitch + kTcRows * p_pitch) +
      4 * (kTcRows * s_pitch + kTcRows * o_pitch);
};

// Copies rows [r0, r0 + 64) x D of a strided 16-bit tensor to shared memory (zeros past `valid`).
template <typename T, int D, typename RowPtr>
__device__ void stage_tile16(T* dst, int pitch, int64_t valid, const RowPtr& src) {
  for (int idx = threadIdx.x; idx < kTcRows * D; idx += blockDim.x) {
    const int r = idx / D, e = idx % D;
    dst[r * pitch + e] = r < valid ? src(r)[e] : T(0.0f);
  }
}

// acc += A (16 x 16*steps, row-major, lda) * B, B's k-th 16-row block at b + kk * b_step; B is
// row- or column-major (BLayout) with leading dimension ldb.
template <typename W, typename BLayout>
__device__ __forceinline__ void mma_accumulate(
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>& acc, const W* a, int lda,
    const W* b, int ldb, int b_step, int steps) {
  namespace wmma = nvcuda::wmma;
  for (int kk = 0; kk < steps; ++kk) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> a_frag;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, W, BLayout> b_frag;
    wmma::load_matrix_sync(a_frag, a + kk * 16, lda);
    wmma::load_matrix_sync(b_frag, b + kk * b_step, ldb);
    wmma::mma_sync(acc, a_frag, b_frag, acc);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kTcWarps * 32)
    forward_tensor_core_kernel(Params<T> p, T* out, float* lse, int64_t row_blocks) {
// WMMA on 16-bit types needs sm_80 (bfloat16); older architectures compile an empty body (the
// launcher only takes this kernel on sm_80+).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using W = typename WmmaType<T>::type;
  using L = TcLayout<D>;
  // WMMA loads and stores want 256-bit aligned addresses: every offset below is a multiple of
  // 32 bytes (the pitches times 16 rows, 16-column steps), from a 128-byte aligned base.
  FASTDL_DYNAMIC_SHARED(unsigned char, tc_smem);
  T* qs = reinterpret_cast<T*>(tc_smem);
  T* ks = qs + kTcRows * L::qk_pitch;
  T* vs = ks + kTcKeys * L::qk_pitch;
  T* ps = vs + kTcKeys * L::v_pitch;
  float* ss = reinterpret_cast<float*>(ps + kTcRows * L::p_pitch);
  float* os = ss + kTcRows * L::s_pitch;
  const BlockIndex at(blockIdx.x, p.q_heads, row_blocks);
  const int64_t b = at.b, h = at.h, kv_h = at.h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = at.block * kTcRows;
  const int64_t rows = imin(kTcRows, p.q_len - row0);
  stage_tile16<T, D>(qs, L::qk_pitch, rows, [&](int r) { return p.q_row(b, h, row0 + r); });
  for (int idx = threadIdx.x; idx < kTcRows * L::o_pitch; idx += blockDim.x) os[idx] = 0.0f;
  float m[16], l[16];  // this warp's rows' running max and sum (the same in every lane)
#pragma unroll  // m and l stay in registers: every loop over r is unrolled
  for (int r = 0; r < 16; ++r) {
    m[r] = detail::sdpa_neg_inf<float>();
    l[r] = 0.0f;
  }
  const int wr = warp * 16;  // this warp's first row in the block
  const int64_t keys = p.visible_keys(row0 + rows - 1);
  for (int64_t k0 = 0; k0 < keys; k0 += kTcKeys) {
    __syncthreads();  // everyone is done with the previous K/V tile
    const int64_t tile = imin(kTcKeys, p.kv_len - k0);
    stage_tile16<T, D>(ks, L::qk_pitch, tile, [&](int r) { return p.k_row(b, kv_h, k0 + r); });
    stage_tile16<T, D>(vs, L::v_pitch, tile, [&](int r) { return p.v_row(b, kv_h, k0 + r); });
    __syncthreads();
    // Scores: ss[wr .. wr + 16) x 64 = Q_w K^T (K row-major is K^T column-major).
    const W* q_w = reinterpret_cast<const W*>(qs + wr * L::qk_pitch);
    for (int n = 0; n < kTcKeys / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      mma_accumulate<W, wmma::col_major>(acc, q_w, L::qk_pitch,
                                         reinterpret_cast<const W*>(ks + n * 16 * L::qk_pitch),
                                         L::qk_pitch, 16, D / 16);
      wmma::store_matrix_sync(ss + wr * L::s_pitch + n * 16, acc, L::s_pitch, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax, one row at a time, two keys per lane.
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      const int64_t i = row0 + wr + r;
      float s2[2];
      for (int t = 0; t < 2; ++t) {
        const int c = lane + 32 * t;
        s2[t] = i < p.q_len ? p.score(ss[(wr + r) * L::s_pitch + c], b, h, i, k0 + c)
                            : detail::sdpa_neg_inf<float>();
      }
      const float new_m = fmaxf(m[r], warp_max(fmaxf(s2[0], s2[1])));
      const float correction = detail::sdpa_exp_shifted(m[r], new_m);
      float sum = 0.0f;
      for (int t = 0; t < 2; ++t) {
        const int c = lane + 32 * t;
        float prob = detail::sdpa_exp_shifted(s2[t], new_m);
        sum += prob;
        if (i < p.q_len) prob *= p.template keep_factor<float>(b, h, i, k0 + c);
        ps[(wr + r) * L::p_pitch + c] = static_cast<T>(prob);
      }
      m[r] = new_m;
      l[r] = l[r] * correction + warp_sum(sum);
      for (int e = lane; e < D; e += 32) os[(wr + r) * L::o_pitch + e] *= correction;
    }
    __syncwarp();
    // os[wr .. wr + 16) += P_w V.
    const W* p_w = reinterpret_cast<const W*>(ps + wr * L::p_pitch);
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, os + wr * L::o_pitch + n * 16, L::o_pitch, wmma::mem_row_major);
      mma_accumulate<W, wmma::row_major>(acc, p_w, L::p_pitch,
                                         reinterpret_cast<const W*>(vs + n * 16), L::v_pitch,
                                         16 * L::v_pitch, kTcKeys / 16);
      wmma::store_matrix_sync(os + wr * L::o_pitch + n * 16, acc, L::o_pitch, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();  // with no keys at all, the zeroed accumulators come from other warps
#pragma unroll
  for (int r = 0; r < 16; ++r) {
    const int64_t i = row0 + wr + r;
    if (i < p.q_len) {
      const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      T* out_row = out + ((b * p.q_heads + h) * p.q_len + i) * D;
      for (int e = lane; e < D; e += 32)
        out_row[e] = static_cast<T>(os[(wr + r) * L::o_pitch + e] * inv);
      if (lane == 0) {
        lse[(b * p.q_heads + h) * p.q_len + i] =
            l[r] > 0.0f ? m[r] + logf(l[r]) : detail::sdpa_neg_inf<float>();
      }
    }
  }
#endif
}

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
int chunks_for(int64_t dim) { return dim <= 32 ? 1 : dim <= 64 ? 2 : dim <= 128 ? 4 : 8; }

// Launches kernel<..., chunks> for the chunk count of `dim` (kernel is a template functor).
template <typename Launch>
void with_chunks(int64_t dim, const Launch& launch) {
  switch (chunks_for(dim)) {
    case 1:
      launch(std::integral_constant<int, 1>{});
      break;
    case 2:
      launch(std::integral_constant<int, 2>{});
      break;
    case 4:
      launch(std::integral_constant<int, 4>{});
      break;
    default:
      launch(std::integral_constant<int, 8>{});
      break;
  }
}

// Allows `kernel` `bytes` of dynamic shared memory (a clear error when the device has less).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  cuda::reserve_dynamic_shared(kernel, bytes, "fastdl.scaled_dot_product_attention", "head dims");
}

void check_cuda_dims(const detail::SdpaShape& s) {
  TORCH_CHECK(s.head_dim <= kMaxHeadDim && s.value_dim <= kMaxHeadDim,
              "fastdl.scaled_dot_product_attention: CUDA kernels take head dims up to ",
              kMaxHeadDim, ", got E = ", s.head_dim, " and Ev = ", s.value_dim);
}

int64_t grid_blocks(int64_t blocks) {
  TORCH_CHECK(blocks <= cuda::max_grid_x(), "fastdl attention: problem too large (", blocks,
              " blocks)");
  return blocks;
}

// Launches the tensor-core forward when it applies (half types, E == Ev in {64, 128});
// returns false otherwise.
template <typename T>
bool launch_forward_tensor_core(const detail::SdpaShape& shape, const Params<T>& params,
                                at::Tensor& output, at::Tensor& logsumexp) {
  if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>) {
    if (shape.head_dim != shape.value_dim || (shape.head_dim != 64 && shape.head_dim != 128))
      return false;
    // WMMA on half types needs sm_80+; D = 128 needs 110 KiB of shared memory, more than
    // sm_86/89 allow: those take the CUDA-core kernel.
    const auto& props = cuda::device_properties();
    const size_t bytes = shape.head_dim == 64 ? TcLayout<64>::bytes : TcLayout<128>::bytes;
    if (props.major < 8 || bytes > props.sharedMemPerBlockOptin) return false;
    const int64_t row_blocks = cuda::ceil_div(shape.q_len, kTcRows);
    const auto launch = [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      auto kernel = forward_tensor_core_kernel<T, D>;
      allow_shared_memory(kernel, TcLayout<D>::bytes);
      cuda::launch(kernel,
                   {grid_blocks(shape.batch * shape.q_heads * row_blocks), kTcWarps * 32,
                    TcLayout<D>::bytes},
                   params, output.mutable_data_ptr<T>(), logsumexp.mutable_data_ptr<float>(),
                   row_blocks);
    };
    if (shape.head_dim == 64) {
      launch(std::integral_constant<int, 64>{});
    } else {
      launch(std::integral_constant<int, 128>{});
    }
    return true;
  }
  return false;
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
        if (launch_forward_tensor_core<scalar_t>(shape, params, output, logsumexp)) return;
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
  if (rows == 0 || shape.kv_len == 0) return {grad_query, grad_key, grad_value, grad_mask};
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

// sdpa_weights rows, one warp per (batch, head, query row): scores (already scaled) become
// exp(s + mask - lse); `dropped`, when set, gets them times dropout's keep factor.
template <typename T>
__global__ void probs_kernel(Params<T> p, T* scores, const acc_t<T>* lse, T* dropped,
                             int64_t rows) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = row % p.q_len, h = (row / p.q_len) % p.q_heads, b = row / (p.q_len * p.q_heads);
  const A row_lse = lse[row];
  for (int64_t j = lane; j < p.kv_len; j += 32) {
    T* s = scores + row * p.kv_len + j;
    // The GEMM applied the scale already (Params::score would apply it again): add the mask.
    A v = static_cast<A>(*s);
    const int64_t m =
        b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3];
    if (p.mask_float) v += static_cast<A>(p.mask_float[m]);
    const bool masked = (p.causal && j > i) || (p.mask_bool && !p.mask_bool[m]);
    const A prob = masked || row_lse == detail::sdpa_neg_inf<A>()
                       ? A(0)
                       : detail::sdpa_exp_shifted(v, row_lse);
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

namespace detail {

void sdpa_probs_cuda(at::Tensor& scores, const std::optional<at::Tensor>& attn_mask,
                     const at::Tensor& logsumexp, const SdpaShape& shape, at::Tensor* dropped) {
  cuda::DeviceGuard guard(scores.device());
  const auto lse = logsumexp.contiguous();
  const int64_t rows = shape.batch * shape.q_heads * shape.q_len;
  if (rows == 0) return;
  constexpr int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, scores.scalar_type(), "sdpa_probs_cuda", [&] {
        // Params with the scores as a stand-in for q/k/v: only the mask, sizes and dropout
        // are read.
        const auto params = make_params<scalar_t>(shape, scores, scores, scores, attn_mask);
        cuda::launch(probs_kernel<scalar_t>,
                     {grid_blocks(cuda::ceil_div(rows, threads / 32)), threads, 0}, params,
                     scores.mutable_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t<scalar_t>>(),
                     dropped ? dropped->mutable_data_ptr<scalar_t>() : nullptr, rows);
      });
}

void sdpa_softmax_backward_cuda(at::Tensor& grad, const at::Tensor& probs, const SdpaShape& shape) {
  cuda::DeviceGuard guard(grad.device());
  const int64_t rows = shape.batch * shape.q_heads * shape.q_len;
  if (rows == 0) return;
  constexpr int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "sdpa_softmax_backward_cuda", [&] {
        const auto params = make_params<scalar_t>(shape, grad, grad, grad, std::nullopt);
        cuda::launch(softmax_backward_kernel<scalar_t>,
                     {grid_blocks(cuda::ceil_div(rows, threads / 32)), threads, 0}, params,
                     grad.mutable_data_ptr<scalar_t>(), probs.const_data_ptr<scalar_t>(), rows);
      });
}

}  // namespace detail

namespace {
const detail::SdpaWeightsRows& cuda_weights_rows() {
  static const detail::SdpaWeightsRows rows{&detail::sdpa_probs_cuda,
                                            &detail::sdpa_softmax_backward_cuda};
  return rows;
}
}  // namespace

FASTDL_CUDA_KERNELS(m) {
  m.impl("sdpa_forward", &sdpa_forward_cuda);
  m.impl("sdpa_backward", &sdpa_backward_cuda);
  FASTDL_SDPA_WEIGHTS_KERNELS(m, cuda_weights_rows);
}

}  // namespace fastdl
