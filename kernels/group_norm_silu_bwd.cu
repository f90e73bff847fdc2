// Backward: one block per (batch, group, segment). Pass 1, a group of <= 32 lanes per channel row,
// writes the per-channel partial sums for weight/bias/scale/shift (reduced over batch and segments on
// the host side by torch) and accumulates the two group sums that the input gradient needs; pass 2
// writes dx. Both walk channel rows as the forward does (gn_rows, gn_row_walk).
#include "group_norm_silu.cuh"

namespace pvdm {

// One channel's affine and FiLM factors, and the element-wise chain rule through them.
struct GnChannel {
  float w, bias, mul, add;
};

__device__ __forceinline__ GnChannel gn_channel(const GnSiluParams& p, int64_t b, int64_t ch) {
  GnChannel f;
  gn_film(p, b, ch, f.mul, f.add);
  f.w = p.weight[ch];
  f.bias = p.bias[ch];
  return f;
}

// dL/dz for the output gradient g at xhat; also returns a = xhat * w + bias.
__device__ __forceinline__ float gn_dz(const GnSiluParams& p, const GnChannel& f, float xhat, float g, float& a) {
  a = xhat * f.w + f.bias;
  if (!p.apply_silu) return g;
  const float z = a * f.mul + f.add, sig = gn_sigmoid(z);
  return g * sig * (1.f + z * (1.f - sig));
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kGnThreads) gn_silu_bwd_kernel(const GnSiluParams p) {
  constexpr int U = gn_unroll<VEC>(), NA = gn_accs<VEC>();
  __shared__ float scratch[32];
  const GnRegion r = gn_region(p);
  const T* x = static_cast<const T*>(p.x) + r.row0;
  const T* dy = static_cast<const T*>(p.dy) + r.row0;
  T* dx = static_cast<T*>(p.dx) + r.row0;
  const float mean = p.mean[r.stat], rstd = p.rstd[r.stat];
  const int64_t cg = p.channels / p.groups, n = r.len / VEC;

  // Pass 1. Per row: sum dz, dz * a, dz * xhat; da = dz * mul and dxhat = da * w are row-constant
  // multiples, applied to the row sums. The row loop's trip count is block-uniform (the shuffles).
  const GnRows w1 = gn_rows(cg, n, 32);
  float sum_dxhat = 0.f, sum_dxhat_xhat = 0.f;
  for (int64_t cb = 0; cb < cg; cb += w1.rows_per_pass) {
    const int64_t c = cb + w1.group, ch = r.c0 + c;
    float s_dz[NA] = {}, s_dz_a[NA] = {}, s_dz_xhat[NA] = {};
    GnChannel f{};
    if (c < cg) {
      f = gn_channel(p, r.b, ch);
      const T* xr = x + c * p.length;
      const T* gr = dy + c * p.length;
      gn_row_walk<U>(n, w1, [&](int64_t j, auto u) {
        constexpr int N = decltype(u)::value;
        float xv[N][VEC], gv[N][VEC];
        gn_load<T, VEC, N>(xr, j, w1.tpr, xv);
        gn_load<T, VEC, N>(gr, j, w1.tpr, gv);
#pragma unroll
        for (int k = 0; k < N; ++k)
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int i = (VEC == 1 ? k : e) % NA;
            const float xhat = (xv[k][e] - mean) * rstd;
            float a;
            const float dz = gn_dz(p, f, xhat, gv[k][e], a);
            s_dz[i] += dz;
            s_dz_a[i] += dz * a;
            s_dz_xhat[i] += dz * xhat;
          }
      });
    }
    const float t_dz = gn_group_sum(gn_total(s_dz), w1.tpr);
    const float t_dz_a = gn_group_sum(gn_total(s_dz_a), w1.tpr);
    const float t_dz_xhat = gn_group_sum(gn_total(s_dz_xhat), w1.tpr);
    if (c < cg && w1.lane == 0) {
      const int64_t part = (r.b * p.channels + ch) * p.num_segments + r.s;
      p.dshift_part[part] = t_dz;
      p.dscale_part[part] = t_dz_a;
      p.dweight_part[part] = f.mul * t_dz_xhat;
      p.dbias_part[part] = f.mul * t_dz;
      sum_dxhat += f.mul * f.w * t_dz;
      sum_dxhat_xhat += f.mul * f.w * t_dz_xhat;
    }
  }
  const float inv_n = 1.f / static_cast<float>(r.count);
  const float mean_dxhat = block_sum(sum_dxhat, scratch) * inv_n;
  const float mean_dxhat_xhat = block_sum(sum_dxhat_xhat, scratch) * inv_n;

  // Pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
  const GnRows w2 = gn_rows(cg, n, kGnThreads);
  for (int64_t c = w2.group; c < cg; c += w2.rows_per_pass) {
    const GnChannel f = gn_channel(p, r.b, r.c0 + c);
    const float wm = f.w * f.mul;
    const T* xr = x + c * p.length;
    const T* gr = dy + c * p.length;
    T* out = dx + c * p.length;
    gn_row_walk<U>(n, w2, [&](int64_t j, auto u) {
      constexpr int N = decltype(u)::value;
      float xv[N][VEC], gv[N][VEC];
      gn_load<T, VEC, N>(xr, j, w2.tpr, xv);
      gn_load<T, VEC, N>(gr, j, w2.tpr, gv);
#pragma unroll
      for (int k = 0; k < N; ++k) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float xhat = (xv[k][e] - mean) * rstd;
          float a;
          const float dxhat = gn_dz(p, f, xhat, gv[k][e], a) * wm;
          xv[k][e] = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        }
        gn_store<T, VEC>(out + (j + k * w2.tpr) * VEC, xv[k]);
      }
    });
  }
}

template <typename T>
static int launch(const GnSiluParams& p, cudaStream_t stream) {
  constexpr int V = vec16<T>();
  const dim3 blocks(static_cast<unsigned>(p.batch * p.groups * p.num_segments));
  if (gn_rows_vectorizable(p, V, {p.x, p.dy, p.dx}))
    return launch_kernel(gn_silu_bwd_kernel<T, V>, blocks, kGnThreads, 0, stream, p);
  return launch_kernel(gn_silu_bwd_kernel<T, 1>, blocks, kGnThreads, 0, stream, p);
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
