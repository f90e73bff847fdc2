// Forward: block (line chunk, position j); one warp per line writes S[m, j] = x[token(m, j)] + pos[j]
// (or the appended token at j == A) and, fused, LayerNorm(S[m, j]) from the row kept in registers.
#include "axis_gather.cuh"

namespace pvdm {

template <typename T, int VEC, bool NORM>
__global__ void __launch_bounds__(kAxisWarps * 32) axis_gather_fwd_kernel(const AxisGatherParams p) {
  constexpr int MAXV = static_cast<int>(kAxisMaxChannels / 32) / VEC;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t C = p.channels, j = blockIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * p.lines_per_block;
  const int64_t m1 = m0 + p.lines_per_block < p.lines ? m0 + p.lines_per_block : p.lines;
  for (int64_t m = m0 + warp; m < m1; m += kAxisWarps) {
    const T* src = j < p.A ? static_cast<const T*>(p.x) + axis_token(p, m, j) * C : nullptr;
    const int64_t row = m * (p.A + 1) + j;
    T* out_s = static_cast<T*>(p.s) + row * C;
    float s[MAXV][VEC];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int64_t c = static_cast<int64_t>(lane + 32 * i) * VEC;
      if (c < C) {
        axis_row<T, VEC>(p, src, j, c, s[i]);
        store_vec<T, VEC>(out_s + c, s[i]);
#pragma unroll
        for (int k = 0; k < VEC; ++k) sum += s[i][k];
      }
    }
    if constexpr (NORM) {
      const float mean = warp_sum(sum) / static_cast<float>(C);
      float sq = 0.f;
#pragma unroll
      for (int i = 0; i < MAXV; ++i) {
        if (static_cast<int64_t>(lane + 32 * i) * VEC < C) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) sq += (s[i][k] - mean) * (s[i][k] - mean);
        }
      }
      const float rstd = 1.f / sqrtf(warp_sum(sq) / static_cast<float>(C) + p.eps);
      T* out_y = static_cast<T*>(p.y) + row * C;
#pragma unroll
      for (int i = 0; i < MAXV; ++i) {
        const int64_t c = static_cast<int64_t>(lane + 32 * i) * VEC;
        if (c < C) {
          float o[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) o[k] = (s[i][k] - mean) * rstd * p.gamma[c + k] + p.beta[c + k];
          store_vec<T, VEC>(out_y + c, o);
        }
      }
      if (lane == 0) {
        p.mean[row] = mean;
        p.rstd[row] = rstd;
      }
    }
  }
}

template <typename T, int VEC>
static int launch(const AxisGatherParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.lines + p.lines_per_block - 1) / p.lines_per_block),
                  static_cast<unsigned>(p.A + 1));
  if (p.gamma)
    axis_gather_fwd_kernel<T, VEC, true><<<grid, kAxisWarps * 32, 0, stream>>>(p);
  else
    axis_gather_fwd_kernel<T, VEC, false><<<grid, kAxisWarps * 32, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int axis_gather_fwd_launch(const AxisGatherParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
#define PVDM_AXIS_FWD(T, V) launch<T, V>(p, s)
  PVDM_DISPATCH_DTYPE_VEC(p.dtype, p.vec, PVDM_AXIS_FWD)
#undef PVDM_AXIS_FWD
}

}  // namespace pvdm
