// Device helpers for the packed-triplane GroupNorm + FiLM + SiLU kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "group_norm_silu.h"
#include "reduce.cuh"
#include "triplane_decode_vec.cuh"

namespace pvdm {

constexpr int kGnThreads = 256;

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

// 1 / (1 + e^-z). __frcp_rn is the correctly rounded reciprocal, the same value as `1.f / d`, without
// the division's per-element slow-path branch (the emulation, with no __CUDA_ARCH__, divides).
__device__ __forceinline__ float gn_sigmoid(float z) {
  const float d = 1.f + expf(-z);
#ifdef __CUDA_ARCH__
  return __frcp_rn(d);
#else
  return 1.f / d;
#endif
}

// SiLU or identity, computed branch-free so the unrolled row loops stay one basic block.
__device__ __forceinline__ float gn_act(float z, bool silu) {
  const float s = gn_sigmoid(z);
  return silu ? z * s : z;
}

// Items (VEC elements each) a thread loads before using any, per tensor: two 16-byte items or four
// scalars, so several loads per thread are in flight.
template <int VEC>
constexpr int gn_unroll() { return VEC == 1 ? 4 : 2; }
// Independent float accumulators per summed quantity: one per scalar item, two for 16-byte items (more
// cost the backward registers: 3 quantities x 8 lanes took it from ~72 to ~116, 3 -> 2 blocks per SM).
template <int VEC>
constexpr int gn_accs() { return VEC == 1 ? gn_unroll<VEC>() : 2; }

// How a block walks a region's channel rows without dividing: groups of tpr = 2^shift threads share a
// row (`group` = which row of the pass, `lane` = position in the group) and stride over its items.
// tpr grows while it is under 32 (coalescing) or the rows cannot occupy the block, but not past the
// row's item count or max_tpr (a power of two <= kGnThreads). Block-uniform.
struct GnRows {
  int shift, tpr, lane, group, rows_per_pass;
};

__device__ __forceinline__ GnRows gn_rows(int64_t rows, int64_t items, int max_tpr) {
  GnRows w;
  w.shift = 0;
  while ((1 << w.shift) < max_tpr && (1 << w.shift) < items &&
         ((1 << w.shift) < 32 || (int64_t{1} << w.shift) * rows < kGnThreads))
    ++w.shift;
  w.tpr = 1 << w.shift;
  w.lane = threadIdx.x & (w.tpr - 1);
  w.group = threadIdx.x >> w.shift;
  w.rows_per_pass = kGnThreads >> w.shift;
  return w;
}

template <typename T>
__device__ __forceinline__ uint32_t gn_bits(T v) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "2- or 4-byte elements");
  if constexpr (sizeof(T) == 4) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
  } else {
    uint16_t u;
    memcpy(&u, &v, 2);
    return u;
  }
}

// store_vec, as one 16-byte store: in the unrolled loops nvcc split a plain uint4 assignment into four
// 4-byte stores (and __stwb becomes a STRONG.SM store), so the device build states the store itself.
template <typename T, int VEC>
__device__ __forceinline__ void gn_store(T* p, const float (&in)[VEC]) {
  if constexpr (VEC == 1) {
    p[0] = from_float<T>(in[0]);
  } else {
    static_assert(VEC * sizeof(T) == 16, "VEC must be 1 or one 16-byte access");
    constexpr int PER = static_cast<int>(4 / sizeof(T));  // elements per 32-bit word
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = gn_bits(from_float<T>(in[PER * i]));
      if constexpr (PER == 2) w[i] |= gn_bits(from_float<T>(in[PER * i + 1])) << 16;
    }
    const uint4 raw{w[0], w[1], w[2], w[3]};
#ifdef __CUDA_ARCH__
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(raw.x), "r"(raw.y), "r"(raw.z), "r"(raw.w)
                 : "memory");
#else
    *reinterpret_cast<uint4*>(p) = raw;
#endif
  }
}

template <int N>
struct GnCount {
  static constexpr int value = N;
};

// Calls body(j, GnCount<U>) for items j, j + tpr, ..., j + (U-1) * tpr of a row of n items (this lane's
// share), then body(j, GnCount<1>) for the rest. The body loads its U items before using any.
template <int U, typename Body>
__device__ __forceinline__ void gn_row_walk(int64_t n, const GnRows& w, Body&& body) {
  int64_t j = w.lane;
  for (; j + static_cast<int64_t>(U - 1) * w.tpr < n; j += static_cast<int64_t>(U) * w.tpr) body(j, GnCount<U>{});
  for (; j < n; j += w.tpr) body(j, GnCount<1>{});
}

// The N items of one gn_row_walk step of a row: item k is row[(j + k * tpr) * VEC ...], all loaded
// before any is used (several loads in flight).
template <typename T, int VEC, int N>
__device__ __forceinline__ void gn_load(const T* row, int64_t j, int64_t tpr, float (&v)[N][VEC]) {
#pragma unroll
  for (int k = 0; k < N; ++k) load_vec<T, VEC>(row + (j + k * tpr) * VEC, v[k]);
}

// Sum over the tpr (<= 32) lanes of a row group; every lane of the warp must call it.
__device__ __forceinline__ float gn_group_sum(float v, int tpr) {
  for (int off = tpr >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <int N>
__device__ __forceinline__ float gn_total(const float (&acc)[N]) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i) s += acc[i];
  return s;
}

// True when every row start of every region and both ends of every row fall on 16-byte boundaries of
// all `ptrs`: all segment lengths (hence L and the starts) are multiples of vec elements.
inline bool gn_rows_vectorizable(const GnSiluParams& p, int vec, std::initializer_list<const void*> ptrs) {
  for (int64_t s = 0; s < p.num_segments; ++s)
    if (p.seg_len[s] % vec != 0) return false;
  for (const void* q : ptrs)
    if (reinterpret_cast<uintptr_t>(q) % 16 != 0) return false;
  return true;
}

}  // namespace pvdm
