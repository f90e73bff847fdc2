// Backward, LayerNorm part: one warp per token reduces dY over the channels to the two means the
// LayerNorm backward needs, a1 = mean(gamma*dy) and a2 = mean(gamma*dy*xhat), so that the axis-sum
// kernel can split the channels across blocks.
#include "triplane_decode.cuh"

namespace pvdm {

template <typename T, int VEC>
__global__ void __launch_bounds__(kTriWarps * 32) triplane_ln_means_kernel(const TriplaneParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kTriWarps + (threadIdx.x >> 5);
  if (n >= tri_tokens(p)) return;
  const int64_t C = p.channels;
  const TriRows r = tri_rows(p, n);
  const T* dy = static_cast<const T*>(p.dy) + n * C;
  const float mean = p.mean[n], rstd = p.rstd[n];
  float s1 = 0.f, s2 = 0.f;
  for (int64_t c = static_cast<int64_t>(lane) * VEC; c < C; c += 32 * VEC) {
    float v[VEC], g[VEC];
    tri_volume<T, VEC>(p, r, c, v);
    load_vec<T, VEC>(dy + c, g);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float gy = g[k] * p.gamma[c + k];
      s1 += gy;
      s2 += gy * (v[k] - mean) * rstd;
    }
  }
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  if (lane == 0) {
    p.a1[n] = s1 / static_cast<float>(C);
    p.a2[n] = s2 / static_cast<float>(C);
  }
}

template <typename T, int VEC>
static int launch(const TriplaneParams& p, cudaStream_t stream) {
  return launch_kernel(triplane_ln_means_kernel<T, VEC>, tri_row_blocks(p), kTriWarps * 32, 0, stream, p);
}

int triplane_ln_means_launch(const TriplaneParams& p, void* stream) {
  PVDM_DISPATCH_DTYPE_VEC(p.dtype, p.vec, launch, p, static_cast<cudaStream_t>(stream))
}

}  // namespace pvdm
