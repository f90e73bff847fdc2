// One token row of C channels held by one warp in registers, and the LayerNorm of that row. Lane l owns
// the VEC-wide slices that start at channel (l + 32*i)*VEC, i < MAXV, so a warp's 16-byte accesses to a
// row are contiguous and the statistics need no second read of global memory.
#pragma once
#include "reduce.cuh"
#include "triplane_decode_vec.cuh"

namespace pvdm {

// Slices per lane for rows of up to `max_channels` channels.
template <int VEC>
constexpr int warp_row_slices(int64_t max_channels) {
  return static_cast<int>(max_channels / 32) / VEC;
}

// First channel of the lane's i-th slice (>= C: the slice is past the row's end).
template <int VEC>
__device__ __forceinline__ int64_t warp_row_channel(int lane, int i) {
  return static_cast<int64_t>(lane + 32 * i) * VEC;
}

// Fills the lane's slices with load(c, slice) (channels c .. c+VEC in float32), writes each to out + c,
// and returns the lane's share of the row sum.
template <typename T, int MAXV, int VEC, typename Load>
__device__ __forceinline__ float warp_row_fill(int64_t C, T* out, float (&v)[MAXV][VEC], Load&& load) {
  const int lane = threadIdx.x & 31;
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int64_t c = warp_row_channel<VEC>(lane, i);
    if (c < C) {
      load(c, v[i]);
      store_vec<T, VEC>(out + c, v[i]);
#pragma unroll
      for (int k = 0; k < VEC; ++k) sum += v[i][k];
    }
  }
  return sum;
}

// y = (v - mean) * rstd * gamma + beta over the whole row, from the row sum's lane shares; the variance
// is the centred two-pass one, as the reference computes it. Lane 0 stores mean and rstd.
template <typename T, int MAXV, int VEC>
__device__ __forceinline__ void warp_row_layernorm(const float (&v)[MAXV][VEC], float lane_sum, int64_t C, float eps,
                                                   const float* gamma, const float* beta, T* y, float* mean_out,
                                                   float* rstd_out) {
  const int lane = threadIdx.x & 31;
  const float mean = warp_sum(lane_sum) / static_cast<float>(C);
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    if (warp_row_channel<VEC>(lane, i) < C) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) sq += (v[i][k] - mean) * (v[i][k] - mean);
    }
  }
  const float rstd = 1.f / sqrtf(warp_sum(sq) / static_cast<float>(C) + eps);
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int64_t c = warp_row_channel<VEC>(lane, i);
    if (c < C) {
      float o[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) o[k] = (v[i][k] - mean) * rstd * gamma[c + k] + beta[c + k];
      store_vec<T, VEC>(y + c, o);
    }
  }
  if (lane == 0) {
    *mean_out = mean;
    *rstd_out = rstd;
  }
}

}  // namespace pvdm
