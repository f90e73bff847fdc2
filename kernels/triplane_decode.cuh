// Device helpers for the triplane decode kernels.
#pragma once
#include "row_layernorm.cuh"
#include "triplane_decode.h"

namespace pvdm {

// Tokens B*T*h*w of the volume.
__host__ __device__ __forceinline__ int64_t tri_tokens(const TriplaneParams& p) {
  return p.batch * p.frames * p.height * p.width;
}

// Blocks of the row kernels, which run one warp per token.
inline unsigned tri_row_blocks(const TriplaneParams& p) {
  return static_cast<unsigned>((tri_tokens(p) + kTriWarps - 1) / kTriWarps);
}

// Element offsets of the three plane rows that token n = ((b*T + t)*h + y)*w + x reads.
struct TriRows {
  int64_t xy, yt, xt;
};

__device__ __forceinline__ TriRows tri_rows(const TriplaneParams& p, int64_t n) {
  const int64_t x = n % p.width, y = (n / p.width) % p.height, bt = n / (p.width * p.height);
  const int64_t b = bt / p.frames;
  return TriRows{((b * p.height + y) * p.width + x) * p.channels, (bt * p.width + x) * p.channels,
                 (bt * p.height + y) * p.channels};
}

// V[c .. c+VEC) of one token, in float32.
template <typename T, int VEC>
__device__ __forceinline__ void tri_volume(const TriplaneParams& p, const TriRows& r, int64_t c, float (&v)[VEC]) {
  float a[VEC], b[VEC];
  load_vec<T, VEC>(static_cast<const T*>(p.p_xy) + r.xy + c, v);
  load_vec<T, VEC>(static_cast<const T*>(p.p_yt) + r.yt + c, a);
  load_vec<T, VEC>(static_cast<const T*>(p.p_xt) + r.xt + c, b);
#pragma unroll
  for (int k = 0; k < VEC; ++k) v[k] = (v[k] + a[k]) + b[k];  // the reference's order
}

int triplane_ln_means_launch(const TriplaneParams& p, void* stream);

}  // namespace pvdm
