// CUDA kernel helpers shared by the op families: accumulation types, Welford statistics,
// warp and block reductions of small structs, launch checks.
#pragma once

#include "fastdl/common/cuda_runtime.cuh"
#include "fastdl/common/switch.h"

#include <ATen/AccumulateType.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>

#include <cstdint>

namespace fastdl::cuda {

// float for half/bfloat16/float inputs, double for double.
template <typename T>
using acc_t = at::acc_type<T, /*is_cuda=*/true>;

constexpr int kWarpSize = 32;

// The device's grid limits (2^31 - 1 along x, 65535 along y and z on every GPU since sm_30;
// the emulator can emulate smaller ones, so the paths past them are tested).
inline int64_t max_grid_x() { return device_properties().maxGridSize[0]; }
inline int64_t max_grid_yz() { return device_properties().maxGridSize[1]; }

// The reduction states below are aggregates without initialisers, so they can live in
// shared memory; value-initialise them (`Welford<float> w{};`) to start from zero.

// Running mean / sum of squared deviations of n values; combine() merges two partial states
// exactly (Chan et al.), so any reduction tree gives the same statistics.
template <typename A>
struct Welford {
  A mean;
  A m2;
  A n;

  __device__ __forceinline__ void add(A x) {
    n += 1;
    const A delta = x - mean;
    mean += delta / n;
    m2 += delta * (x - mean);
  }

  __device__ __forceinline__ void combine(const Welford& o) {
    if (o.n == 0) return;
    if (n == 0) {
      *this = o;
      return;
    }
    const A total = n + o.n;
    const A delta = o.mean - mean;
    const A w = o.n / total;
    mean += delta * w;
    m2 += o.m2 + delta * delta * n * w;
    n = total;
  }

  __device__ __forceinline__ Welford shfl_down(int offset) const {
    Welford o{};
    o.mean = __shfl_down_sync(0xffffffff, mean, offset);
    o.m2 = __shfl_down_sync(0xffffffff, m2, offset);
    o.n = __shfl_down_sync(0xffffffff, n, offset);
    return o;
  }
};

// Two running sums (used for gradient reductions).
template <typename A>
struct SumPair {
  A a;
  A b;

  __device__ __forceinline__ void combine(const SumPair& o) {
    a += o.a;
    b += o.b;
  }

  __device__ __forceinline__ SumPair shfl_down(int offset) const {
    return {__shfl_down_sync(0xffffffff, a, offset), __shfl_down_sync(0xffffffff, b, offset)};
  }
};

// One running sum (the norms' double-precision redo of a row's or channel's statistics).
template <typename A>
struct Sum {
  A v;

  __device__ __forceinline__ void combine(const Sum& o) { v += o.v; }

  __device__ __forceinline__ Sum shfl_down(int offset) const {
    return {__shfl_down_sync(0xffffffff, v, offset)};
  }
};

// Whether x is neither infinite nor NaN (x - x is 0 exactly for finite x; no library call).
template <typename A>
__device__ __forceinline__ bool is_finite(A x) {
  return x - x == A(0);
}

// Reduces a state over a warp; lane 0 holds the result.
template <typename S>
__device__ __forceinline__ S warp_reduce(S s) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) s.combine(s.shfl_down(offset));
  return s;
}

// Reduces a state over a 1-D block (blockDim.x a multiple of 32, at most 1024) and returns
// the result to every thread. `scratch` holds 32 states in shared memory.
template <typename S>
__device__ __forceinline__ S block_reduce_all(S s, S* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  s = warp_reduce(s);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = s;
  __syncthreads();
  if (warp == 0) {
    S t = lane < warps ? scratch[lane] : S{};
    t = warp_reduce(t);
    if (lane == 0) scratch[0] = t;
  }
  __syncthreads();
  return scratch[0];
}

// Reads VEC consecutive values as one aligned vector load.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& pack) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = pack;
}

// The widest vector (up to 16 bytes) that divides `n` and keeps every pointer aligned.
template <typename T>
inline int pack_width(int64_t n, std::initializer_list<const void*> ptrs) {
  int vec = 16 / static_cast<int>(sizeof(T));
  while (vec > 1) {
    bool ok = n % vec == 0;
    for (const void* p : ptrs) {
      ok = ok && (p == nullptr || reinterpret_cast<uintptr_t>(p) % (sizeof(T) * vec) == 0);
    }
    if (ok) break;
    vec /= 2;
  }
  return vec;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// out (float32) = a @ b, or += when `accumulate`, for float16/bfloat16 a and b: cuBLAS multiplies
// the half operands and accumulates and writes in float, so the result is not rounded to half
// (the emulator, whose CPU matmul has no mixed form, multiplies float copies: the same sums).
inline void mm_into_float(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                          bool accumulate) {
#if defined(FASTDL_CUDA_SIM)
  const auto af = a.to(at::kFloat), bf = b.to(at::kFloat);
  if (accumulate) {
    out.addmm_(af, bf);
  } else {
    at::mm_out(out, af, bf);
  }
#else
  if (accumulate) {
    at::addmm_out(out, out, a, b, at::kFloat);
  } else {
    at::mm_out(out, a, b, at::kFloat);
  }
#endif
}

// for (e = this thread's first element; e < total; e += all threads of the grid), 64-bit.
#define FASTDL_GRID_STRIDE(e, total)                                                         \
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < (total); \
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, at least one (an
// empty grid is a launch error), capped so the loop does the rest.
inline unsigned grid_stride_blocks(int64_t n, int threads) {
  const int64_t cap = std::min<int64_t>(65535 * 8, max_grid_x());
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, threads), cap)));
}

}  // namespace fastdl::cuda
