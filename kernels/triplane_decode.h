// Triplane decode (planes -> token volume, optional fused LayerNorm): the parameter block shared by
// host and device. No CUDA headers, so csrc/ (g++) can include it.
#pragma once
#include <cstdint>

#include "common.h"

namespace pvdm {

constexpr int64_t kTriMaxChannels = 1024;       // a warp keeps one token row in registers (32 floats/lane)
constexpr int kTriWarps = 8;                     // warps per block in the row kernels
constexpr int kTriSumThreads = 256;              // threads per block in the axis-sum kernel
constexpr int64_t kTriMaxSmemBytes = 96 * 1024;  // axis-sum accumulators; fits sm80 and sm90
constexpr int64_t kTriSumStaticSmemBytes = 32 * 4;  // the axis-sum kernel's static block_sum scratch

// Planes p_xy (B,h,w,C), p_yt (B,T,w,C), p_xt (B,T,h,C); v, y, dv, dy (B,T*h*w,C); all `dtype`,
// contiguous. gamma/beta (C,) float32 or null (no LayerNorm). mean, rstd, a1, a2: (B*T*h*w) float32.
// d_xy/d_yt/d_xt: float32 plane gradients; dgamma_part/dbeta_part: (B, C) float32.
struct TriplaneParams {
  const void* p_xy;
  const void* p_yt;
  const void* p_xt;
  const float* gamma;
  const float* beta;
  void* v;
  void* y;
  float* mean;
  float* rstd;
  const void* dv;
  const void* dy;
  float* a1;
  float* a2;
  float* d_xy;
  float* d_yt;
  float* d_xt;
  float* dgamma_part;
  float* dbeta_part;
  int64_t batch, frames, height, width, channels;
  float eps;
  int dtype;
  bool vec;  // every row starts 16-byte aligned: use 16-byte accesses
};

// Bytes of dynamic shared memory the axis-sum kernel needs (the launcher validates it).
inline int64_t triplane_sum_smem_bytes(const TriplaneParams& p) {
  const int64_t vec = p.vec ? vec16_elements(p.dtype) : 1;
  return p.frames * (p.width + p.height) * vec * 4;
}

// Both return a cudaError_t value (0 on success); they only enqueue work on `stream`.
int triplane_fwd_launch(const TriplaneParams& p, void* stream);
int triplane_bwd_launch(const TriplaneParams& p, void* stream);

}  // namespace pvdm
