// The CUDA environment of every .cu file, one header for both builds: under nvcc the CUDA
// runtime and ATen's CUDA context; in the emulation build (FASTDL_CUDA_SIM) the emulator
// (cuda_sim.h). The helpers below compile both ways, so the kernels and their launchers are
// the same code in both:
//   cuda::launch(kernel, {grid, block, shared_bytes}, args...)  on the current stream, with
//                                             the launch checked (bad grids raise, not hang);
//   cuda::device_properties(), cuda::DeviceGuard;
//   cuda::reserve_dynamic_shared(kernel, bytes, op, what)  the opt-in above 48 KiB, or a clear
//                                             error where the device has less;
//   FASTDL_SHARED(type, name, [dims]), FASTDL_SHARED_ALIGNED(align, ...),
//   FASTDL_DYNAMIC_SHARED(type, name)        __shared__ storage (per block in the emulator);
//   FASTDL_CUDA_KERNELS(m)                   registration of an op family's CUDA kernels.
#pragma once

#if defined(FASTDL_CUDA_SIM)
#include "fastdl/common/cuda_sim.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstddef>
#include <source_location>
#include <string_view>
#include <utility>

namespace fastdl::cuda {

#if defined(FASTDL_CUDA_SIM)
using DeviceProperties = cuda_sim::DeviceProperties;
inline const DeviceProperties& device_properties() { return cuda_sim::device_properties(); }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
#else
using DeviceProperties = cudaDeviceProp;
inline const DeviceProperties& device_properties() {
  return *at::cuda::getCurrentDeviceProperties();
}
using DeviceGuard = c10::cuda::CUDAGuard;
#endif

// Grid, block and dynamic shared memory of a launch, and where it is launched from.
struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  std::source_location where;
  LaunchConfig(dim3 grid_, dim3 block_, size_t shared_bytes_ = 0,
               std::source_location where_ = std::source_location::current())
      : grid(grid_), block(block_), shared_bytes(shared_bytes_), where(where_) {}
};

// Launches `kernel` on the current stream and checks the launch.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), const LaunchConfig& c, Args&&... args) {
#if defined(FASTDL_CUDA_SIM)
  cuda_sim::launch(kernel, c.grid, c.block, c.shared_bytes, c.where, std::forward<Args>(args)...);
#else
  TORCH_CHECK(c.grid.x > 0 && c.grid.y > 0 && c.grid.z > 0,
              "fastdl: empty CUDA grid launched from ", c.where.file_name(), ":", c.where.line());
  // clang-format does not know <<< >>> in .cuh files (it splits the >>>).
  // clang-format off
  kernel<<<c.grid, c.block, c.shared_bytes, at::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  // clang-format on
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// Allows `kernel` `bytes` of dynamic shared memory: opts in above the default 48 KiB, and
// raises "<op>: <what> need N bytes of shared memory, more than the M this device allows".
template <typename Kernel>
void reserve_dynamic_shared(Kernel kernel, size_t bytes, std::string_view op,
                            std::string_view what) {
  const auto& props = device_properties();
  const size_t optin = props.sharedMemPerBlockOptin;
  TORCH_CHECK(bytes <= optin, op, ": ", what, " need ", bytes,
              " bytes of shared memory, more than the ", optin, " this device allows");
  if (bytes > props.sharedMemPerBlock) {
#if defined(FASTDL_CUDA_SIM)
    cuda_sim::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
#else
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
#endif
  }
}

}  // namespace fastdl::cuda

#if defined(FASTDL_CUDA_SIM)
#define FASTDL_SHARED(type, name, dims) FASTDL_SIM_SHARED(16, type, name, dims)
#define FASTDL_SHARED_ALIGNED(align, type, name, dims) FASTDL_SIM_SHARED(align, type, name, dims)
#define FASTDL_DYNAMIC_SHARED(type, name) FASTDL_SIM_DYNAMIC_SHARED(type, name)
#define FASTDL_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(fastdl_cudasim, CPU, m)
#else
#define FASTDL_SHARED(type, name, dims) __shared__ __align__(16) type name dims
#define FASTDL_SHARED_ALIGNED(align, type, name, dims) \
  __shared__ __align__(align)                          \
  type name dims
#define FASTDL_DYNAMIC_SHARED(type, name) extern __shared__ __align__(128) type name[]
#define FASTDL_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(fastdl, CUDA, m)
#endif
