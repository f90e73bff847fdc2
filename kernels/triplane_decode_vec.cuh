// 16-byte vector loads/stores of VEC elements into float registers, with a VEC == 1 scalar path for
// rows whose channel count or base address does not allow 16-byte access. Used by the triplane and
// axis-gather kernels.
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

// Enqueues kernel<<<grid, block, smem, stream>>>(p); returns the launch's cudaError_t value.
template <typename Params>
int launch_kernel(void (*kernel)(Params), dim3 grid, int block, size_t smem, cudaStream_t stream, const Params& p) {
  kernel<<<grid, block, smem, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

// Returns FN<T, VEC>(...) for the element type `dtype`: VEC elements per 16-byte access when `vec`,
// else the scalar path (VEC 1). Both paths are instantiated for every type.
#define PVDM_DISPATCH_DTYPE_VEC(dtype, vec, FN, ...)                                                    \
  switch (dtype) {                                                                                      \
    case kFloat32: return (vec) ? FN<float, 4>(__VA_ARGS__) : FN<float, 1>(__VA_ARGS__);                \
    case kFloat16: return (vec) ? FN<__half, 8>(__VA_ARGS__) : FN<__half, 1>(__VA_ARGS__);              \
    case kBFloat16: return (vec) ? FN<__nv_bfloat16, 8>(__VA_ARGS__) : FN<__nv_bfloat16, 1>(__VA_ARGS__); \
    default: return static_cast<int>(cudaErrorInvalidValue);                                            \
  }

}  // namespace pvdm
