// Backward, axis sums: one block per (batch, VEC-channel slice) walks the whole (T, h, w) volume once.
// Each thread owns grid positions (y, x) and loops over t, so dP_xy (sum over t) stays in registers;
// dP_yt (sum over y) and dP_xt (sum over x) are accumulated in shared memory: the x-sum first within
// the warp (lanes hold consecutive positions, so equal rows y are contiguous lanes), then one shared
// atomic per row segment. Every output element is owned by exactly one block: no global atomics.
#include "triplane_decode.cuh"

namespace pvdm {

// The segments of a warp whose lanes hold non-decreasing keys: bit s of `steps` says whether the lane
// `1 << s` further down has the same key; `head` marks the first lane of each run of equal keys. The
// keys stay the same for every value summed at one position, so this runs once per position block.
__device__ __forceinline__ unsigned warp_segments(int key, bool& head) {
  const int lane = threadIdx.x & 31;
  unsigned steps = 0;
#pragma unroll
  for (int s = 0; s < 5; ++s) {
    const int k = __shfl_down_sync(0xffffffffu, key, 1 << s);
    if (lane + (1 << s) < 32 && k == key) steps |= 1u << s;
  }
  const int prev = __shfl_up_sync(0xffffffffu, key, 1);  // every lane shuffles: no short-circuit
  head = lane == 0 || prev != key;
  return steps;
}

// Sum of v over the lanes of the lane's segment (from warp_segments), valid in the segment's head.
__device__ __forceinline__ float segmented_warp_sum(float v, unsigned steps) {
#pragma unroll
  for (int s = 0; s < 5; ++s) {
    const float o = __shfl_down_sync(0xffffffffu, v, 1 << s);
    if (steps & (1u << s)) v += o;
  }
  return v;
}

// Frames whose loads a thread issues together: 4 of dV alone, 2 with the LayerNorm (dV, dY, the volume
// rows and the row statistics each). nvcc 13, sm_90, 16-bit: 72 registers without the LayerNorm; with
// it 128 (24 bytes spilled), two blocks an SM, where 4 frames took 202 (one block: 192 blocks at the
// base shapes would run in two waves on an H100).
template <bool NORM>
struct SumFrames {
  static constexpr int value = NORM ? 2 : 4;
};

template <typename T, int VEC, bool NORM>
__global__ void __launch_bounds__(kTriSumThreads) triplane_sums_kernel(const TriplaneParams p) {
  constexpr int kFrames = SumFrames<NORM>::value;
  extern __shared__ float smem[];
  __shared__ float scratch[kTriSumStaticSmemBytes / sizeof(float)];
  const int64_t C = p.channels, T_ = p.frames, H = p.height, W = p.width;
  const int64_t nv = C / VEC;
  const int64_t b = blockIdx.x / nv, c0 = (blockIdx.x % nv) * VEC;
  // Channel-major (VEC, T, w) and (VEC, T, h): the lanes of a warp (consecutive x) add to consecutive
  // words, free of bank conflicts (a (T, w, VEC) layout puts lanes VEC words apart: 8-way at VEC 8).
  float* s_yt = smem;
  float* s_xt = smem + T_ * W * VEC;
  for (int64_t i = threadIdx.x; i < T_ * (W + H) * VEC; i += blockDim.x) smem[i] = 0.f;
  __syncthreads();

  const T* dv = static_cast<const T*>(p.dv);
  const T* dyp = static_cast<const T*>(p.dy);
  float dg[VEC], db[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) dg[k] = db[k] = 0.f;
  float gamma[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) gamma[k] = NORM ? p.gamma[c0 + k] : 0.f;

  // The position and frame loops are uniform across the block so that every lane takes part in the
  // shuffles. A thread first issues the loads of kFrames frames (dV, and with the LayerNorm dY, the
  // volume rows and the row statistics), then sums them: several loads in flight per thread instead of
  // one at a time.
  for (int64_t p0 = 0; p0 < H * W; p0 += blockDim.x) {
    const int64_t pos = p0 + threadIdx.x;
    const bool valid = pos < H * W;
    const int64_t y = valid ? pos / W : H;  // past-the-end lanes form their own (last) segment
    const int64_t x = valid ? pos % W : 0;
    bool head;
    const unsigned steps = warp_segments(static_cast<int>(y), head);
    float acc_xy[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc_xy[k] = 0.f;
    for (int64_t t0 = 0; t0 < T_; t0 += kFrames) {
      float g[kFrames][VEC];
      float dy[NORM ? kFrames : 1][VEC], v[NORM ? kFrames : 1][VEC], st[NORM ? kFrames : 1][4];
#pragma unroll
      for (int u = 0; u < kFrames; ++u) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) g[u][k] = 0.f;
        if (valid && t0 + u < T_) {
          const int64_t n = ((b * T_ + t0 + u) * H + y) * W + x;
          load_vec<T, VEC>(dv + n * C + c0, g[u]);
          if constexpr (NORM) {
            tri_volume<T, VEC>(p, tri_rows(p, n), c0, v[u]);
            load_vec<T, VEC>(dyp + n * C + c0, dy[u]);
            st[u][0] = p.mean[n], st[u][1] = p.rstd[n], st[u][2] = p.a1[n], st[u][3] = p.a2[n];
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kFrames; ++u) {
        const int64_t t = t0 + u;
        if (t >= T_) break;  // uniform across the block
        if (valid) {
          if constexpr (NORM) {
            const float mean = st[u][0], rstd = st[u][1], a1 = st[u][2], a2 = st[u][3];
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
              const float xhat = (v[u][k] - mean) * rstd;
              g[u][k] += rstd * (dy[u][k] * gamma[k] - a1 - xhat * a2);
              dg[k] += dy[u][k] * xhat;
              db[k] += dy[u][k];
            }
          }
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            acc_xy[k] += g[u][k];
            atomicAdd(&s_yt[(k * T_ + t) * W + x], g[u][k]);
          }
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float row = segmented_warp_sum(g[u][k], steps);
          if (head && valid) atomicAdd(&s_xt[(k * T_ + t) * H + y], row);
        }
      }
    }
    if (valid) {
      float* out = p.d_xy + ((b * H + y) * W + x) * C + c0;
#pragma unroll
      for (int k = 0; k < VEC; ++k) out[k] = acc_xy[k];
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < T_ * W * VEC; i += blockDim.x) {
    const int64_t tx = i / VEC, k = i % VEC;
    p.d_yt[(b * T_ * W + tx) * C + c0 + k] = s_yt[k * T_ * W + tx];
  }
  for (int64_t i = threadIdx.x; i < T_ * H * VEC; i += blockDim.x) {
    const int64_t ty = i / VEC, k = i % VEC;
    p.d_xt[(b * T_ * H + ty) * C + c0 + k] = s_xt[k * T_ * H + ty];
  }
  if constexpr (NORM) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float sg = block_sum(dg[k], scratch);
      const float sb = block_sum(db[k], scratch);
      if (threadIdx.x == 0) {
        p.dgamma_part[b * C + c0 + k] = sg;
        p.dbeta_part[b * C + c0 + k] = sb;
      }
    }
  }
}

template <typename T, int VEC, bool NORM>
static int launch_sums(const TriplaneParams& p, cudaStream_t stream) {
  const int64_t vec_smem = p.frames * (p.width + p.height) * VEC * 4;
  auto kernel = triplane_sums_kernel<T, VEC, NORM>;
  // CUDA's default 48 KB per block covers static and dynamic shared memory together: the LayerNorm
  // variant's static `scratch` (32 floats) counts, so opt in whenever the sum can pass 48 KB.
  if (vec_smem + kTriSumStaticSmemBytes > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(vec_smem));
    if (e != cudaSuccess) {
      cudaGetLastError();  // the failed call also set the runtime's last error: do not fail the next launch
      return static_cast<int>(e);
    }
  }
  const unsigned blocks = static_cast<unsigned>(p.batch * (p.channels / VEC));
  return launch_kernel(kernel, blocks, kTriSumThreads, static_cast<size_t>(vec_smem), stream, p);
}

template <typename T, int VEC>
static int launch(const TriplaneParams& p, cudaStream_t stream) {
  if (!p.gamma) return launch_sums<T, VEC, false>(p, stream);
  const int e = triplane_ln_means_launch(p, stream);
  if (e != 0) return e;
  return launch_sums<T, VEC, true>(p, stream);
}

int triplane_bwd_launch(const TriplaneParams& p, void* stream) {
  PVDM_DISPATCH_DTYPE_VEC(p.dtype, p.vec, launch, p, static_cast<cudaStream_t>(stream))
}

}  // namespace pvdm
