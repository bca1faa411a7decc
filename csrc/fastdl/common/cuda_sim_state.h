// cuda-sim's internal state, shared by its runtime (cuda_sim.cpp: fibers, barriers, warp
// collectives), its launch (cuda_sim_launch.cpp) and its memory checks (cuda_sim_memory.cpp:
// shared-memory bounds and races, the instrumented kernels' access hooks). Not part of the emulator's interface
// (cuda_sim.h); built only into libfastdl_cudasim.
#pragma once

#include "fastdl/common/cuda_sim.h"

#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

// AddressSanitizer's interface, present when the process runs under it (LD_PRELOAD of
// libasan): global memory is checked against its shadow, fibers are announced to it so its
// stack traces follow them, and it symbolizes program counters for messages.
extern "C" {
__attribute__((weak)) void* __asan_region_is_poisoned(void* beg, size_t size);
__attribute__((weak)) void __asan_describe_address(void* addr);
__attribute__((weak)) void __sanitizer_print_stack_trace();
__attribute__((weak)) void __sanitizer_symbolize_pc(void* pc, const char* fmt, char* out, size_t n);
__attribute__((weak)) void __sanitizer_start_switch_fiber(void** fake_stack_save,
                                                          const void* bottom, size_t size);
__attribute__((weak)) void __sanitizer_finish_switch_fiber(void* fake_stack_save,
                                                           const void** bottom_old,
                                                           size_t* size_old);
}

namespace fastdl::cuda_sim::internal {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kArenaBytes = 512 * 1024;  // dynamic + static shared memory, with red zones
constexpr size_t kRedZone = 256;
constexpr unsigned kFullMask = 0xffffffffu;

enum class Wait : uint8_t { running, barrier, warp, exited };

struct Thread {
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack = nullptr;
  uint3 idx{};
  int linear = 0, warp = 0, lane = 0;
  Wait wait = Wait::running;
  Where where{};  // the barrier or collective it waits at
  const char* op = nullptr;
  unsigned mask = 0;
  void* data = nullptr;
  WarpComplete complete = nullptr;
  const void* info = nullptr;
  bool exited_ok = false;
  void* fake_stack = nullptr;  // AddressSanitizer's fiber bookkeeping
};

// One shadow entry per byte of shared memory: the last writer and the readers since then,
// with the barrier interval (block-wide, unique per block) and warp interval they did it in.
struct Shadow {
  const void* write_pc;
  const void* read_pc;
  uint32_t write_interval, read_interval;
  uint32_t write_warp_interval, read_warp_interval;
  uint16_t writer, reader;  // thread (linear id); reader == kManyReaders: several
  uint16_t reader_warp;     // kManyReaders: readers in several warps
};
constexpr uint16_t kManyReaders = 0xffff;

struct SharedSpan {
  size_t offset, bytes;
  const SharedVar* var;  // null: the dynamic shared memory
};

struct Launch;

// Per OS thread: the fibers, the shared-memory arena and its shadow, and the block it runs.
struct Worker {
  std::vector<Thread> threads;
  char* stacks = nullptr;
  size_t stack_count = 0;
  char* arena = nullptr;
  std::vector<Shadow> shadow;
  void* main_sp = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
  void* main_fake_stack = nullptr;
  // The block being run.
  const Launch* launch = nullptr;
  int nthreads = 0;
  std::vector<SharedSpan> spans;
  size_t static_bytes = 0, arena_used = 0;
  uint32_t interval = 0;  // the current barrier interval
  uint32_t warp_interval[32] = {};
  Thread* current = nullptr;  // the thread running now (null in the scheduler)
  std::string error;          // set when the block fails

  ~Worker() {
    if (stacks) munmap(stacks, stack_count * (kStackBytes + 4096));
    if (arena) munmap(arena, kArenaBytes);
  }
};

struct Launch {
  const KernelLaunch* kernel;
  std::string name;  // the kernel's function name, for messages
};

// The OS thread's worker (made on first use), the fiber running on it (null in the scheduler)
// and its shared-memory arena: the memory hooks read the last two on every access.
extern thread_local Worker* tls_worker;
extern __attribute__((tls_model("initial-exec"))) thread_local Thread* tls_thread;
extern __attribute__((tls_model("initial-exec"))) thread_local char* tls_arena;
Worker& worker();

// "fastdl::(anonymous namespace)::forward_kernel<float, 2>(...) file:line:column" for a
// program counter (with AddressSanitizer's symbolizer; the address without it).
std::string symbolize(const void* pc, const char* format = "%f %L");
std::string thread_string(const Thread& t);
std::string where_string(const Where& w);

// Runs one block of the launch on this OS thread's worker; returns its error ("" if none).
std::string run_block(Worker& w, const Launch& launch, uint3 block);

// Records the block's first error and leaves the fiber for good.
[[noreturn]] void fail_in_fiber(Worker& w, Thread& t, std::string message);

}  // namespace fastdl::cuda_sim::internal
