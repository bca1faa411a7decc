// Kernels for the CUDA emulator's own tests (tests/test_cuda_sim.py): each bug the emulator
// must report, and the correct version of the same kernel. Built into libfastdl_cudasim only
// (CMake FASTDL_CUDA_SIM=ON), as torch.ops.fastdl_cudasim_test.run(name, n) -> Tensor.
#include "fastdl/common/cuda_utils.cuh"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>

namespace fastdl {
namespace {

// out[i] = the value thread i + 1 stored in shared memory; without the barrier, a race.
__global__ void neighbour_kernel(float* out, int n, bool sync) {
  FASTDL_DYNAMIC_SHARED(unsigned char, raw);
  float* s = reinterpret_cast<float*>(raw);
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (sync) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % n];
}

// Two threads write the same shared word in one interval (a write-write race) unless `sync`
// orders them.
__global__ void double_write_kernel(float* out, bool sync) {
  FASTDL_SHARED(float, cell, [1]);
  if (threadIdx.x == 0) cell[0] = 1.0f;
  if (sync) __syncthreads();
  if (threadIdx.x == 1) cell[0] = 2.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = cell[0];
}

// Block sum by a warp shuffle tree. With `divergent`, only the lanes below `active` reach the
// shuffles (the induced-attention bug: a loop over e = lane; e < n; e += 32 around them).
__global__ void warp_sum_kernel(const float* x, float* out, int n, bool divergent) {
  float v = 0.0f;
  if (divergent) {
    for (int e = threadIdx.x; e < n; e += 32) {
      v = x[e];
      for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    }
  } else {
    for (int e = threadIdx.x; e < n; e += 32) v += x[e];
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  }
  if (threadIdx.x == 0) out[0] = v;
}

// The shuffles' documented semantics: out[kind][lane], width 8 segments.
__global__ void shuffles_kernel(float* out) {
  const int lane = threadIdx.x;
  const float v = static_cast<float>(lane);
  out[0 * 32 + lane] = __shfl_sync(0xffffffffu, v, (lane + 3) % 32);
  out[1 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 2, 8);
  out[2 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 3, 8);
  out[3 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5);
  out[4 * 32 + lane] = __shfl_sync(0xffffffffu, v, lane + 1, 4);
}

// Half the block waits at one barrier, half at another: not the same __syncthreads().
__global__ void split_barrier_kernel(float* out, bool split) {
  if (split && threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// A barrier the exited threads do not reach: the live ones still meet (the exited count as
// arrived, as on sm_70+).
__global__ void early_exit_kernel(float* out, int n) {
  if (static_cast<int>(threadIdx.x) >= n) return;
  FASTDL_SHARED(float, s, [64]);
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % n];
}

// Writes out[0 .. n + overrun): past the end of the buffer when overrun > 0.
__global__ void global_write_kernel(float* out, int n, int overrun) {
  for (int i = threadIdx.x; i < n + overrun; i += blockDim.x) out[i] = 1.0f;
}

// Writes dynamic shared memory [0, n + overrun) floats when n floats were launched.
__global__ void shared_write_kernel(float* out, int n, int overrun) {
  FASTDL_DYNAMIC_SHARED(unsigned char, raw);
  float* s = reinterpret_cast<float*>(raw);
  for (int i = threadIdx.x; i < n + overrun; i += blockDim.x) s[i] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = s[0];
}

// Touches the first and last float of its dynamic shared memory.
__global__ void big_shared_kernel(float* out, int n) {
  FASTDL_DYNAMIC_SHARED(unsigned char, raw);
  float* s = reinterpret_cast<float*>(raw);
  if (threadIdx.x == 0) {
    s[0] = 1.0f;
    s[n - 1] = 2.0f;
    out[0] = s[0] + s[n - 1];
  }
}

// C (16 x 16, float) = A (16 x 16, half, row-major) B (16 x 16, half, column-major) * 2 with
// WMMA, through shared memory.
__global__ void wmma_kernel(const at::Half* a, const at::Half* b, float* c) {
  namespace wmma = nvcuda::wmma;
  FASTDL_SHARED_ALIGNED(128, __half, as, [256]);
  FASTDL_SHARED_ALIGNED(128, __half, bs, [256]);
  for (int i = threadIdx.x; i < 256; i += 32) {
    as[i] = a[i];
    bs[i] = b[i];
  }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, as, 16);
  wmma::load_matrix_sync(fb, bs, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  for (int e = 0; e < fc.num_elements; ++e) fc.x[e] *= 2.0f;
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

at::Tensor run(std::string name, int64_t n) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto out = at::zeros({std::max<int64_t>(n, 1)}, f32);
  float* o = out.mutable_data_ptr<float>();
  const int ni = static_cast<int>(n);
  const size_t floats = static_cast<size_t>(n) * sizeof(float);
  if (name == "neighbour" || name == "neighbour_race") {
    cuda::launch(neighbour_kernel, {1, ni, floats}, o, ni, name == "neighbour");
  } else if (name == "double_write" || name == "double_write_race") {
    cuda::launch(double_write_kernel, {1, 64}, o, name == "double_write");
  } else if (name == "warp_sum" || name == "warp_sum_divergent") {
    const auto x = at::arange(n, f32);
    auto total = at::zeros({1}, f32);
    cuda::launch(warp_sum_kernel, {1, 32}, x.const_data_ptr<float>(),
                 total.mutable_data_ptr<float>(), ni, name == "warp_sum_divergent");
    return total;
  } else if (name == "shuffles") {
    auto r = at::zeros({5, 32}, f32);
    cuda::launch(shuffles_kernel, {1, 32}, r.mutable_data_ptr<float>());
    return r;
  } else if (name == "barrier" || name == "barrier_split") {
    cuda::launch(split_barrier_kernel, {1, 64}, o, name == "barrier_split");
  } else if (name == "early_exit") {
    cuda::launch(early_exit_kernel, {1, 64}, o, ni);
  } else if (name == "global_write" || name == "global_write_overrun") {
    auto buf = at::zeros({n}, f32);
    cuda::launch(global_write_kernel, {1, 32}, buf.mutable_data_ptr<float>(), ni,
                 name == "global_write" ? 0 : 1);
    return buf;
  } else if (name == "shared_write" || name == "shared_write_overrun") {
    cuda::launch(shared_write_kernel, {1, 32, floats}, o, ni, name == "shared_write" ? 0 : 1);
  } else if (name == "big_shared" || name == "big_shared_reserved") {
    // n floats of dynamic shared memory; above 48 KiB only after the opt-in.
    if (name == "big_shared_reserved") {
      cuda::reserve_dynamic_shared(big_shared_kernel, floats, "cuda_sim test", "the buffer");
    }
    cuda::launch(big_shared_kernel, {1, 32, floats}, o, ni);
  } else if (name == "grid_empty") {
    cuda::launch(global_write_kernel, {0, 32}, o, ni, 0);
  } else if (name == "wmma") {
    const auto a = at::arange(256, f32).remainder(7).sub(3).to(at::kHalf);
    const auto b = at::arange(256, f32).remainder(5).sub(2).to(at::kHalf);
    auto c = at::zeros({16, 16}, f32);
    cuda::launch(wmma_kernel, {1, 32}, a.const_data_ptr<at::Half>(), b.const_data_ptr<at::Half>(),
                 c.mutable_data_ptr<float>());
    return c;
  } else {
    TORCH_CHECK(false, "cuda_sim test: unknown kernel ", name);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(fastdl_cudasim_test, m) { m.def("run(str name, int n) -> Tensor", &run); }

}  // namespace fastdl
