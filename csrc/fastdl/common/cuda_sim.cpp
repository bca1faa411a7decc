// cuda-sim's runtime (see cuda_sim.h): blocks of fibers, barriers and warp collectives, shared
// memory with bounds and race checks, the memory-access hooks of the instrumented kernels, and
// the launch. Built only into libfastdl_cudasim (CMake FASTDL_CUDA_SIM=ON), not instrumented.
#include "fastdl/common/cuda_sim.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

FASTDL_SIM_TLS uint3 threadIdx;
FASTDL_SIM_TLS uint3 blockIdx;
FASTDL_SIM_TLS uint3 blockDim;
FASTDL_SIM_TLS uint3 gridDim;

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

// ---- fibers: a minimal x86-64 context switch -------------------------------------------------
// fastdl_sim_switch(save, load): saves the callee-saved registers and the FP control words on
// the current stack, stores the stack pointer in *save, switches to `load` and restores there.
// fastdl_sim_fiber_start: a new fiber's first return address; calls r13(r12).
extern "C" void fastdl_sim_switch(void** save, void* load);
extern "C" void fastdl_sim_fiber_start();
asm(R"(
  .text
  .globl fastdl_sim_switch
  .hidden fastdl_sim_switch
  .type fastdl_sim_switch,@function
fastdl_sim_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size fastdl_sim_switch,.-fastdl_sim_switch

  .globl fastdl_sim_fiber_start
  .hidden fastdl_sim_fiber_start
  .type fastdl_sim_fiber_start,@function
fastdl_sim_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size fastdl_sim_fiber_start,.-fastdl_sim_fiber_start
)");

namespace fastdl::cuda_sim {
namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kArenaBytes = 512 * 1024;  // dynamic + static shared memory, with red zones
constexpr size_t kRedZone = 256;
constexpr unsigned kFullMask = 0xffffffffu;

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

thread_local Worker* tls_worker = nullptr;
__attribute__((tls_model("initial-exec"))) thread_local Thread* tls_thread = nullptr;
__attribute__((tls_model("initial-exec"))) thread_local char* tls_arena = nullptr;
std::atomic<uint32_t> g_interval{1};

Worker& worker() {
  if (!tls_worker) {
    tls_worker = new Worker();  // lives as long as its OS thread (torch's pool threads persist)
    Worker& w = *tls_worker;
    w.arena = static_cast<char*>(
        mmap(nullptr, kArenaBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    TORCH_CHECK(w.arena != MAP_FAILED, "cuda-sim: cannot map shared memory");
    w.shadow.resize(kArenaBytes);
    tls_arena = w.arena;
  }
  return *tls_worker;
}

struct Launch {
  const KernelLaunch* kernel;
  std::string name;  // the kernel's function name, for messages
};

// "fastdl::(anonymous namespace)::forward_kernel<float, 2>(...) file:line:column" for a
// program counter (with AddressSanitizer's symbolizer; the address without it).
std::string symbolize(const void* pc, const char* format = "%f %L") {
  if (!pc) return "?";
  if (__sanitizer_symbolize_pc) {
    char buf[1024] = {0};
    __sanitizer_symbolize_pc(const_cast<void*>(pc), format, buf, sizeof(buf));
    if (buf[0]) return buf;
  }
  std::ostringstream s;
  s << pc;
  return s.str();
}

std::string where_string(const Where& w) {
  std::ostringstream s;
  s << w.file_name() << ":" << w.line() << " (" << w.function_name() << ")";
  return s.str();
}

std::string thread_string(const Thread& t) {
  std::ostringstream s;
  s << "thread (" << t.idx.x << "," << t.idx.y << "," << t.idx.z << ") [warp " << t.warp << " lane "
    << t.lane << "]";
  return s.str();
}

std::string block_string() {
  std::ostringstream s;
  s << "block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << ")";
  return s.str();
}

// ---- switching ----------------------------------------------------------------------------------

void enter_fiber(Worker& w, Thread& t) {
  w.current = &t;
  tls_thread = &t;
  threadIdx = t.idx;
  if (__sanitizer_start_switch_fiber)
    __sanitizer_start_switch_fiber(&w.main_fake_stack, t.stack, kStackBytes);
  fastdl_sim_switch(&w.main_sp, t.sp);
  if (__sanitizer_finish_switch_fiber)
    __sanitizer_finish_switch_fiber(w.main_fake_stack, nullptr, nullptr);
  w.current = nullptr;
  tls_thread = nullptr;
}

// From a fiber back to the scheduler; returns when the scheduler resumes this thread.
void yield(Worker& w, Thread& t, bool final = false) {
  if (__sanitizer_start_switch_fiber) {
    __sanitizer_start_switch_fiber(final ? nullptr : &t.fake_stack, w.main_stack_bottom,
                                   w.main_stack_size);
  }
  fastdl_sim_switch(&t.sp, w.main_sp);
  if (__sanitizer_finish_switch_fiber) {
    __sanitizer_finish_switch_fiber(t.fake_stack, &w.main_stack_bottom, &w.main_stack_size);
  }
}

// Records the block's first error and leaves the fiber for good.
[[noreturn]] void fail_in_fiber(Worker& w, Thread& t, std::string message) {
  if (w.error.empty()) w.error = std::move(message);
  t.wait = Wait::exited;
  yield(w, t, /*final=*/true);
  std::abort();  // never resumed
}

struct SchedulerError {
  std::string message;
};

extern "C" void fastdl_sim_fiber_main(Thread* t) {
  Worker& w = *tls_worker;
  if (__sanitizer_finish_switch_fiber) {
    __sanitizer_finish_switch_fiber(nullptr, &w.main_stack_bottom, &w.main_stack_size);
  }
  try {
    w.launch->kernel->body(w.launch->kernel->context);
  } catch (const std::exception& e) {
    fail_in_fiber(w, *t, std::string("exception in device code: ") + e.what());
  }
  t->wait = Wait::exited;
  yield(w, *t, /*final=*/true);
  std::abort();
}

void prepare_stacks(Worker& w, int n) {
  if (w.stack_count < static_cast<size_t>(n)) {
    if (w.stacks) munmap(w.stacks, w.stack_count * (kStackBytes + 4096));
    const size_t bytes = static_cast<size_t>(kMaxThreads) * (kStackBytes + 4096);
    w.stacks = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    TORCH_CHECK(w.stacks != MAP_FAILED, "cuda-sim: cannot map fiber stacks");
    w.stack_count = kMaxThreads;
    for (int i = 0; i < kMaxThreads; ++i) {  // a guard page below each stack
      mprotect(w.stacks + i * (kStackBytes + 4096), 4096, PROT_NONE);
    }
    w.threads.resize(kMaxThreads);
  }
}

void start_fiber(Worker& w, Thread& t, int i) {
  t.stack = w.stacks + i * (kStackBytes + 4096) + 4096;
  auto* top = reinterpret_cast<uint64_t*>(t.stack + kStackBytes);
  // Frame read by fastdl_sim_switch: [fpucw, mxcsr] r15 r14 r13 r12 rbx rbp, return address.
  uint64_t* sp = top - 2 - 1 - 6 - 2;  // the return address slot is 8 mod 16, as a call leaves it
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = fpucw;
  sp[1] = mxcsr;
  sp[2] = 0;                                                    // r15
  sp[3] = 0;                                                    // r14
  sp[4] = reinterpret_cast<uint64_t>(&fastdl_sim_fiber_main);   // r13
  sp[5] = reinterpret_cast<uint64_t>(&t);                       // r12
  sp[6] = 0;                                                    // rbx
  sp[7] = 0;                                                    // rbp
  sp[8] = reinterpret_cast<uint64_t>(&fastdl_sim_fiber_start);  // return address
  t.sp = sp;
  t.fake_stack = nullptr;
}

// ---- warp collectives and barriers ---------------------------------------------------------

bool same_call(const Thread& a, const Thread& b) {
  return a.op == b.op && a.mask == b.mask && a.where.line() == b.where.line() &&
         a.where.column() == b.where.column() &&
         std::strcmp(a.where.file_name(), b.where.file_name()) == 0;
}

std::string describe_wait(const Thread& t) {
  switch (t.wait) {
    case Wait::exited:
      return "has exited";
    case Wait::barrier:
      return "waits at __syncthreads() at " + where_string(t.where);
    case Wait::warp: {
      std::ostringstream s;
      s << "waits at " << t.op << "(mask 0x" << std::hex << t.mask << std::dec << ") at "
        << where_string(t.where);
      return s.str();
    }
    default:
      return "runs";
  }
}

// Completes the warp collectives whose lanes have all arrived; raises SchedulerError for one
// that cannot complete. Returns whether any completed.
bool resolve_warp_collectives(Worker& w) {
  bool progressed = false;
  const int warps = (w.nthreads + 31) / 32;
  for (int warp = 0; warp < warps; ++warp) {
    Thread* lanes = &w.threads[warp * 32];
    const int present = std::min(32, w.nthreads - warp * 32);
    unsigned done = 0;
    for (int l = 0; l < present; ++l) {
      Thread& t = lanes[l];
      if (t.wait != Wait::warp || ((done >> l) & 1u)) continue;
      const unsigned mask = t.mask;
      std::ostringstream why;
      if (!((mask >> l) & 1u)) {
        why << thread_string(t) << " calls " << t.op << " with a mask (0x" << std::hex << mask
            << ") that leaves out its own lane";
        throw SchedulerError{why.str() + " at " + where_string(t.where)};
      }
      unsigned arrived = 0;
      for (int m = 0; m < 32; ++m) {
        if (!((mask >> m) & 1u)) continue;
        if (m >= present) {
          why << thread_string(t) << " " << describe_wait(t) << ", whose mask names lane " << m
              << ", which the block does not have (" << w.nthreads << " threads)";
          throw SchedulerError{why.str()};
        }
        Thread& o = lanes[m];
        if (o.wait == Wait::exited && t.exited_ok) continue;
        if (o.wait != Wait::warp || !same_call(o, t)) {
          why << "divergent warp collective: " << thread_string(t) << " " << describe_wait(t)
              << ", but " << thread_string(o) << ", named in its mask, " << describe_wait(o);
          throw SchedulerError{why.str()};
        }
        arrived |= 1u << m;
      }
      if (t.complete) {
        void* data[32] = {nullptr};
        for (int m = 0; m < 32; ++m) {
          if ((arrived >> m) & 1u) data[m] = lanes[m].data;
        }
        t.complete(data, arrived, t.info);
      }
      if (std::strcmp(t.op, "__syncwarp") == 0) w.warp_interval[warp] = g_interval.fetch_add(1);
      for (int m = 0; m < 32; ++m) {
        if ((arrived >> m) & 1u) lanes[m].wait = Wait::running;
      }
      done |= arrived;
      progressed = true;
    }
  }
  return progressed;
}

// Releases the block's barrier when every live thread waits at the same __syncthreads().
bool resolve_barrier(Worker& w) {
  Thread* first = nullptr;
  int live = 0;
  for (int i = 0; i < w.nthreads; ++i) {
    Thread& t = w.threads[i];
    if (t.wait == Wait::exited) continue;
    ++live;
    if (t.wait != Wait::barrier) {
      // Only reachable when a collective is stuck, which resolve_warp_collectives reports.
      throw SchedulerError{"deadlock: " + thread_string(t) + " " + describe_wait(t)};
    }
    if (!first) {
      first = &t;
    } else if (t.where.line() != first->where.line() ||
               std::strcmp(t.where.file_name(), first->where.file_name()) != 0) {
      throw SchedulerError{
          "__syncthreads() not reached by every thread of the block at the same place: " +
          thread_string(*first) + " " + describe_wait(*first) + ", " + thread_string(t) + " " +
          describe_wait(t)};
    }
  }
  if (live == 0) return false;
  w.interval = g_interval.fetch_add(1);
  for (int i = 0; i < w.nthreads; ++i) {
    if (w.threads[i].wait == Wait::barrier) w.threads[i].wait = Wait::running;
  }
  return true;
}

// Runs one block to completion; returns its error ("" when it ran through).
std::string run_block(Worker& w, const Launch& launch, uint3 block) {
  const KernelLaunch& k = *launch.kernel;
  const int n = static_cast<int>(k.block.x * k.block.y * k.block.z);
  w.launch = &launch;
  w.nthreads = n;
  w.error.clear();
  w.spans.clear();
  w.static_bytes = 0;
  // The dynamic shared memory first, filled with 0xff (NaN for floats) as stale data would be.
  w.spans.push_back({0, k.dynamic_shared_bytes, nullptr});
  std::memset(w.arena, 0xff, k.dynamic_shared_bytes);
  w.arena_used = k.dynamic_shared_bytes + kRedZone;
  w.interval = g_interval.fetch_add(1);
  for (auto& wi : w.warp_interval) wi = g_interval.fetch_add(1);
  blockIdx = block;
  blockDim = uint3{k.block.x, k.block.y, k.block.z};
  gridDim = uint3{k.grid.x, k.grid.y, k.grid.z};
  prepare_stacks(w, n);
  for (int i = 0; i < n; ++i) {
    Thread& t = w.threads[i];
    t = Thread{};
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.idx = uint3{static_cast<unsigned>(i % k.block.x),
                  static_cast<unsigned>((i / k.block.x) % k.block.y),
                  static_cast<unsigned>(i / (k.block.x * k.block.y))};
    start_fiber(w, t, i);
  }
  try {
    for (;;) {
      bool ran = false;
      for (int i = 0; i < n; ++i) {
        Thread& t = w.threads[i];
        if (t.wait != Wait::running) continue;
        enter_fiber(w, t);
        ran = true;
        if (!w.error.empty()) return w.error;
      }
      if (resolve_warp_collectives(w)) continue;
      if (!resolve_barrier(w)) {
        if (!ran) break;  // every thread has exited
      }
    }
  } catch (const SchedulerError& e) {
    return e.message;
  }
  return w.error;
}

}  // namespace

// ---- the device-side API ---------------------------------------------------------------------

int lane_id() { return tls_thread->lane; }

void syncthreads(Where where) {
  Worker& w = *tls_worker;
  Thread& t = *tls_thread;
  t.wait = Wait::barrier;
  t.where = where;
  yield(w, t);
}

void warp_collective(const char* name, Where where, unsigned mask, void* data,
                     WarpComplete complete, const void* info, bool exited_lanes_ok) {
  Worker& w = *tls_worker;
  Thread& t = *tls_thread;
  t.wait = Wait::warp;
  t.where = where;
  t.op = name;
  t.mask = mask;
  t.data = data;
  t.complete = complete;
  t.info = info;
  t.exited_ok = exited_lanes_ok;
  yield(w, t);
}

void device_error(const char* what, Where where) {
  std::string message = std::string(what) + " at " + where_string(where);
  if (tls_thread) {
    Thread& t = *tls_thread;
    fail_in_fiber(*tls_worker, t, thread_string(t) + ": " + message);
  }
  throw SchedulerError{message};  // from a collective's completion, in the scheduler
}

void complete_shuffle(void* const* lanes, unsigned mask, const void* info_ptr) {
  const auto& info = *static_cast<const ShuffleInfo*>(info_ptr);
  const int width = info.width;
  for (int i = 0; i < 32; ++i) {
    if (!((mask >> i) & 1u)) continue;
    auto* lane = static_cast<ShuffleLane*>(lanes[i]);
    const int arg = lane->arg;
    const int segment = i / width * width;
    int src = i;
    switch (info.kind) {
      case Shuffle::index:
        src = segment + (arg % width + width) % width;
        break;
      case Shuffle::up:
        src = i - segment >= arg ? i - arg : i;
        break;
      case Shuffle::down:
        src = i - segment + arg < width ? i + arg : i;
        break;
      case Shuffle::xor_: {
        const int x = i ^ arg;
        src = (x / width) > (i / width) || x > 31 ? i : x;
        break;
      }
    }
    if (!((mask >> src) & 1u)) {
      std::ostringstream s;
      s << "lane " << i << " reads lane " << src << ", which is not in the shuffle's mask (0x"
        << std::hex << mask << ")";
      device_error(s.str().c_str(), info.where);
    }
    lane->result = static_cast<ShuffleLane*>(lanes[src])->value;
  }
}

void* dynamic_shared_memory() { return tls_worker->arena; }

void* shared_variable(const SharedVar* var, size_t bytes, size_t align) {
  Worker& w = *tls_worker;
  for (const auto& s : w.spans) {
    if (s.var == var) return w.arena + s.offset;
  }
  // A fresh variable: aligned to `align` but not to twice that when possible, so code that
  // relies on more alignment than it declared fails here as it might on the GPU.
  size_t offset = (w.arena_used + align - 1) / align * align;
  if (align < 128 && offset % (2 * align) == 0) offset += align;
  const auto& k = *w.launch->kernel;
  const size_t static_total = w.static_bytes + bytes;
  std::ostringstream why;
  if (static_total > 48 * 1024) {
    why << "__shared__ " << var->name << " (" << var->file << ":" << var->line
        << ") brings the block's static "
        << "shared memory to " << static_total << " bytes, more than the 49152 allowed";
  } else if (static_total + k.dynamic_shared_bytes > k.shared_limit) {
    why << "__shared__ " << var->name << " (" << var->file << ":" << var->line
        << "): " << static_total << " bytes of static and " << k.dynamic_shared_bytes
        << " of dynamic shared memory exceed the " << k.shared_limit << " the launch may use";
  } else if (offset + bytes + kRedZone > kArenaBytes) {
    why << "cuda-sim: shared memory arena exhausted";
  }
  if (!why.str().empty()) fail_in_fiber(w, *tls_thread, why.str());
  w.spans.push_back({offset, bytes, var});
  w.static_bytes = static_total;
  w.arena_used = offset + bytes + kRedZone;
  std::memset(w.arena + offset, 0xff, bytes);
  return w.arena + offset;
}

// ---- memory checks ---------------------------------------------------------------------------

namespace {

std::string span_name(const SharedSpan& s) {
  if (!s.var) return "the dynamic shared memory (" + std::to_string(s.bytes) + " bytes)";
  return std::string("__shared__ ") + s.var->name + " (" + s.var->file + ":" +
         std::to_string(s.var->line) + ", " + std::to_string(s.bytes) + " bytes)";
}

[[noreturn]] void shared_out_of_bounds(Worker& w, Thread& t, size_t offset, size_t size, bool write,
                                       const void* pc) {
  std::ostringstream s;
  s << "out-of-bounds shared memory " << (write ? "write" : "read") << " of " << size
    << " bytes at offset " << offset;
  const SharedSpan* near = nullptr;
  for (const auto& sp : w.spans) {
    if (sp.offset <= offset && (!near || sp.offset > near->offset)) near = &sp;
  }
  if (near) s << ", " << offset - near->offset << " bytes from the start of " << span_name(*near);
  s << ", by " << thread_string(t) << " at " << symbolize(pc);
  if (__sanitizer_print_stack_trace) __sanitizer_print_stack_trace();
  fail_in_fiber(w, t, s.str());
}

[[noreturn]] void shared_race(Worker& w, Thread& t, size_t offset, bool write, const void* pc,
                              bool other_write, int other, const void* other_pc) {
  std::ostringstream s;
  s << "shared memory race at offset " << offset;
  for (const auto& sp : w.spans) {
    if (sp.offset <= offset && offset < sp.offset + sp.bytes) s << " (" << span_name(sp) << ")";
  }
  s << ": " << thread_string(t) << " " << (write ? "writes" : "reads") << " it at " << symbolize(pc)
    << " and ";
  if (other == kManyReaders) {
    s << "other threads read it";
  } else {
    s << thread_string(w.threads[other]) << " " << (other_write ? "wrote" : "read") << " it";
  }
  s << " at " << symbolize(other_pc) << ", with no __syncthreads()/__syncwarp() between";
  fail_in_fiber(w, t, s.str());
}

void check_shared(Worker& w, Thread& t, size_t offset, size_t size, bool write, const void* pc) {
  const SharedSpan* span = nullptr;
  for (const auto& s : w.spans) {
    if (offset >= s.offset && offset + size <= s.offset + s.bytes) {
      span = &s;
      break;
    }
  }
  if (!span) shared_out_of_bounds(w, t, offset, size, write, pc);
  const uint32_t interval = w.interval;
  const uint32_t winterval = w.warp_interval[t.warp];
  const auto me = static_cast<uint16_t>(t.linear);
  const auto my_warp = static_cast<uint16_t>(t.warp);
  for (size_t b = offset; b < offset + size; ++b) {
    Shadow& sh = w.shadow[b];
    // An earlier access in this barrier interval by another thread conflicts, unless both are
    // in one warp and a __syncwarp() separates them.
    const bool w_conflict = sh.write_interval == interval && sh.writer != me &&
                            !(sh.writer / 32 == my_warp && sh.write_warp_interval != winterval);
    if (w_conflict) shared_race(w, t, b, write, pc, true, sh.writer, sh.write_pc);
    if (write) {
      const bool r_conflict = sh.read_interval == interval && sh.reader != me &&
                              !(sh.reader_warp == my_warp && sh.read_warp_interval != winterval);
      if (r_conflict) shared_race(w, t, b, true, pc, false, sh.reader, sh.read_pc);
      sh.writer = me;
      sh.write_interval = interval;
      sh.write_warp_interval = winterval;
      sh.write_pc = pc;
      sh.read_interval = 0;
    } else {
      // Readers in this warp before its last __syncwarp() are ordered before this read and
      // before any later access from the warp; one from another warp conflicts with this read
      // anyway. So this read replaces them.
      const bool ordered_before = sh.reader_warp == my_warp && sh.read_warp_interval != winterval;
      if (sh.read_interval != interval || ordered_before) {
        sh.reader = me;
        sh.reader_warp = my_warp;
      } else {
        if (sh.reader != me) sh.reader = kManyReaders;
        if (sh.reader_warp != my_warp) sh.reader_warp = kManyReaders;
      }
      sh.read_interval = interval;
      sh.read_warp_interval = winterval;
      sh.read_pc = pc;
    }
  }
}

[[noreturn]] void global_error(uintptr_t addr, size_t size, bool write, const void* pc) {
  std::ostringstream s;
  s << "out-of-bounds or freed global memory " << (write ? "write" : "read") << " of " << size
    << " bytes at 0x" << std::hex << addr << std::dec << " at " << symbolize(pc)
    << " (AddressSanitizer's description above)";
  fprintf(stderr, "cuda-sim: %s\n", s.str().c_str());
  if (__asan_describe_address) __asan_describe_address(reinterpret_cast<void*>(addr));
  if (__sanitizer_print_stack_trace) __sanitizer_print_stack_trace();
  if (tls_thread) {
    Thread& t = *tls_thread;
    fail_in_fiber(*tls_worker, t, thread_string(t) + ": " + s.str());
  }
  TORCH_CHECK(false, "cuda-sim: ", s.str());
}

// AddressSanitizer's shadow (x86-64 Linux: shadow = (addr >> 3) + 0x7fff8000): nonzero bytes
// mark red zones and freed memory.
inline bool asan_poisoned(uintptr_t addr, size_t size) {
  const auto* shadow = reinterpret_cast<const int8_t*>((addr >> 3) + 0x7fff8000);
  const uintptr_t last = addr + size - 1;
  for (uintptr_t g = addr >> 3; g <= last >> 3; ++g) {
    const int8_t k = shadow[g - (addr >> 3)];
    if (k == 0) continue;
    const uintptr_t hi = std::min<uintptr_t>(last, (g << 3) + 7);
    if (k < 0 || static_cast<int8_t>(hi & 7) >= k) return true;
  }
  return false;
}

const bool g_asan = __asan_region_is_poisoned != nullptr;

inline void check_access(uintptr_t addr, size_t size, bool write, const void* pc) {
  if (size == 0) return;
  if (Thread* t = tls_thread) {
    const uintptr_t offset = addr - reinterpret_cast<uintptr_t>(tls_arena);
    if (offset < kArenaBytes) {
      check_shared(*tls_worker, *t, offset, size, write, pc);
      return;
    }
  }
  if (g_asan && asan_poisoned(addr, size) &&
      __asan_region_is_poisoned(reinterpret_cast<void*>(addr), size)) {
    global_error(addr, size, write, pc);
  }
}

}  // namespace
}  // namespace fastdl::cuda_sim

// The instrumentation of the emulated kernels (gcc -fsanitize=kernel-address with outlined
// checks): every load and store of the .cu files calls these first.
#define FASTDL_SIM_HOOK(kind, size, write)                                             \
  extern "C" __attribute__((visibility("hidden"))) void __asan_##kind##size##_noabort( \
      uintptr_t a) {                                                                   \
    fastdl::cuda_sim::check_access(a, size, write, __builtin_return_address(0));       \
  }
FASTDL_SIM_HOOK(load, 1, false)
FASTDL_SIM_HOOK(load, 2, false)
FASTDL_SIM_HOOK(load, 4, false)
FASTDL_SIM_HOOK(load, 8, false)
FASTDL_SIM_HOOK(load, 16, false)
FASTDL_SIM_HOOK(store, 1, true)
FASTDL_SIM_HOOK(store, 2, true)
FASTDL_SIM_HOOK(store, 4, true)
FASTDL_SIM_HOOK(store, 8, true)
FASTDL_SIM_HOOK(store, 16, true)
#undef FASTDL_SIM_HOOK
extern "C" __attribute__((visibility("hidden"))) void __asan_loadN_noabort(uintptr_t a, size_t n) {
  fastdl::cuda_sim::check_access(a, n, false, __builtin_return_address(0));
}
extern "C" __attribute__((visibility("hidden"))) void __asan_storeN_noabort(uintptr_t a, size_t n) {
  fastdl::cuda_sim::check_access(a, n, true, __builtin_return_address(0));
}
extern "C" __attribute__((visibility("hidden"))) void __asan_handle_no_return() {}
// Initialisation-order checking is AddressSanitizer's, not ours: nothing to do.
extern "C" __attribute__((visibility("hidden"))) void __asan_before_dynamic_init(const char*) {}
extern "C" __attribute__((visibility("hidden"))) void __asan_after_dynamic_init() {}

// ---- host side -------------------------------------------------------------------------------

namespace fastdl::cuda_sim {

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
        << ") beyond the device's limits (" << props.maxGridSize[0] << ", "
        << props.maxGridSize[1] << ", " << props.maxGridSize[2] << ")";
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
