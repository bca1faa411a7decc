// cuda-sim's runtime (see cuda_sim.h): blocks of fibers, barriers and warp collectives, shared
// memory allocation, and the launch (the memory checks: cuda_sim_memory.cpp). Built only into
// libfastdl_cudasim (CMake FASTDL_CUDA_SIM=ON), not instrumented.
#include "fastdl/common/cuda_sim.h"
#include "fastdl/common/cuda_sim_state.h"

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
using namespace internal;  // NOLINT: the runtime owns the state

namespace {}  // namespace

// ---- the state of cuda_sim_state.h -------------------------------------------------------

namespace internal {

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

std::string symbolize(const void* pc, const char* format) {
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

}  // namespace internal

namespace {

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

}  // namespace

[[noreturn]] void internal::fail_in_fiber(Worker& w, Thread& t, std::string message) {
  if (w.error.empty()) w.error = std::move(message);
  t.wait = Wait::exited;
  yield(w, t, /*final=*/true);
  std::abort();  // never resumed
}

namespace {

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

}  // namespace

std::string internal::run_block(Worker& w, const Launch& launch, uint3 block) {
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

}  // namespace fastdl::cuda_sim
