// Forward: block (line chunk, position j); one warp per line writes S[m, j] = x[token(m, j)] + pos[j]
// (or the appended token at j == A) and, fused, LayerNorm(S[m, j]) from the row kept in registers.
#include "axis_gather.cuh"

namespace pvdm {

template <typename T, int VEC, bool NORM>
__global__ void __launch_bounds__(kAxisWarps * 32) axis_gather_fwd_kernel(const AxisGatherParams p) {
  constexpr int MAXV = warp_row_slices<VEC>(kAxisMaxChannels);
  const int warp = threadIdx.x >> 5;
  const int64_t C = p.channels, j = blockIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * p.lines_per_block;
  const int64_t m1 = m0 + p.lines_per_block < p.lines ? m0 + p.lines_per_block : p.lines;
  for (int64_t m = m0 + warp; m < m1; m += kAxisWarps) {
    const T* src = j < p.A ? static_cast<const T*>(p.x) + axis_token(p, m, j) * C : nullptr;
    const int64_t row = m * (p.A + 1) + j;
    const auto load = [&](int64_t c, float (&v)[VEC]) { axis_row<T, VEC>(p, src, j, c, v); };
    float s[MAXV][VEC];
    const float sum = warp_row_fill<T, MAXV, VEC>(C, static_cast<T*>(p.s) + row * C, s, load);
    if constexpr (NORM)
      warp_row_layernorm<T, MAXV, VEC>(s, sum, C, p.eps, p.gamma, p.beta, static_cast<T*>(p.y) + row * C, p.mean + row,
                                       p.rstd + row);
  }
}

template <typename T, int VEC>
static int launch(const AxisGatherParams& p, cudaStream_t stream) {
  const auto kernel = p.gamma ? axis_gather_fwd_kernel<T, VEC, true> : axis_gather_fwd_kernel<T, VEC, false>;
  return launch_kernel(kernel, axis_grid(p), kAxisWarps * 32, 0, stream, p);
}

int axis_gather_fwd_launch(const AxisGatherParams& p, void* stream) {
  PVDM_DISPATCH_DTYPE_VEC(p.dtype, p.vec, launch, p, static_cast<cudaStream_t>(stream))
}

}  // namespace pvdm
