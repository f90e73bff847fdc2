// Backward: one block per (batch, group, segment). Pass 1, a warp per channel row, writes the
// per-channel partial sums for weight/bias/scale/shift (reduced over batch and segments on the host
// side by torch) and accumulates the two group sums that the input gradient needs; pass 2 writes dx.
#include "group_norm_silu.cuh"

namespace pvdm {

struct GnBwdTerms {
  float xhat, dz, a, da, dxhat;
};

template <typename T>
__device__ __forceinline__ GnBwdTerms gn_bwd_terms(const GnSiluParams& p, const T* x, const T* dy, int64_t off,
                                                   int64_t b, int64_t ch, float mean, float rstd) {
  GnBwdTerms t;
  float mul, add;
  gn_film(p, b, ch, mul, add);
  const float w = p.weight[ch];
  t.xhat = (load_f(x + off) - mean) * rstd;
  t.a = t.xhat * w + p.bias[ch];
  const float g = load_f(dy + off);
  if (p.apply_silu) {
    const float z = t.a * mul + add, sig = gn_sigmoid(z);
    t.dz = g * sig * (1.f + z * (1.f - sig));
  } else {
    t.dz = g;
  }
  t.da = t.dz * mul;
  t.dxhat = t.da * w;
  return t;
}

template <typename T>
__global__ void __launch_bounds__(kGnThreads) gn_silu_bwd_kernel(const GnSiluParams p) {
  __shared__ float scratch[32];
  const GnRegion r = gn_region(p);
  const T* x = static_cast<const T*>(p.x) + r.row0;
  const T* dy = static_cast<const T*>(p.dy) + r.row0;
  T* dx = static_cast<T*>(p.dx) + r.row0;
  const float mean = p.mean[r.stat], rstd = p.rstd[r.stat];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int64_t cg = p.channels / p.groups;

  float sum_dxhat = 0.f, sum_dxhat_xhat = 0.f;
  for (int64_t c = warp; c < cg; c += nwarps) {
    const int64_t ch = r.c0 + c;
    float s_dz = 0.f, s_dz_a = 0.f, s_da_xhat = 0.f, s_da = 0.f;
    for (int64_t l = lane; l < r.len; l += 32) {
      const GnBwdTerms t = gn_bwd_terms(p, x, dy, c * p.length + l, r.b, ch, mean, rstd);
      s_dz += t.dz;
      s_dz_a += t.dz * t.a;
      s_da_xhat += t.da * t.xhat;
      s_da += t.da;
      sum_dxhat += t.dxhat;
      sum_dxhat_xhat += t.dxhat * t.xhat;
    }
    s_dz = warp_sum(s_dz);
    s_dz_a = warp_sum(s_dz_a);
    s_da_xhat = warp_sum(s_da_xhat);
    s_da = warp_sum(s_da);
    if (lane == 0) {
      const int64_t part = (r.b * p.channels + ch) * p.num_segments + r.s;
      p.dshift_part[part] = s_dz;
      p.dscale_part[part] = s_dz_a;
      p.dweight_part[part] = s_da_xhat;
      p.dbias_part[part] = s_da;
    }
  }
  const float inv_n = 1.f / static_cast<float>(r.count);
  const float mean_dxhat = block_sum(sum_dxhat, scratch) * inv_n;
  const float mean_dxhat_xhat = block_sum(sum_dxhat_xhat, scratch) * inv_n;
  for (int64_t e = threadIdx.x; e < r.count; e += blockDim.x) {
    const int64_t c = e / r.len, off = c * p.length + (e - c * r.len);
    const GnBwdTerms t = gn_bwd_terms(p, x, dy, off, r.b, r.c0 + c, mean, rstd);
    store_f(dx + off, rstd * (t.dxhat - mean_dxhat - t.xhat * mean_dxhat_xhat));
  }
}

template <typename T>
static int launch(const GnSiluParams& p, cudaStream_t stream) {
  const int64_t blocks = p.batch * p.groups * p.num_segments;
  gn_silu_bwd_kernel<T><<<static_cast<unsigned>(blocks), kGnThreads, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int gn_silu_bwd_launch(const GnSiluParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case kFloat32: return launch<float>(p, s);
    case kFloat16: return launch<__half>(p, s);
    case kBFloat16: return launch<__nv_bfloat16>(p, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace pvdm
