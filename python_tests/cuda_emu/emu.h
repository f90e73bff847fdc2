// A CPU emulation of the parts of the CUDA execution model that kernels/ uses, so that the CUDA kernels
// run (slowly, exactly) in the test suite on machines without a GPU.
//
// Every CUDA thread of a block is a fiber (ucontext) on the calling OS thread; blocks run one after the
// other. A fiber runs until it reaches __syncthreads(), a warp shuffle or its end, then the next one
// runs. A barrier opens when every thread of the block that has not exited waits at it; a shuffle
// completes when all 32 lanes of the warp wait at the same shuffle. Everything else is a launch error
// with a message (cudaGetLastError): threads of a block waiting at different barriers (a deadlock on a
// GPU), a full-mask shuffle with exited or missing lanes, lanes at different kinds of shuffle, a grid
// or block over CUDA's limits, dynamic shared memory over the limit set with cudaFuncSetAttribute,
// static and dynamic shared memory together over CUDA's 48 KB without that opt-in (see static_shared).
// Dynamic shared memory starts as NaN bytes each block, so a read before the first write shows.
//
// Not emulated: timing, the memory model (fibers see each other's writes in program order), register
// and occupancy limits. compute-sanitizer on a GPU remains the check for races.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
// Static shared memory: one instance for all blocks, which run one at a time. The emulation build
// rewrites `__shared__ T name[N];` in kernels/ into this `static` declaration followed by a call of
// emu::static_shared, and `extern __shared__` declarations into emu::dynamic_shared<T>().
#define __shared__ static

// ---- vector types
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

// ---- runtime types
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

// ---- 16-bit floats: storage types with round-to-nearest-even conversions, as __float2half_rn and
// __float2bfloat16_rn compute them
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

namespace emu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (ax < 0x38800000u) {  // below 2**-14: a subnormal half, in units of 2**-24 (exact scaling)
    const float units = std::nearbyint(std::fabs(f) * 16777216.0f);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(units));
  }
  const uint32_t mant = ax & 0x7fffffu;
  uint32_t h = ((((ax >> 23) - 127u + 15u) << 10) | (mant >> 13));
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
  return static_cast<uint16_t>(sign | h);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp - 15u + 127u) << 23) | (mant << 13));
}

inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace emu

inline float __half2float(__half h) { return emu::half_bits_to_float(h.bits); }
inline __half __float2half_rn(float f) { return __half{emu::float_to_half_bits(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return emu::bits_float(static_cast<uint32_t>(b.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{emu::float_to_bf16_bits(f)}; }

// ---- the emulated device
namespace emu {

// The running thread's indices and its block's shape (valid inside a kernel only).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

void syncthreads();

enum class Shuffle : int { kXor = 0, kDown = 1, kUp = 2 };
// The 8 bytes `bits` of the lane this lane reads in a full-warp shuffle.
uint64_t shuffle(Shuffle kind, unsigned mask, uint64_t bits, int arg, int width);

// Dynamic shared memory of the running block.
void* dynamic_shared_bytes();
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_bytes());
}

// A static `__shared__` variable of `bytes` bytes reached by the running thread (the emulation build
// calls this after each such declaration). The first time a kernel reaches the variable, its bytes count
// toward the kernel's static shared memory, checked as CUDA checks it at launch: static + dynamic within
// 48 KB without the cudaFuncAttributeMaxDynamicSharedMemorySize opt-in, static + the opt-in value within
// the device's per-block maximum. Over it, the launch fails (cudaErrorInvalidValue), and later launches
// and cudaFuncSetAttribute calls of the kernel know its static size beforehand. Outside a kernel (a
// namespace-scope declaration) it counts nothing. Stricter than nvcc, which drops a variable that an
// instantiation never uses (triplane_sums_kernel's `scratch` without the LayerNorm: 0 B static per
// ptxas, 128 B here); a kernel that exits before the declaration is not checked. Returns true.
bool static_shared(const void* variable, size_t bytes);

// Forgets what the emulation learned about `kernel`: its cudaFuncSetAttribute setting and its static
// shared memory (for the emulation's own tests).
void forget_kernel(const void* kernel);

}  // namespace emu

// Forgets every kernel's cudaFuncSetAttribute setting, as a new process starts without them (cuda_emu's
// activate(), so that no test passes on an opt-in that an earlier test's launch made).
extern "C" void pvdm_emu_reset_attributes();

namespace emu {

// Records a launch error; cudaGetLastError returns (and clears) it.
void set_error(cudaError_t code, const char* message);
cudaError_t take_error();
const char* last_message();

struct Config {
  dim3 grid, block;
  size_t smem;
};
inline Config config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) { return Config{grid, block, smem}; }

// Runs body() as every thread of every block of cfg, for the kernel `kernel` (its shared memory
// limits). Returns after the whole grid ran or stopped on an error.
void run_grid(const Config& cfg, const void* kernel, const std::function<void()>& body);
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);

// kernel<<<cfg>>>(args...): the arguments are copied once, as CUDA copies kernel parameters.
template <typename... KArgs, typename... Args>
void launch(const Config& cfg, void (*kernel)(KArgs...), Args&&... args) {
  std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  run_grid(cfg, reinterpret_cast<const void*>(kernel), [&] { std::apply(kernel, params); });
}

template <typename T>
T shuffle_as(Shuffle kind, unsigned mask, T v, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle(kind, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())

inline void __syncthreads() { emu::syncthreads(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::shuffle_as(emu::Shuffle::kXor, mask, v, lane_mask, width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shuffle_as(emu::Shuffle::kDown, mask, v, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shuffle_as(emu::Shuffle::kUp, mask, v, static_cast<int>(delta), width);
}

// Fibers never run at the same time, so a plain read-modify-write is atomic.
inline float atomicAdd(float* address, float v) {
  const float old = *address;
  *address = old + v;
  return old;
}

// ---- runtime API
inline cudaError_t cudaGetLastError() { return emu::take_error(); }
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t code);

template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}
