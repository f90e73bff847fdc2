// 16-byte vector loads/stores of VEC elements into float registers, with a VEC == 1 scalar path for
// rows whose channel count or base address does not allow 16-byte access. Used by the triplane kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pvdm {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Elements per 16-byte access for T.
template <typename T>
constexpr int vec16() { return static_cast<int>(16 / sizeof(T)); }

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  static_assert(VEC == 1 || VEC * sizeof(T) == 16, "VEC must be 1 or one 16-byte access");
  if constexpr (VEC == 1) {
    out[0] = to_float(p[0]);
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = to_float(e[k]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[VEC]) {
  static_assert(VEC == 1 || VEC * sizeof(T) == 16, "VEC must be 1 or one 16-byte access");
  if constexpr (VEC == 1) {
    p[0] = from_float<T>(in[0]);
  } else {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int k = 0; k < VEC; ++k) e[k] = from_float<T>(in[k]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
}

// Launch one kernel template over the three element types, vectorised or scalar.
#define PVDM_DISPATCH_DTYPE_VEC(dtype, vec, LAUNCH)                                        \
  switch (dtype) {                                                                         \
    case kFloat32: return (vec) ? LAUNCH(float, 4) : LAUNCH(float, 1);                     \
    case kFloat16: return (vec) ? LAUNCH(__half, 8) : LAUNCH(__half, 1);                   \
    case kBFloat16: return (vec) ? LAUNCH(__nv_bfloat16, 8) : LAUNCH(__nv_bfloat16, 1);    \
    default: return static_cast<int>(cudaErrorInvalidValue);                               \
  }

}  // namespace pvdm
