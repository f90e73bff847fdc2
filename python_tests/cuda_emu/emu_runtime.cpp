// The fiber scheduler behind emu.h: runs a grid block by block, every CUDA thread of a block as a
// fiber, and turns what would hang or be undefined on a GPU into a launch error.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

namespace emu {
namespace {

// ---- stack switching. On x86-64 a hand-written switch: glibc's swapcontext also saves and restores the
// signal mask, a system call per switch, and the emulation switches millions of times. Elsewhere ucontext.
#if defined(__x86_64__) && !defined(PVDM_EMU_UCONTEXT)  // PVDM_EMU_UCONTEXT: test the portable path
extern "C" void pvdm_emu_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores the stack
// pointer in *save_sp (rdi), switches to load_sp (rsi) and restores what that stack saved.
asm(R"(
    .text
    .p2align 4
    .globl pvdm_emu_switch
    .hidden pvdm_emu_switch
    .type pvdm_emu_switch, @function
pvdm_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size pvdm_emu_switch, .-pvdm_emu_switch
)");

struct Context {
  void* sp = nullptr;
};

// A stack that pvdm_emu_switch "returns" into `entry`, entered as if called (rsp = 8 mod 16).
void context_init(Context& c, unsigned char* stack, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15));
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  top[-1] = 0;                                   // entry's return address: it never returns
  top[-2] = reinterpret_cast<uint64_t>(entry);  // popped by pvdm_emu_switch's ret
  for (int r = 3; r <= 8; ++r) top[-r] = 0;      // rbp, rbx, r12-r15
  top[-9] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
  c.sp = top - 9;
}

inline void context_switch(Context& from, Context& to) { pvdm_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};

void context_init(Context& c, unsigned char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// AddressSanitizer builds (the memcheck test) must be told about every stack switch, or they report
// the fibers' frames as errors; elsewhere these are no-ops.
inline void switch_start(void** fake_stack, const void* bottom, size_t size) {
#if EMU_ASAN
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}
inline void switch_finish(void* fake_stack, const void** bottom_old, size_t* size_old) {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, bottom_old, size_old);
#else
  (void)fake_stack, (void)bottom_old, (void)size_old;
#endif
}
// Frames left on a fiber stack that never returned (fiber_main's, an abandoned block's) stay poisoned
// in an AddressSanitizer build; the stack is reused by the next block, so clear them.
inline void unpoison(void* p, size_t n) {
#if EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

constexpr size_t kStackBytes = 256 * 1024;
// Shared memory of a block, static and dynamic together, without the
// cudaFuncAttributeMaxDynamicSharedMemorySize opt-in.
constexpr size_t kDefaultShared = 48 * 1024;
// With the opt-in: the most a block may hold (static + the opt-in value) on sm_80 (163 KB), the smaller
// of the two architectures the kernels are built for (sm_90: 227 KB).
constexpr size_t kMaxSharedOptin = 163 * 1024;
constexpr unsigned kMaxThreads = 1024;
// Top of each fiber stack cleared of AddressSanitizer poison per block: fiber_main's frame, the only
// one a finished fiber leaves behind.
constexpr size_t kUnpoisonBytes = 16 * 1024;

enum class State { kReady, kBarrier, kShuffle, kDone };

struct Fiber {
  Context ctx;
  unsigned char* stack = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's, across a switch
  uint3 tid;
  State state = State::kReady;
  Shuffle kind = Shuffle::kXor;
  unsigned mask = 0;
  uint64_t bits = 0, result = 0;
  int arg = 0;
};

struct Block {
  dim3 grid, block;
  uint3 bid{0, 0, 0};
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  Context scheduler;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_bottom = nullptr;  // the scheduler's stack, as AddressSanitizer reports it
  size_t scheduler_size = 0;
  unsigned char* shared = nullptr;
  const void* kernel = nullptr;
  size_t dynamic = 0;                // the launch's dynamic shared memory
  long long optin = -1;              // the kernel's cudaFuncSetAttribute opt-in, -1 without one
  std::vector<const void*> statics;  // the static __shared__ variables reached in this launch
  std::string error;                 // set while a block runs: the launch stops
  cudaError_t error_code = cudaErrorLaunchFailure;  // with `error`
};

thread_local Block* running = nullptr;
thread_local cudaError_t pending = cudaSuccess;
thread_local std::string message;

std::mutex attr_mutex;
std::map<const void*, int>& max_dynamic() {
  static std::map<const void*, int> m;
  return m;
}
// Per kernel, the static __shared__ variables it reached so far and their bytes (under attr_mutex).
std::map<const void*, std::map<const void*, size_t>>& static_vars() {
  static std::map<const void*, std::map<const void*, size_t>> m;
  return m;
}
size_t static_bytes_locked(const void* kernel) {
  size_t total = 0;
  const auto it = static_vars().find(kernel);
  if (it != static_vars().end())
    for (const auto& v : it->second) total += v.second;
  return total;
}

// Why CUDA refuses a kernel with `stat` bytes of static shared memory launched with `dynamic` bytes of
// dynamic shared memory, under the opt-in `optin` (-1: none); empty when it does not.
std::string static_shared_error(size_t stat, size_t dynamic, long long optin) {
  if (stat == 0) return "";
  const std::string s = std::to_string(stat);
  if (optin < 0) {
    if (stat + dynamic <= kDefaultShared) return "";
    return "static shared memory " + s + " B + dynamic " + std::to_string(dynamic) + " B = " +
           std::to_string(stat + dynamic) + " B over CUDA's limit of " + std::to_string(kDefaultShared) +
           " B per block without the cudaFuncAttributeMaxDynamicSharedMemorySize opt-in (cudaFuncSetAttribute)";
  }
  if (stat + static_cast<size_t>(optin) <= kMaxSharedOptin) return "";
  return "static shared memory " + s + " B + the cudaFuncSetAttribute opt-in of " + std::to_string(optin) +
         " B = " + std::to_string(stat + static_cast<size_t>(optin)) + " B over the " +
         std::to_string(kMaxSharedOptin) + " B a block may hold (sm_80): a GPU refuses that cudaFuncSetAttribute call";
}

Block& block_or_die() {
  if (!running) {
    std::fputs("emu: a device builtin was used outside a kernel\n", stderr);
    std::abort();
  }
  return *running;
}

void fiber_main() {
  Block& b = *running;
  switch_finish(nullptr, &b.scheduler_bottom, &b.scheduler_size);
  (*b.body)();
  b.current->state = State::kDone;
  switch_start(nullptr, b.scheduler_bottom, b.scheduler_size);  // this fiber ends: no fake stack to keep
  context_switch(b.current->ctx, b.scheduler);                   // a finished fiber is never resumed
}

void yield(State s) {
  Block& b = block_or_die();
  Fiber* f = b.current;
  f->state = s;
  switch_start(&f->fake_stack, b.scheduler_bottom, b.scheduler_size);
  context_switch(f->ctx, b.scheduler);
  switch_finish(f->fake_stack, &b.scheduler_bottom, &b.scheduler_size);
}

[[noreturn]] void fail_in_kernel(const std::string& why) {
  Block& b = block_or_die();
  b.error = why;
  yield(State::kShuffle);  // the scheduler sees the error and abandons the block
  std::abort();
}

std::string tid_str(const uint3& t) {
  return "(" + std::to_string(t.x) + ", " + std::to_string(t.y) + ", " + std::to_string(t.z) + ")";
}

std::string lanes_str(const std::vector<int>& lanes) {
  std::string s;
  for (size_t i = 0; i < lanes.size() && i < 8; ++i) s += (i ? ", " : "") + std::to_string(lanes[i]);
  if (lanes.size() > 8) s += ", ... (" + std::to_string(lanes.size()) + ")";
  return s;
}

const char* shuffle_name(Shuffle k) {
  switch (k) {
    case Shuffle::kXor: return "__shfl_xor_sync";
    case Shuffle::kDown: return "__shfl_down_sync";
    case Shuffle::kUp: return "__shfl_up_sync";
  }
  return "?";
}

// Completes the shuffle of the warp starting at thread w0 if all its 32 lanes wait at it: 1 when it
// did, 0 when lanes are still running or at a barrier, -1 (with b.error) when the shuffle can never
// complete correctly.
int resolve_warp(Block& b, int w0) {
  const int n = static_cast<int>(b.fibers.size());
  const int lanes = std::min(32, n - w0);
  std::vector<int> waiting, exited;
  bool others = false;  // lanes still running or at a barrier
  for (int l = 0; l < lanes; ++l) {
    const State s = b.fibers[w0 + l].state;
    if (s == State::kShuffle) waiting.push_back(l);
    if (s == State::kDone) exited.push_back(l);
    if (s == State::kBarrier || s == State::kReady) others = true;
  }
  if (waiting.empty()) return 0;
  const Fiber& first = b.fibers[w0 + waiting[0]];
  const std::string where = std::string(shuffle_name(first.kind)) + " in warp " + std::to_string(w0 / 32);
  if (lanes < 32) {
    b.error = where + ": the warp has only " + std::to_string(lanes) + " threads (block of " + std::to_string(n) +
              ") but the mask names 32 lanes";
    return -1;
  }
  if (!exited.empty()) {
    b.error = where + ": lanes " + lanes_str(exited) + " exited, but the full mask waits for them";
    return -1;
  }
  if (others) return 0;  // a deadlock if they wait at a barrier: decided by the caller
  for (int l = 0; l < 32; ++l) {
    const Fiber& f = b.fibers[w0 + l];
    if (f.mask != 0xffffffffu) {
      b.error = where + ": lane " + std::to_string(l) + " passed mask " + std::to_string(f.mask) +
                "; only full-warp shuffles are emulated";
      return -1;
    }
    if (f.kind != first.kind) {
      b.error = where + ": lane " + std::to_string(l) + " is at " + shuffle_name(f.kind) + " instead";
      return -1;
    }
  }
  for (int l = 0; l < 32; ++l) {
    Fiber& f = b.fibers[w0 + l];
    int src = l;
    switch (f.kind) {
      case Shuffle::kXor: src = l ^ f.arg; break;
      case Shuffle::kDown: src = l + f.arg; break;
      case Shuffle::kUp: src = l - f.arg; break;
    }
    f.result = (src >= 0 && src < 32) ? b.fibers[w0 + src].bits : f.bits;
  }
  for (int l = 0; l < 32; ++l) b.fibers[w0 + l].state = State::kReady;
  return 1;
}

// Every warp's shuffle that can complete; false (with b.error) on one that never can.
bool resolve_shuffles(Block& b, bool& released) {
  released = false;
  for (int w0 = 0; w0 < static_cast<int>(b.fibers.size()); w0 += 32) {
    const int r = resolve_warp(b, w0);
    if (r < 0) return false;
    released = released || r > 0;
  }
  return true;
}

// The order in which the runnable fibers of a block run, from PVDM_EMU_ORDER: "forward" (rounds in thread
// index order, the default), "reverse", or "shuffle[:SEED]" (one pseudo-random runnable thread at a
// time, warps completing their shuffles as soon as they can). Results that depend on it reveal a
// missing barrier.
struct Order {
  enum Kind { kForward, kReverse, kShuffle } kind = kForward;
  uint64_t state = 0x9e3779b97f4a7c15ull;

  static Order from_env() {
    Order o;
    const char* e = std::getenv("PVDM_EMU_ORDER");
    const std::string v = e ? e : "";
    if (v == "reverse") o.kind = kReverse;
    if (v.rfind("shuffle", 0) == 0) {
      o.kind = kShuffle;
      if (v.size() > 8 && v[7] == ':') o.state ^= std::strtoull(v.c_str() + 8, nullptr, 10) * 0xbf58476d1ce4e5b9ull;
    }
    return o;
  }

  uint64_t next() {  // xorshift64*
    state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
  }

  // idx = 0 .. n-1 in this order's sequence (forward or reverse).
  void arrange(std::vector<int>& idx) const {
    const int n = static_cast<int>(idx.size());
    for (int i = 0; i < n; ++i) idx[i] = kind == kReverse ? n - 1 - i : i;
  }

  void permute(std::vector<int>& idx) {
    for (int i = static_cast<int>(idx.size()) - 1; i > 0; --i) std::swap(idx[i], idx[static_cast<int>(next() % (i + 1))]);
  }
};

thread_local Order order_state;
thread_local std::string order_setting;

// Runs one block to its end. False (with b.error) when it cannot finish.
bool run_block(Block& b, unsigned char* stacks, size_t page, size_t smem_bytes, Order& order) {
  const unsigned bx = b.block.x, by = b.block.y;
  const int n = static_cast<int>(b.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.state = State::kReady;
    const unsigned u = static_cast<unsigned>(i);
    f.tid = uint3{u % bx, (u / bx) % by, u / (bx * by)};
    f.stack = stacks + static_cast<size_t>(i) * kStackBytes + page;  // above its guard page
    f.stack_size = kStackBytes - page;
    f.fake_stack = nullptr;
    unpoison(f.stack + f.stack_size - kUnpoisonBytes, kUnpoisonBytes);
    context_init(f.ctx, f.stack, f.stack_size, fiber_main);
  }
  std::memset(b.shared, 0xff, smem_bytes);  // NaN floats: reads before writes show up
  const auto run = [&](Fiber& f) {
    b.current = &f;
    switch_start(&b.scheduler_fake_stack, f.stack, f.stack_size);
    context_switch(b.scheduler, f.ctx);
    switch_finish(b.scheduler_fake_stack, nullptr, nullptr);
    return b.error.empty();
  };
  std::vector<int> sequence(n), ready;
  for (;;) {
    if (order.kind == Order::kShuffle) {
      // A random warp runs (its ready lanes in random order, its shuffle completing as soon as all lanes
      // arrive) and usually goes on running, so that a warp can get far ahead of the others between
      // barriers, as it may on a GPU; then another random warp.
      for (;;) {
        ready.clear();
        for (int w0 = 0; w0 < n; w0 += 32)
          for (int l = w0; l < std::min(n, w0 + 32); ++l)
            if (b.fibers[l].state == State::kReady) {
              ready.push_back(w0);
              break;
            }
        if (ready.empty()) break;
        const int w0 = ready[order.next() % ready.size()];
        for (int r = 1; r > 0 && order.next() % 8 != 0;) {
          sequence.clear();
          for (int l = w0; l < std::min(n, w0 + 32); ++l)
            if (b.fibers[l].state == State::kReady) sequence.push_back(l);
          order.permute(sequence);
          for (int l : sequence)
            if (!run(b.fibers[l])) return false;
          r = resolve_warp(b, w0);
          if (r < 0) return false;
        }
      }
    } else {
      order.arrange(sequence);
      for (int k : sequence)
        if (b.fibers[k].state == State::kReady && !run(b.fibers[k])) return false;
    }
    bool released = false;
    if (!resolve_shuffles(b, released)) return false;
    if (released) continue;
    std::vector<int> at_barrier, at_shuffle;
    for (int i = 0; i < n; ++i) {
      if (b.fibers[i].state == State::kBarrier) at_barrier.push_back(i);
      if (b.fibers[i].state == State::kShuffle) at_shuffle.push_back(i);
    }
    if (at_barrier.empty() && at_shuffle.empty()) return true;
    if (at_shuffle.empty()) {  // every thread that has not exited waits at __syncthreads
      for (int i : at_barrier) b.fibers[i].state = State::kReady;
      continue;
    }
    b.error = "deadlock: threads " + lanes_str(at_barrier) + " wait at __syncthreads while threads " +
              lanes_str(at_shuffle) + " wait at a warp shuffle that needs them";
    return false;
  }
}

}  // namespace

const uint3& thread_idx() { return block_or_die().current->tid; }
const uint3& block_idx() { return block_or_die().bid; }
const dim3& block_dim() { return block_or_die().block; }
const dim3& grid_dim() { return block_or_die().grid; }

void syncthreads() { yield(State::kBarrier); }

uint64_t shuffle(Shuffle kind, unsigned mask, uint64_t bits, int arg, int width) {
  if (width != 32) fail_in_kernel(std::string(shuffle_name(kind)) + " with width " + std::to_string(width) +
                                  ": only width 32 is emulated");
  Fiber* f = block_or_die().current;
  f->kind = kind, f->mask = mask, f->bits = bits, f->arg = arg;
  yield(State::kShuffle);
  return f->result;
}

void* dynamic_shared_bytes() { return block_or_die().shared; }

bool static_shared(const void* variable, size_t bytes) {
  if (!running) return true;
  Block& b = *running;
  for (const void* v : b.statics)
    if (v == variable) return true;
  b.statics.push_back(variable);
  size_t stat;
  {
    std::lock_guard<std::mutex> lock(attr_mutex);
    static_vars()[b.kernel][variable] = bytes;
    stat = static_bytes_locked(b.kernel);
  }
  const std::string why = static_shared_error(stat, b.dynamic, b.optin);
  if (!why.empty()) {
    b.error_code = cudaErrorInvalidValue;  // what the GPU's launch returns: no block runs there
    fail_in_kernel(why);
  }
  return true;
}

void forget_kernel(const void* kernel) {
  std::lock_guard<std::mutex> lock(attr_mutex);
  max_dynamic().erase(kernel);
  static_vars().erase(kernel);
}

void set_error(cudaError_t code, const char* msg) {
  pending = code;
  message = msg;
}

cudaError_t take_error() {
  const cudaError_t e = pending;
  pending = cudaSuccess;
  return e;
}

const char* last_message() { return message.c_str(); }

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(attr_mutex);
  // The static shared memory known from earlier launches counts (else the launch checks it).
  if (static_bytes_locked(kernel) + static_cast<size_t>(bytes) > kMaxSharedOptin) return cudaErrorInvalidValue;
  max_dynamic()[kernel] = bytes;
  return cudaSuccess;
}

void run_grid(const Config& cfg, const void* kernel, const std::function<void()>& body) {
  const dim3 g = cfg.grid, k = cfg.block;
  const auto launch_error = [&](cudaError_t code, const std::string& why) {
    set_error(code, ("emulated launch of grid " + tid_str(uint3{g.x, g.y, g.z}) + ", block " +
                     tid_str(uint3{k.x, k.y, k.z}) + ", " + std::to_string(cfg.smem) + " B shared: " + why)
                        .c_str());
  };
  if (running) return launch_error(cudaErrorLaunchFailure, "launched from inside a kernel");
  const unsigned long long threads = 1ull * k.x * k.y * k.z;
  if (threads == 0 || threads > kMaxThreads || k.z > 64)
    return launch_error(cudaErrorInvalidConfiguration, "a block holds 1 to 1024 threads (z at most 64)");
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
    return launch_error(cudaErrorInvalidConfiguration, "grid sizes are 1..2**31-1 (x) and 1..65535 (y, z)");
  long long optin = -1;
  size_t stat = 0;
  {
    std::lock_guard<std::mutex> lock(attr_mutex);
    const auto it = max_dynamic().find(kernel);
    if (it != max_dynamic().end()) optin = it->second;
    stat = static_bytes_locked(kernel);
  }
  const size_t limit = optin < 0 ? kDefaultShared : static_cast<size_t>(optin);
  if (cfg.smem > limit)
    return launch_error(cudaErrorInvalidValue, "dynamic shared memory over this kernel's limit of " +
                                                   std::to_string(limit) + " B (cudaFuncSetAttribute)");
  // The static shared memory of earlier launches; a first launch checks it as the threads reach it.
  const std::string static_why = static_shared_error(stat, cfg.smem, optin);
  if (!static_why.empty()) return launch_error(cudaErrorInvalidValue, static_why);

  // Each fiber stack sits above a PROT_NONE page (stacks grow down), so an overflow faults instead of
  // corrupting the neighbouring stack.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t bytes = static_cast<size_t>(threads) * kStackBytes;
  void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED) return launch_error(cudaErrorLaunchFailure, "cannot map the fiber stacks");
  unsigned char* stacks = static_cast<unsigned char*>(map);
  for (unsigned long long i = 0; i < threads; ++i) mprotect(stacks + i * kStackBytes, page, PROT_NONE);
  std::vector<uint4> shared((cfg.smem + sizeof(uint4) - 1) / sizeof(uint4) + 1);

  Block b;
  b.grid = g, b.block = k, b.body = &body;
  b.kernel = kernel, b.dynamic = cfg.smem, b.optin = optin;
  b.fibers.resize(threads);
  b.shared = reinterpret_cast<unsigned char*>(shared.data());
  Order& order = order_state;
  {
    const char* e = std::getenv("PVDM_EMU_ORDER");
    const std::string setting = e ? e : "";
    if (setting != order_setting) order = Order::from_env(), order_setting = setting;  // else a shuffle goes on
  }
  const bool reverse = order.kind == Order::kReverse;
  const unsigned long long blocks = 1ull * g.x * g.y * g.z;
  running = &b;
  for (unsigned long long i = 0; i < blocks; ++i) {
    const unsigned long long j = reverse ? blocks - 1 - i : i;
    b.bid = uint3{static_cast<unsigned>(j % g.x), static_cast<unsigned>((j / g.x) % g.y),
                  static_cast<unsigned>(j / (1ull * g.x * g.y))};
    if (!run_block(b, stacks, page, cfg.smem, order)) {
      running = nullptr;
      for (unsigned long long t = 0; t < threads; ++t) unpoison(stacks + t * kStackBytes + page, kStackBytes - page);
      munmap(map, bytes);
      if (b.error_code != cudaErrorLaunchFailure) return launch_error(b.error_code, b.error);  // a refused launch
      return launch_error(cudaErrorLaunchFailure, "block " + tid_str(b.bid) + ": " + b.error);
    }
  }
  running = nullptr;
  for (unsigned long long t = 0; t < threads; ++t) unpoison(stacks + (t + 1) * kStackBytes - kUnpoisonBytes, kUnpoisonBytes);
  munmap(map, bytes);
}

}  // namespace emu

extern "C" void pvdm_emu_reset_attributes() {
  std::lock_guard<std::mutex> lock(emu::attr_mutex);
  emu::max_dynamic().clear();
}

const char* cudaGetErrorString(cudaError_t code) {
  if (code == cudaSuccess) return "no error";
  return *emu::last_message() ? emu::last_message() : "emulated CUDA error";
}
