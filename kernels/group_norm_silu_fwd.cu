// Forward: statistics per (batch, group, segment) in two passes (mean, then centred variance), then
// normalise, affine, FiLM and SiLU in a third pass. One block per region; the region is re-read from L2.
#include "group_norm_silu.cuh"

namespace pvdm {

template <typename T>
__global__ void __launch_bounds__(kGnThreads) gn_silu_fwd_kernel(const GnSiluParams p) {
  __shared__ float scratch[32];
  const GnRegion r = gn_region(p);
  const T* x = static_cast<const T*>(p.x) + r.row0;
  T* y = static_cast<T*>(p.y) + r.row0;

  float acc = 0.f;
  for (int64_t e = threadIdx.x; e < r.count; e += blockDim.x) {
    const int64_t c = e / r.len;
    acc += load_f(x + c * p.length + (e - c * r.len));
  }
  const float mean = block_sum(acc, scratch) / static_cast<float>(r.count);
  acc = 0.f;
  for (int64_t e = threadIdx.x; e < r.count; e += blockDim.x) {
    const int64_t c = e / r.len;
    const float d = load_f(x + c * p.length + (e - c * r.len)) - mean;
    acc += d * d;
  }
  const float var = block_sum(acc, scratch) / static_cast<float>(r.count);
  const float rstd = 1.f / sqrtf(var + p.eps);
  if (threadIdx.x == 0) {
    p.mean[r.stat] = mean;
    p.rstd[r.stat] = rstd;
  }
  for (int64_t e = threadIdx.x; e < r.count; e += blockDim.x) {
    const int64_t c = e / r.len, off = c * p.length + (e - c * r.len), ch = r.c0 + c;
    float mul, add;
    gn_film(p, r.b, ch, mul, add);
    const float a = (load_f(x + off) - mean) * rstd * p.weight[ch] + p.bias[ch];
    const float z = a * mul + add;
    store_f(y + off, p.apply_silu ? z * gn_sigmoid(z) : z);
  }
}

template <typename T>
static int launch(const GnSiluParams& p, cudaStream_t stream) {
  const int64_t blocks = p.batch * p.groups * p.num_segments;
  gn_silu_fwd_kernel<T><<<static_cast<unsigned>(blocks), kGnThreads, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
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
