// Device helpers for the axis-gather kernels: the launch grid and which grid token a sequence row reads.
#pragma once
#include "axis_gather.h"
#include "row_layernorm.cuh"

namespace pvdm {

// Both kernels run blocks of (lines_per_block lines, one position j): (line chunks, A + 1).
inline dim3 axis_grid(const AxisGatherParams& p) {
  return dim3(static_cast<unsigned>((p.lines + p.lines_per_block - 1) / p.lines_per_block),
              static_cast<unsigned>(p.A + 1));
}

// Grid token of line m at position j (only meaningful for j < A).
__device__ __forceinline__ int64_t axis_token(const AxisGatherParams& p, int64_t m, int64_t j) {
  const int64_t o2 = m % p.O2, o1 = (m / p.O2) % p.O1, b = m / (p.O2 * p.O1);
  return b * p.tokens + o1 * p.s1 + o2 * p.s2 + j * p.sj;
}

// Row values S[m, j, c .. c+VEC) in float32: the grid token (or the appended token) plus pos[j].
template <typename T, int VEC>
__device__ __forceinline__ void axis_row(const AxisGatherParams& p, const T* src, int64_t j, int64_t c,
                                         float (&s)[VEC]) {
  if (src) {
    load_vec<T, VEC>(src + c, s);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) s[k] = p.token[c + k];
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) s[k] += p.pos[j * p.channels + c + k];
}

}  // namespace pvdm
