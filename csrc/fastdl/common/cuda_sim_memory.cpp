// cuda-sim's memory checks: shared-memory bounds and races between barriers, global memory
// against AddressSanitizer's shadow, and the hooks every load and store of the instrumented
// kernels calls. Built only into libfastdl_cudasim, not instrumented.
#include "fastdl/common/cuda_sim_state.h"

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <string>

namespace fastdl::cuda_sim {
using namespace internal;  // NOLINT: the checks read the runtime's state

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
