// Device helpers for the packed-triplane GroupNorm + FiLM + SiLU kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "group_norm_silu.h"
#include "reduce.cuh"

namespace pvdm {

constexpr int kGnThreads = 256;

__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// One (batch, group, segment) region: Cg channel rows of `len` contiguous elements, row stride L.
struct GnRegion {
  int64_t b, g, s, c0, start, len, count;
  int64_t stat;      // index into the (B, G, S) statistics
  int64_t row0;      // offset of (b, c0, start) in the (B, C, L) tensor
};

__device__ __forceinline__ GnRegion gn_region(const GnSiluParams& p) {
  GnRegion r;
  const int64_t idx = blockIdx.x;
  r.s = idx % p.num_segments;
  r.g = (idx / p.num_segments) % p.groups;
  r.b = idx / (p.num_segments * p.groups);
  const int64_t cg = p.channels / p.groups;
  r.c0 = r.g * cg;
  r.start = p.seg_start[r.s];
  r.len = p.seg_len[r.s];
  r.count = cg * r.len;
  r.stat = idx;
  r.row0 = (r.b * p.channels + r.c0) * p.length + r.start;
  return r;
}

// Per-channel FiLM factors: z = a * mul + add.
__device__ __forceinline__ void gn_film(const GnSiluParams& p, int64_t b, int64_t c, float& mul, float& add) {
  mul = p.scale ? 1.f + p.scale[b * p.channels + c] : 1.f;
  add = p.shift ? p.shift[b * p.channels + c] : 0.f;
}

__device__ __forceinline__ float gn_sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

}  // namespace pvdm
