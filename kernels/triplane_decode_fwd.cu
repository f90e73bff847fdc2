// Forward: one warp per token writes V = P_xy + P_yt + P_xt for all C channels, keeping the row in
// registers so that the fused LayerNorm (centred two-pass variance) needs no second read.
#include "triplane_decode.cuh"

namespace pvdm {

template <typename T, int VEC, bool NORM>
__global__ void __launch_bounds__(kTriWarps * 32) triplane_fwd_kernel(const TriplaneParams p) {
  constexpr int MAXV = static_cast<int>(kTriMaxChannels / 32) / VEC;
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kTriWarps + (threadIdx.x >> 5);
  if (n >= p.batch * p.frames * p.height * p.width) return;  // the whole warp leaves together
  const int64_t C = p.channels;
  const TriRows r = tri_rows(p, n);
  T* out_v = static_cast<T*>(p.v) + n * C;
  float v[MAXV][VEC];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int64_t c = static_cast<int64_t>(lane + 32 * i) * VEC;
    if (c < C) {
      tri_volume<T, VEC>(p, r, c, v[i]);
      store_vec<T, VEC>(out_v + c, v[i]);
#pragma unroll
      for (int k = 0; k < VEC; ++k) sum += v[i][k];
    }
  }
  if constexpr (NORM) {
    const float mean = warp_sum(sum) / static_cast<float>(C);
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      if (static_cast<int64_t>(lane + 32 * i) * VEC < C) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) sq += (v[i][k] - mean) * (v[i][k] - mean);
      }
    }
    const float rstd = 1.f / sqrtf(warp_sum(sq) / static_cast<float>(C) + p.eps);
    T* out_y = static_cast<T*>(p.y) + n * C;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int64_t c = static_cast<int64_t>(lane + 32 * i) * VEC;
      if (c < C) {
        float o[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = (v[i][k] - mean) * rstd * p.gamma[c + k] + p.beta[c + k];
        store_vec<T, VEC>(out_y + c, o);
      }
    }
    if (lane == 0) {
      p.mean[n] = mean;
      p.rstd[n] = rstd;
    }
  }
}

template <typename T, int VEC>
static int launch(const TriplaneParams& p, cudaStream_t stream) {
  const int64_t tokens = p.batch * p.frames * p.height * p.width;
  const unsigned blocks = static_cast<unsigned>((tokens + kTriWarps - 1) / kTriWarps);
  if (p.gamma)
    triplane_fwd_kernel<T, VEC, true><<<blocks, kTriWarps * 32, 0, stream>>>(p);
  else
    triplane_fwd_kernel<T, VEC, false><<<blocks, kTriWarps * 32, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int triplane_fwd_launch(const TriplaneParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
#define PVDM_TRI_FWD(T, V) launch<T, V>(p, s)
  PVDM_DISPATCH_DTYPE_VEC(p.dtype, p.vec, PVDM_TRI_FWD)
#undef PVDM_TRI_FWD
}

}  // namespace pvdm
