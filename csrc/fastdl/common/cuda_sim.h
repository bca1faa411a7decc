// cuda-sim: the CUDA emulator. The emulation build (CMake FASTDL_CUDA_SIM=ON) compiles the
// same .cu files as the GPU build, with the host C++ compiler against this header instead of
// the CUDA headers, and runs their kernels on CPU memory (libfastdl_cudasim, ops registered as
// torch.ops.fastdl_cudasim.* on the CPU key). It exists so that every CUDA kernel executes in
// CI, on machines without a GPU; it is a test tool, not a CPU backend.
//
// What it models, so that bugs show up instead of being hidden:
//  - every thread of a block is a fiber, scheduled cooperatively: __syncthreads() is a real
//    barrier of the block's live threads, and one not reached by all of them (or reached at
//    different places) is an error naming the kernel and the source lines;
//  - warp collectives (__shfl*_sync, __syncwarp, WMMA) complete only when every lane named in
//    the mask has arrived at the same call; a lane that exits, waits elsewhere or is outside
//    the block is an error;
//  - shared memory is per block, sized by the launch (dynamic) and the __shared__ variables
//    (FASTDL_SHARED), within the device's limits; accesses outside them, and two threads
//    touching the same byte between two barriers with at least one write (a race), are
//    errors; global memory is checked against AddressSanitizer's shadow when the process runs
//    under it (scripts/test_cuda_sim.sh);
//  - float16/bfloat16 are c10::Half/c10::BFloat16 (round-to-nearest-even conversions, as the
//    GPU's __float2half_rn / __float2bfloat16_rn); WMMA fragments hold their elements in a
//    scrambled lane mapping (the real one is unspecified) and multiply in float.
// Errors abandon the launch and raise c10::Error ("cuda-sim: ...") from the launch site.
// Only included by the emulation build (through common/cuda_runtime.cuh).
#pragma once

#if !defined(FASTDL_CUDA_SIM)
#error "cuda_sim.h is for the emulation build only (FASTDL_CUDA_SIM)"
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>  // the float overloads of log, exp, ... in the global namespace, as in CUDA
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- CUDA's keywords -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// __shared__ storage is per block: declare it with FASTDL_SHARED / FASTDL_DYNAMIC_SHARED.
#define __shared__ FASTDL_SHARED_is_required_for_shared_memory_in_cuda_sim

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// The built-in variables: the runtime sets them before it resumes a thread (they are
// per-OS-thread, and a fiber never changes OS thread).
#define FASTDL_SIM_TLS __attribute__((tls_model("initial-exec"))) thread_local
extern FASTDL_SIM_TLS uint3 threadIdx;
extern FASTDL_SIM_TLS uint3 blockIdx;
extern FASTDL_SIM_TLS uint3 blockDim;
extern FASTDL_SIM_TLS uint3 gridDim;
constexpr int warpSize = 32;

using cudaStream_t = struct FastdlSimStream*;
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;

namespace fastdl::cuda_sim {

using Where = std::source_location;

// ---- the runtime (cuda_sim.cpp) ---------------------------------------------------------------

// A __shared__ variable: its identity (one per declaration and template instantiation) and
// where it was declared, for messages.
struct SharedVar {
  const char* name;
  const char* file;
  int line;
};

// Storage of `var` in the current block's shared memory (allocated by the first thread that
// reaches the declaration, with `align`), and the block's dynamic shared memory.
void* shared_variable(const SharedVar* var, size_t bytes, size_t align);
void* dynamic_shared_memory();

void syncthreads(Where where);

// A warp collective: the lanes in `mask` meet at one call (the same `name` and `where`, the
// same mask); when the last arrives, `complete(lanes)` runs once, lanes[i] being lane i's
// `data` (null outside the mask), then they all go on.
using WarpComplete = void (*)(void* const* lanes, unsigned mask, const void* info);
void warp_collective(const char* name, Where where, unsigned mask, void* data,
                     WarpComplete complete, const void* info, bool exited_lanes_ok);

// Raises the emulator's error from device code (in the kernel's thread).
[[noreturn]] void device_error(const char* what, Where where);

// Lane of the calling thread in its warp, and its warp's index in the block.
int lane_id();

// ---- warp shuffles ---------------------------------------------------------------------------

enum class Shuffle { index, up, down, xor_ };

struct ShuffleLane {
  uint64_t value;  // the lane's variable, as bits
  int arg;         // srcLane / delta / laneMask
  uint64_t result;
};

struct ShuffleInfo {
  Shuffle kind;
  int width;
  Where where;
};

void complete_shuffle(void* const* lanes, unsigned mask, const void* info);

template <typename T>
inline T shuffle(Shuffle kind, const char* name, unsigned mask, T var, int arg, int width,
                 Where where) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move 8 bytes at most");
  if (width <= 0 || width > warpSize || (width & (width - 1)) != 0) {
    device_error("__shfl*_sync: width must be a power of 2 no larger than 32", where);
  }
  ShuffleLane lane{0, arg, 0};
  std::memcpy(&lane.value, &var, sizeof(T));
  const ShuffleInfo info{kind, width, where};
  warp_collective(name, where, mask, &lane, &complete_shuffle, &info, /*exited_lanes_ok=*/false);
  T out;
  std::memcpy(&out, &lane.result, sizeof(T));
  return out;
}

// ---- host side: what common/cuda_runtime.cuh's launch and device helpers call -----------------

// The fields of cudaDeviceProp the launchers read.
struct DeviceProperties {
  int major, minor, multiProcessorCount, maxThreadsPerBlock, warpSize;
  int maxGridSize[3];
  size_t sharedMemPerBlock, sharedMemPerBlockOptin;
};
const DeviceProperties& device_properties();

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_shared(const void* kernel, size_t bytes);

struct KernelLaunch {
  const void* kernel;
  dim3 grid, block;
  size_t dynamic_shared_bytes;
  size_t shared_limit;  // set by run_grid: static + dynamic bytes allowed
  void (*body)(void*);  // runs the kernel in the current thread
  void* context;
  Where where;  // the launch site
};

// Runs every block of the launch; raises c10::Error for a bad launch or a failing kernel.
void run_grid(KernelLaunch& launch);

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Where where,
            Args&&... args) {
  // Kernel parameters are copied once, as CUDA does, and passed by value to every thread.
  using Tuple = std::tuple<std::decay_t<Params>...>;
  Tuple params(std::forward<Args>(args)...);
  struct Context {
    void (*kernel)(Params...);
    Tuple* params;
  } context{kernel, &params};
  KernelLaunch k{reinterpret_cast<const void*>(kernel),
                 grid,
                 block,
                 shared_bytes,
                 0,
                 [](void* c) {
                   auto* ctx = static_cast<Context*>(c);
                   std::apply(ctx->kernel, *ctx->params);
                 },
                 &context,
                 where};
  run_grid(k);
}

}  // namespace fastdl::cuda_sim

// ---- device intrinsics -------------------------------------------------------------------------

inline void __syncthreads(std::source_location where = std::source_location::current()) {
  fastdl::cuda_sim::syncthreads(where);
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location where = std::source_location::current()) {
  fastdl::cuda_sim::warp_collective("__syncwarp", where, mask, nullptr, nullptr, nullptr,
                                    /*exited_lanes_ok=*/true);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
                     std::source_location where = std::source_location::current()) {
  return fastdl::cuda_sim::shuffle(fastdl::cuda_sim::Shuffle::index, "__shfl_sync", mask, var,
                                   src_lane, width, where);
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        std::source_location where = std::source_location::current()) {
  return fastdl::cuda_sim::shuffle(fastdl::cuda_sim::Shuffle::up, "__shfl_up_sync", mask, var,
                                   static_cast<int>(delta), width, where);
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          std::source_location where = std::source_location::current()) {
  return fastdl::cuda_sim::shuffle(fastdl::cuda_sim::Shuffle::down, "__shfl_down_sync", mask, var,
                                   static_cast<int>(delta), width, where);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                         std::source_location where = std::source_location::current()) {
  return fastdl::cuda_sim::shuffle(fastdl::cuda_sim::Shuffle::xor_, "__shfl_xor_sync", mask, var,
                                   lane_mask, width, where);
}

// ---- math as CUDA's device library has it ---------------------------------------------------

// CUDA's max/min take mixed integer types (int64_t with int) and return the common type.
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
inline float max(float a, float b) { return ::fmaxf(a, b); }
inline float min(float a, float b) { return ::fminf(a, b); }
inline double max(double a, double b) { return ::fmax(a, b); }
inline double min(double a, double b) { return ::fmin(a, b); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }

// ---- float16 / bfloat16 ----------------------------------------------------------------------

inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }

// ---- shared memory ---------------------------------------------------------------------------

// `type dims name` in the current block's shared memory, aligned to `align` bytes.
#define FASTDL_SIM_SHARED(align, type, name, dims)                                              \
  static constexpr ::fastdl::cuda_sim::SharedVar name##_shared_var_{#name, __FILE__, __LINE__}; \
  using name##_shared_type_ = type dims;                                                        \
  name##_shared_type_& name =                                                                   \
      *static_cast<name##_shared_type_*>(::fastdl::cuda_sim::shared_variable(                   \
          &name##_shared_var_, sizeof(name##_shared_type_), align))

#define FASTDL_SIM_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::fastdl::cuda_sim::dynamic_shared_memory())

#include "fastdl/common/cuda_sim_wmma.h"
