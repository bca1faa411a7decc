// Implicit-GEMM conv2d forward on tensor cores (see implicit_gemm.cuh).
//
// A block of 4 warps computes a 64 (output pixels) x 64 (output channels) tile of the
// (N * OH * OW, K) output, stepping through the reduction r = (ki, kj, c) 16 at a time: the
// block stages a 64 x 16 slice of A (the input patches, gathered from NHWC with zeros for the
// padding and past the edges) and a 16 x 64 slice of B (the weight as (kh, kw, C, K)) in
// shared memory, and each warp multiplies its 32 x 32 part with 2 x 2 WMMA 16x16x16 fragments
// accumulating in float32. The float tile goes through shared memory once at the end, where
// the bias is added and the values are rounded to the output type, written coalesced along K.
// Every load is bounds-checked, so any sizes work (no divisibility requirements).
#include "fastdl/conv/cuda/implicit_gemm.cuh"
#include "fastdl/common/cuda_utils.cuh"

#include <ATen/ops/empty.h>

#include <cstdint>

namespace fastdl::detail {
namespace {

constexpr int kTileM = 64;  // output pixels per block
constexpr int kTileN = 64;  // output channels per block
constexpr int kTileK = 16;  // reduction steps per stage (the WMMA k)
constexpr int kWarps = 4;   // 2 x 2 warps, 32 x 32 outputs each
constexpr int kThreads = kWarps * 32;

struct ImplicitGemmGeometry {
  int64_t H, W, C, K, OH, OW, kw, sh, sw, ph, pw, dh, dw;
  int64_t M, R;  // M = N * OH * OW outputs, R = kh * kw * C reduction length
};

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename E>
__device__ __forceinline__ E from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// x: (N, H, W, C); wt: (R, K); bias: (K) or null; y: (M, K).
template <typename E>
__global__ void __launch_bounds__(kThreads)
    implicit_gemm_kernel(const E* __restrict__ x, const E* __restrict__ wt,
                         const E* __restrict__ bias, E* __restrict__ y, ImplicitGemmGeometry g) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  FASTDL_SHARED_ALIGNED(128, E, a_tile, [kTileM * kTileK]);      // (m, r) row-major
  FASTDL_SHARED_ALIGNED(128, E, b_tile, [kTileK * kTileN]);      // (r, k) row-major
  FASTDL_SHARED_ALIGNED(128, float, c_tile, [kTileM * kTileN]);  // (m, k) row-major

  const int tid = threadIdx.x, warp = tid / 32;
  const int warp_m = warp / 2, warp_n = warp % 2;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const E zero = from_float<E>(0.f);

  // A staging: thread tid always loads column a_col = tid % 16 of rows a_row0 + 8 t, t < 8.
  // Their output pixels are fixed, so decode them once: the image's base pointer and the
  // top-left input position of each window (ih0 = -1 marks a row past M).
  constexpr int kRowsPerThread = kTileM * kTileK / kThreads;  // 8
  const int a_col = tid % kTileK, a_row0 = tid / kTileK;
  const E* a_image[kRowsPerThread];
  int64_t a_ih0[kRowsPerThread], a_iw0[kRowsPerThread];
  bool a_valid[kRowsPerThread];
#pragma unroll
  for (int t = 0; t < kRowsPerThread; ++t) {
    const int64_t m = m0 + a_row0 + t * (kThreads / kTileK);
    a_valid[t] = m < g.M;
    const int64_t mm = a_valid[t] ? m : 0;
    const int64_t ow = mm % g.OW, oh = (mm / g.OW) % g.OH, n = mm / (g.OW * g.OH);
    a_image[t] = x + n * g.H * g.W * g.C;
    a_ih0[t] = oh * g.sh - g.ph;
    a_iw0[t] = ow * g.sw - g.pw;
  }

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t r0 = 0; r0 < g.R; r0 += kTileK) {
    // A slice: this thread's column r = r0 + a_col is one (ki, kj, c) for all its rows.
    const int64_t r = r0 + a_col;
    const bool r_valid = r < g.R;
    const int64_t c = r % g.C, tap = r / g.C;
    const int64_t ki = tap / g.kw, kj = tap % g.kw;
#pragma unroll
    for (int t = 0; t < kRowsPerThread; ++t) {
      E v = zero;
      const int64_t ih = a_ih0[t] + ki * g.dh, iw = a_iw0[t] + kj * g.dw;
      if (a_valid[t] && r_valid && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
        v = a_image[t][(ih * g.W + iw) * g.C + c];
      }
      a_tile[(a_row0 + t * (kThreads / kTileK)) * kTileK + a_col] = v;
    }
    // B slice: 16 x 64, consecutive threads along K (coalesced rows of wt).
    for (int e = tid; e < kTileK * kTileN; e += kThreads) {
      const int kk = e / kTileN, nn = e % kTileN;
      const int64_t rr = r0 + kk, k = n0 + nn;
      b_tile[e] = (rr < g.R && k < g.K) ? wt[rr * g.K + k] : zero;
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> a_frag[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> b_frag[2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
      wmma::load_matrix_sync(a_frag[i], a_tile + (warp_m * 32 + i * 16) * kTileK, kTileK);
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::load_matrix_sync(b_frag[j], b_tile + warp_n * 32 + j * 16, kTileN);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
    __syncthreads();  // the next stage overwrites the tiles
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(c_tile + (warp_m * 32 + i * 16) * kTileN + warp_n * 32 + j * 16,
                              acc[i][j], kTileN, wmma::mem_row_major);
    }
  __syncthreads();
  for (int e = tid; e < kTileM * kTileN; e += kThreads) {
    const int64_t m = m0 + e / kTileN, k = n0 + e % kTileN;
    if (m < g.M && k < g.K) {
      const float b = bias ? to_float(bias[k]) : 0.f;
      y[m * g.K + k] = from_float<E>(c_tile[e] + b);
    }
  }
#endif
}

template <typename E>
void launch(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& b, at::Tensor& y,
            const ImplicitGemmGeometry& g) {
  const dim3 grid(static_cast<unsigned>((g.M + kTileM - 1) / kTileM),
                  static_cast<unsigned>((g.K + kTileN - 1) / kTileN));
  cuda::launch(implicit_gemm_kernel<E>, {grid, kThreads, 0},
               reinterpret_cast<const E*>(x.const_data_ptr()),
               reinterpret_cast<const E*>(wt.const_data_ptr()),
               b.defined() ? reinterpret_cast<const E*>(b.const_data_ptr()) : nullptr,
               reinterpret_cast<E*>(y.mutable_data_ptr()), g);
}

}  // namespace

bool conv2d_implicit_gemm_applies(const at::Tensor& input, const Conv2dShape& s) {
  const auto dtype = input.scalar_type();
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  if (!s.channels_last || !s.batched || s.groups != 1) return false;
  const int64_t m = s.batch * s.out_h * s.out_w;
  if ((m + kTileM - 1) / kTileM > cuda::max_grid_x() ||
      (s.out_channels + kTileN - 1) / kTileN > cuda::max_grid_yz())
    return false;
  return cuda::device_properties().major >= 8;
}

at::Tensor conv2d_forward_implicit_gemm(const at::Tensor& input, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const Conv2dShape& s) {
  const cuda::DeviceGuard guard(input.device());
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);  // (N, H, W, C) in memory
  const auto wt = weight.permute({2, 3, 1, 0}).contiguous();        // (kh, kw, C, K) = (R, K)
  const auto b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  auto y =
      at::empty({s.batch, s.out_channels, s.out_h, s.out_w},
                input.options().memory_format(at::MemoryFormat::ChannelsLast));  // (M, K) in memory
  const ImplicitGemmGeometry g{s.in_h,
                               s.in_w,
                               s.in_channels,
                               s.out_channels,
                               s.out_h,
                               s.out_w,
                               s.kw,
                               s.sh,
                               s.sw,
                               s.ph,
                               s.pw,
                               s.dh,
                               s.dw,
                               s.batch * s.out_h * s.out_w,
                               s.kh * s.kw * s.in_channels};
  if (g.M == 0 || g.K == 0) return y;
  if (input.scalar_type() == at::kHalf) {
    launch<__half>(x, wt, b, y, g);
  } else {
    launch<__nv_bfloat16>(x, wt, b, y, g);
  }
  return y;
}

}  // namespace fastdl::detail
