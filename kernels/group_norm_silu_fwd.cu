// Forward: statistics per (batch, group, segment) in two passes (mean, then centred variance), then
// normalise, affine, FiLM and SiLU in a third pass. One block per region; the region is re-read from L2.
// Each pass walks the region's channel rows (gn_rows): no per-element index arithmetic beyond a stride,
// per-channel factors once per row, VEC-element (16-byte) items when the layout allows.
#include "group_norm_silu.cuh"

namespace pvdm {

// This thread's share of sum(f(x)) over the region's cg rows of n items, into NA accumulators.
template <typename T, int VEC, int U, int NA, typename F>
__device__ __forceinline__ void gn_region_sum(const T* x, int64_t length, int64_t cg, int64_t n, const GnRows& w,
                                              float (&acc)[NA], F f) {
  for (int64_t c = w.group; c < cg; c += w.rows_per_pass) {
    const T* row = x + c * length;
    gn_row_walk<U>(n, w, [&](int64_t j, auto u) {
      constexpr int N = decltype(u)::value;
      float v[N][VEC];
      gn_load<T, VEC, N>(row, j, w.tpr, v);
#pragma unroll
      for (int k = 0; k < N; ++k)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[(VEC == 1 ? k : e) % NA] += f(v[k][e]);
    });
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kGnThreads) gn_silu_fwd_kernel(const GnSiluParams p) {
  constexpr int U = gn_unroll<VEC>(), NA = gn_accs<VEC>();
  __shared__ float scratch[32];
  const GnRegion r = gn_region(p);
  const T* x = static_cast<const T*>(p.x) + r.row0;
  T* y = static_cast<T*>(p.y) + r.row0;
  const int64_t cg = p.channels / p.groups, n = r.len / VEC;
  const GnRows w = gn_rows(cg, n, kGnThreads);

  float acc[NA] = {};
  gn_region_sum<T, VEC, U>(x, p.length, cg, n, w, acc, [](float v) { return v; });
  const float mean = block_sum(gn_total(acc), scratch) / static_cast<float>(r.count);
#pragma unroll
  for (int i = 0; i < NA; ++i) acc[i] = 0.f;
  gn_region_sum<T, VEC, U>(x, p.length, cg, n, w, acc, [mean](float v) { return (v - mean) * (v - mean); });
  const float var = block_sum(gn_total(acc), scratch) / static_cast<float>(r.count);
  const float rstd = 1.f / sqrtf(var + p.eps);
  if (threadIdx.x == 0) {
    p.mean[r.stat] = mean;
    p.rstd[r.stat] = rstd;
  }
  for (int64_t c = w.group; c < cg; c += w.rows_per_pass) {
    const int64_t ch = r.c0 + c;
    float mul, add;
    gn_film(p, r.b, ch, mul, add);
    // z = ((x - mean) * rstd * weight + bias) * mul + add, centred first as before (no cancellation).
    const float s1 = rstd * p.weight[ch] * mul, s0 = p.bias[ch] * mul + add;
    const T* row = x + c * p.length;
    T* out = y + c * p.length;
    gn_row_walk<U>(n, w, [&](int64_t j, auto u) {
      constexpr int N = decltype(u)::value;
      float v[N][VEC];
      gn_load<T, VEC, N>(row, j, w.tpr, v);
#pragma unroll
      for (int k = 0; k < N; ++k) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float z = (v[k][e] - mean) * s1 + s0;
          v[k][e] = gn_act(z, p.apply_silu);
        }
        gn_store<T, VEC>(out + (j + k * w.tpr) * VEC, v[k]);
      }
    });
  }
}

template <typename T>
static int launch(const GnSiluParams& p, cudaStream_t stream) {
  constexpr int V = vec16<T>();
  const dim3 blocks(static_cast<unsigned>(p.batch * p.groups * p.num_segments));
  if (gn_rows_vectorizable(p, V, {p.x, p.y}))
    return launch_kernel(gn_silu_fwd_kernel<T, V>, blocks, kGnThreads, 0, stream, p);
  return launch_kernel(gn_silu_fwd_kernel<T, 1>, blocks, kGnThreads, 0, stream, p);
}

int gn_silu_fwd_launch(const GnSiluParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case kFloat32: return launch<float>(p, s);
    case kFloat16: return launch<__half>(p, s);
    case kBFloat16: return launch<__nv_bfloat16>(p, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace pvdm
