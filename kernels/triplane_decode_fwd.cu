// Forward: one warp per token writes V = P_xy + P_yt + P_xt for all C channels, keeping the row in
// registers so that the fused LayerNorm (centred two-pass variance) needs no second read.
#include "triplane_decode.cuh"

namespace pvdm {

template <typename T, int VEC, bool NORM>
__global__ void __launch_bounds__(kTriWarps * 32) triplane_fwd_kernel(const TriplaneParams p) {
  constexpr int MAXV = warp_row_slices<VEC>(kTriMaxChannels);
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kTriWarps + (threadIdx.x >> 5);
  if (n >= tri_tokens(p)) return;  // the whole warp leaves together
  const int64_t C = p.channels;
  const TriRows r = tri_rows(p, n);
  const auto load = [&](int64_t c, float (&v)[VEC]) { tri_volume<T, VEC>(p, r, c, v); };
  float v[MAXV][VEC];
  const float sum = warp_row_fill<T, MAXV, VEC>(C, static_cast<T*>(p.v) + n * C, v, load);
  if constexpr (NORM)
    warp_row_layernorm<T, MAXV, VEC>(v, sum, C, p.eps, p.gamma, p.beta, static_cast<T*>(p.y) + n * C, p.mean + n,
                                     p.rstd + n);
}

template <typename T, int VEC>
static int launch(const TriplaneParams& p, cudaStream_t stream) {
  const auto kernel = p.gamma ? triplane_fwd_kernel<T, VEC, true> : triplane_fwd_kernel<T, VEC, false>;
  return launch_kernel(kernel, tri_row_blocks(p), kTriWarps * 32, 0, stream, p);
}

int triplane_fwd_launch(const TriplaneParams& p, void* stream) {
  PVDM_DISPATCH_DTYPE_VEC(p.dtype, p.vec, launch, p, static_cast<cudaStream_t>(stream))
}

}  // namespace pvdm
