// cuda-sim's host side: the emulated device's properties, the launch of a grid (blocks spread
// over torch's CPU threads, each run by cuda_sim.cpp's scheduler), the per-kernel limits and
// counts, and the fastdl_cudasim op namespace. Built only into libfastdl_cudasim.
#include "fastdl/common/cuda_sim_state.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace fastdl::cuda_sim {
using namespace internal;  // NOLINT: the launch runs blocks on the runtime's workers

namespace {

// The emulated device: an H100/H200 (sm_90) unless FASTDL_CUDA_SIM_ARCH says otherwise.
DeviceProperties make_properties() {
  DeviceProperties p{};
  const char* arch = std::getenv("FASTDL_CUDA_SIM_ARCH");
  const int sm = arch ? std::atoi(arch) : 90;
  p.major = sm / 10;
  p.minor = sm % 10;
  p.multiProcessorCount = sm >= 90 ? 132 : sm >= 80 ? 108 : 84;
  p.sharedMemPerBlock = 48 * 1024;
  // Opt-in limits per block: sm_90 227 KiB, sm_80 163 KiB, sm_86/89 99 KiB, sm_70 96 KiB, sm_75 64 KiB.
  p.sharedMemPerBlockOptin = sm >= 90              ? 232448
                             : sm == 80            ? 166912
                             : sm >= 86            ? 101376
                             : sm >= 75 && sm < 80 ? 65536
                                                   : 98304;
  p.maxThreadsPerBlock = kMaxThreads;
  p.warpSize = 32;
  p.maxGridSize[0] = 2147483647;
  p.maxGridSize[1] = p.maxGridSize[2] = 65535;
  return p;
}

}  // namespace

namespace {
DeviceProperties& mutable_properties() {
  static DeviceProperties p = make_properties();
  return p;
}

// Tests emulate a device with smaller grid limits, so that the kernels' paths past the
// limits (grid-stride loops over rows, bags, splits) run at small sizes. 0 restores a limit.
void set_max_grid(int64_t x, int64_t y, int64_t z) {
  const DeviceProperties real = make_properties();
  auto& p = mutable_properties();
  p.maxGridSize[0] = x > 0 ? static_cast<int>(x) : real.maxGridSize[0];
  p.maxGridSize[1] = y > 0 ? static_cast<int>(y) : real.maxGridSize[1];
  p.maxGridSize[2] = z > 0 ? static_cast<int>(z) : real.maxGridSize[2];
}
}  // namespace

const DeviceProperties& device_properties() { return mutable_properties(); }

namespace {
std::mutex g_launches_mutex;
std::vector<std::pair<const void*, int64_t>> g_launches;  // kernel -> launches so far

void count_launch(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_launches_mutex);
  for (auto& [k, n] : g_launches) {
    if (k == kernel) {
      ++n;
      return;
    }
  }
  g_launches.emplace_back(kernel, 1);
}

// "name<args>(params) file:line:column\tlaunches" for every kernel launched in this process.
std::vector<std::string> kernel_launches() {
  std::lock_guard<std::mutex> lock(g_launches_mutex);
  std::vector<std::string> out;
  for (const auto& [k, n] : g_launches) {
    out.push_back(symbolize(static_cast<const char*>(k) + 1) + "\t" + std::to_string(n));
  }
  return out;
}

std::mutex g_optin_mutex;
std::vector<std::pair<const void*, size_t>> g_optin;  // kernel -> opted-in dynamic shared bytes
}  // namespace

void set_max_dynamic_shared(const void* kernel, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_optin_mutex);
  for (auto& [k, b] : g_optin) {
    if (k == kernel) {
      b = bytes;
      return;
    }
  }
  g_optin.emplace_back(kernel, bytes);
}

namespace {
size_t max_dynamic_shared(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_optin_mutex);
  for (auto& [k, b] : g_optin) {
    if (k == kernel) return b;
  }
  return device_properties().sharedMemPerBlock;
}

// Blocks in a scrambled order: a kernel must not rely on the order blocks run in.
int64_t block_order(int64_t i, int64_t n) {
  if (n <= 2) return n - 1 - i;
  // i * p mod n for a p coprime with n.
  int64_t p = n / 2 + 1;
  while (std::__gcd(p, n) != 1) ++p;
  return (i * p) % n;
}
}  // namespace

void run_grid(KernelLaunch& k) {
  const auto& props = device_properties();
  std::ostringstream bad;
  const int64_t threads = int64_t(k.block.x) * k.block.y * k.block.z;
  if (k.grid.x == 0 || k.grid.y == 0 || k.grid.z == 0) {
    bad << "an empty grid (" << k.grid.x << ", " << k.grid.y << ", " << k.grid.z << ")";
  } else if (k.grid.x > static_cast<unsigned>(props.maxGridSize[0]) ||
             k.grid.y > static_cast<unsigned>(props.maxGridSize[1]) ||
             k.grid.z > static_cast<unsigned>(props.maxGridSize[2])) {
    bad << "grid (" << k.grid.x << ", " << k.grid.y << ", " << k.grid.z
        << ") beyond the device's limits (" << props.maxGridSize[0] << ", " << props.maxGridSize[1]
        << ", " << props.maxGridSize[2] << ")";
  } else if (threads == 0 || threads > props.maxThreadsPerBlock || k.block.x > 1024 ||
             k.block.y > 1024 || k.block.z > 64) {
    bad << "a block of (" << k.block.x << ", " << k.block.y << ", " << k.block.z << ") threads";
  } else {
    k.shared_limit = max_dynamic_shared(k.kernel);
    if (k.dynamic_shared_bytes > k.shared_limit) {
      bad << k.dynamic_shared_bytes << " bytes of dynamic shared memory, more than the "
          << k.shared_limit << " allowed"
          << (k.shared_limit == props.sharedMemPerBlock ? " without cudaFuncSetAttribute's opt-in"
                                                        : "");
    }
  }
  // The symbolizer takes return addresses (it looks one byte back): the entry point + 1.
  const std::string name = symbolize(static_cast<const char*>(k.kernel) + 1, "%f");
  count_launch(k.kernel);
  TORCH_CHECK(bad.str().empty(), "cuda-sim: invalid launch of ", name, " from ",
              where_string(k.where), ": ", bad.str());
  k.shared_limit = std::max(k.shared_limit, props.sharedMemPerBlock);
  const Launch launch{&k, name};
  const int64_t blocks = int64_t(k.grid.x) * k.grid.y * k.grid.z;
  std::mutex error_mutex;
  std::string error;
  std::atomic<bool> failed{false};
  const char* serial = std::getenv("FASTDL_CUDA_SIM_THREADS");
  const int64_t grain = serial && std::atoi(serial) == 1 ? blocks : 1;
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    Worker& w = worker();
    for (int64_t i = begin; i < end && !failed.load(); ++i) {
      const int64_t b = block_order(i, blocks);
      const uint3 idx{static_cast<unsigned>(b % k.grid.x),
                      static_cast<unsigned>((b / k.grid.x) % k.grid.y),
                      static_cast<unsigned>(b / (int64_t(k.grid.x) * k.grid.y))};
      std::string e = run_block(w, launch, idx);
      if (!e.empty()) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.exchange(true)) {
          std::ostringstream s;
          s << "cuda-sim: kernel " << name << " launched from " << where_string(k.where)
            << ", block (" << idx.x << "," << idx.y << "," << idx.z << "): " << e;
          error = s.str();
        }
      }
    }
  });
  TORCH_CHECK(!failed.load(), error);
}

}  // namespace fastdl::cuda_sim

// ---- the op namespace ----------------------------------------------------------------------------
// torch.ops.fastdl_cudasim.X has the schema of torch.ops.fastdl.X; the emulated .cu files
// register their kernels for it on the CPU key (FASTDL_CUDA_KERNELS in cuda_runtime.cuh).
TORCH_LIBRARY(fastdl_cudasim, m) {
  // The emulator's own: "kernel\tlaunches" for every kernel launched so far (tests/conftest.py
  // reports which kernels of the tree have run).
  m.def("_kernel_launches() -> str[]", &fastdl::cuda_sim::kernel_launches);
  m.def("_set_max_grid(int x, int y, int z) -> ()", &fastdl::cuda_sim::set_max_grid);
  for (const auto& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("fastdl::", 0) != 0) continue;
    const auto op = c10::Dispatcher::singleton().findOp(name);
    if (!op.has_value() || !op->hasSchema()) continue;
    std::ostringstream schema;
    schema << op->schema();
    std::string text = schema.str();
    text.erase(0, std::string("fastdl::").size());
    m.def(text.c_str());
  }
}
