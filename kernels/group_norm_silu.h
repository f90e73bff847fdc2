// Packed-triplane GroupNorm + FiLM + SiLU: the parameter block shared by host and device.
#pragma once
#include <cstdint>

#include "common.h"

namespace pvdm {

constexpr int kGnMaxSegments = 8;

// x, y, dy, dx: (B, C, L) contiguous, dtype `dtype`; L = sum of segment lengths.
// weight, bias: (C,) float32. scale, shift: (B, C) float32 or null.
// mean, rstd: (B, G, S) float32. Backward partials: (B, C, S) float32 each.
struct GnSiluParams {
  const void* x;
  void* y;
  const void* dy;
  void* dx;
  const float* weight;
  const float* bias;
  const float* scale;
  const float* shift;
  float* mean;
  float* rstd;
  float* dweight_part;  // sum over the segment of dL/da * xhat
  float* dbias_part;    // sum over the segment of dL/da
  float* dscale_part;   // sum over the segment of dL/dz * a
  float* dshift_part;   // sum over the segment of dL/dz
  int64_t batch;
  int64_t channels;
  int64_t length;
  int64_t groups;
  int64_t num_segments;
  int64_t seg_start[kGnMaxSegments];
  int64_t seg_len[kGnMaxSegments];
  float eps;
  bool apply_silu;
  int dtype;
};

// Both return a cudaError_t value (0 on success); they only enqueue work on `stream`.
int gn_silu_fwd_launch(const GnSiluParams& p, void* stream);
int gn_silu_bwd_launch(const GnSiluParams& p, void* stream);

}  // namespace pvdm
