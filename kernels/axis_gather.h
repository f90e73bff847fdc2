// Axis gather (grid tokens -> per-axis sequences with appended token and position embedding, optional
// fused LayerNorm): the parameter block shared by host and device. No CUDA headers.
#pragma once
#include <cstdint>

#include "common.h"

namespace pvdm {

constexpr int64_t kAxisMaxChannels = 1024;  // a warp keeps one row in registers (32 floats/lane)
constexpr int kAxisWarps = 8;               // warps per block

// x, dx: (B, T*h*w, C); s, y, ds, dy: (M, A+1, C), all `dtype`, contiguous. token (C,), pos (A+1, C),
// gamma/beta (C,) float32 (gamma null: no LayerNorm). mean/rstd (M, A+1) float32. Partials
// part_pos/part_gamma/part_beta: (blocks, A+1, C) float32, blocks = ceil(M / lines_per_block).
// Line m = (b, o1, o2) at position j < A reads token b*T*h*w + o1*s1 + o2*s2 + j*sj.
struct AxisGatherParams {
  const void* x;
  const float* token;
  const float* pos;
  const float* gamma;
  const float* beta;
  void* s;
  void* y;
  float* mean;
  float* rstd;
  const void* ds;
  const void* dy;
  void* dx;
  float* part_pos;
  float* part_gamma;
  float* part_beta;
  int64_t batch, tokens, channels;       // tokens = T*h*w
  int64_t A, O1, O2, s1, s2, sj, lines;  // lines M = batch*O1*O2
  int64_t lines_per_block;
  float eps;
  int dtype;
  bool vec;
};

int axis_gather_fwd_launch(const AxisGatherParams& p, void* stream);
int axis_gather_bwd_launch(const AxisGatherParams& p, void* stream);

}  // namespace pvdm
