// Backward: block (line chunk, position j); one warp per line turns dS (+ the LayerNorm backward of dY,
// rows rebuilt from x, token and pos) into g, writes g to dx at the grid token it came from, and adds
// g, dY*xhat and dY into shared per-block sums over its lines: the block's partial gradients of
// pos[j] (and of the appended token at j == A) and of the LayerNorm weight and bias.
#include "axis_gather.cuh"

namespace pvdm {

// Floats of one shared sum row: the channels rounded up to whole warps of VEC-wide slices.
__host__ __device__ __forceinline__ int64_t axis_sum_row(int64_t C, int VEC) {
  return (C / VEC + 31) / 32 * 32 * VEC;
}

// Where channel slot (lane, i, k) lives in a shared sum row: lane-major, so that the 32 lanes of one
// atomic add touch 32 consecutive words (channel order would put them VEC words apart: 8-way conflicts).
__device__ __forceinline__ int64_t axis_sum_slot(int lane, int i, int k, int VEC) {
  return (static_cast<int64_t>(i) * VEC + k) * 32 + lane;
}

template <typename T, int VEC, bool NORM>
__global__ void __launch_bounds__(kAxisWarps * 32) axis_gather_bwd_kernel(const AxisGatherParams p) {
  constexpr int MAXV = warp_row_slices<VEC>(kAxisMaxChannels);
  extern __shared__ float smem[];  // (3, R): sums of g, dy*xhat, dy over the block's lines (axis_sum_slot)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t C = p.channels, j = blockIdx.y, R = axis_sum_row(C, VEC);
  float* s_pos = smem;
  float* s_gamma = smem + R;
  float* s_beta = smem + 2 * R;
  for (int64_t i = threadIdx.x; i < (NORM ? 3 : 1) * R; i += blockDim.x) smem[i] = 0.f;
  __syncthreads();
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * p.lines_per_block;
  const int64_t m1 = m0 + p.lines_per_block < p.lines ? m0 + p.lines_per_block : p.lines;
  for (int64_t m = m0 + warp; m < m1; m += kAxisWarps) {
    const int64_t tok = j < p.A ? axis_token(p, m, j) : -1;
    const int64_t row = m * (p.A + 1) + j;
    const T* ds = static_cast<const T*>(p.ds) + row * C;
    float g[MAXV][VEC];
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int64_t c = warp_row_channel<VEC>(lane, i);
      if (c < C) load_vec<T, VEC>(ds + c, g[i]);
    }
    if constexpr (NORM) {
      const T* src = tok >= 0 ? static_cast<const T*>(p.x) + tok * C : nullptr;
      const T* dyp = static_cast<const T*>(p.dy) + row * C;
      const float mean = p.mean[row], rstd = p.rstd[row];
      float xhat[MAXV][VEC], dy[MAXV][VEC];
      float a1 = 0.f, a2 = 0.f;
#pragma unroll
      for (int i = 0; i < MAXV; ++i) {
        const int64_t c = warp_row_channel<VEC>(lane, i);
        if (c < C) {
          axis_row<T, VEC>(p, src, j, c, xhat[i]);
          load_vec<T, VEC>(dyp + c, dy[i]);
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            xhat[i][k] = (xhat[i][k] - mean) * rstd;
            const float gy = dy[i][k] * p.gamma[c + k];
            a1 += gy;
            a2 += gy * xhat[i][k];
          }
        }
      }
      a1 = warp_sum(a1) / static_cast<float>(C);
      a2 = warp_sum(a2) / static_cast<float>(C);
#pragma unroll
      for (int i = 0; i < MAXV; ++i) {
        const int64_t c = warp_row_channel<VEC>(lane, i);
        if (c < C) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            g[i][k] += rstd * (dy[i][k] * p.gamma[c + k] - a1 - xhat[i][k] * a2);
            atomicAdd(&s_gamma[axis_sum_slot(lane, i, k, VEC)], dy[i][k] * xhat[i][k]);
            atomicAdd(&s_beta[axis_sum_slot(lane, i, k, VEC)], dy[i][k]);
          }
        }
      }
    }
    T* dx = tok >= 0 ? static_cast<T*>(p.dx) + tok * C : nullptr;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int64_t c = warp_row_channel<VEC>(lane, i);
      if (c < C) {
        if (dx) store_vec<T, VEC>(dx + c, g[i]);
#pragma unroll
        for (int k = 0; k < VEC; ++k) atomicAdd(&s_pos[axis_sum_slot(lane, i, k, VEC)], g[i][k]);
      }
    }
  }
  __syncthreads();
  const int64_t part = (static_cast<int64_t>(blockIdx.x) * (p.A + 1) + j) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const int64_t slice = c / VEC;
    const int64_t slot = axis_sum_slot(static_cast<int>(slice % 32), static_cast<int>(slice / 32), static_cast<int>(c % VEC), VEC);
    p.part_pos[part + c] = s_pos[slot];
    if (NORM) {
      p.part_gamma[part + c] = s_gamma[slot];
      p.part_beta[part + c] = s_beta[slot];
    }
  }
}

template <typename T, int VEC>
static int launch(const AxisGatherParams& p, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>((p.gamma ? 3 : 1) * axis_sum_row(p.channels, VEC)) * sizeof(float);
  const auto kernel = p.gamma ? axis_gather_bwd_kernel<T, VEC, true> : axis_gather_bwd_kernel<T, VEC, false>;
  return launch_kernel(kernel, axis_grid(p), kAxisWarps * 32, smem, stream, p);
}

int axis_gather_bwd_launch(const AxisGatherParams& p, void* stream) {
  PVDM_DISPATCH_DTYPE_VEC(p.dtype, p.vec, launch, p, static_cast<cudaStream_t>(stream))
}

}  // namespace pvdm
