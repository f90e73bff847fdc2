#include <cmath>
#include <stdexcept>
#include <string>

#include "../kernels/group_norm_silu.h"
#include "launchers.h"

namespace pvdm {

static void fail(const std::string& msg) { throw std::invalid_argument("group_norm_silu: " + msg); }

static GnSiluParams make_params(const GnSiluArgs& a) {
  if (a.batch <= 0 || a.channels <= 0 || a.length <= 0) fail("batch, channels and length must be positive");
  if (a.groups <= 0 || a.channels % a.groups != 0)
    fail("channels (" + std::to_string(a.channels) + ") must be a positive multiple of num_groups (" +
         std::to_string(a.groups) + ")");
  const int64_t ns = static_cast<int64_t>(a.segments.size());
  if (ns < 1 || ns > kGnMaxSegments) fail("between 1 and " + std::to_string(kGnMaxSegments) + " segments supported");
  if (a.dtype < kFloat32 || a.dtype > kBFloat16) fail("dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
  if (!(a.eps >= 0.0) || !std::isfinite(a.eps)) fail("eps must be finite and non-negative");
  if (!a.x || !a.weight || !a.bias || !a.mean || !a.rstd) fail("x, weight, bias, mean and rstd pointers are required");
  if (a.batch * a.groups * ns > 0x7fffffffLL) fail("batch * num_groups * segments exceeds the launch grid");

  GnSiluParams p{};
  int64_t total = 0;
  for (int64_t i = 0; i < ns; ++i) {
    if (a.segments[i] <= 0) fail("segment lengths must be positive");
    p.seg_start[i] = total;
    p.seg_len[i] = a.segments[i];
    total += a.segments[i];
  }
  if (total != a.length)
    fail("segments sum to " + std::to_string(total) + " but x has length " + std::to_string(a.length));
  p.x = reinterpret_cast<const void*>(a.x);
  p.y = reinterpret_cast<void*>(a.y);
  p.dy = reinterpret_cast<const void*>(a.dy);
  p.dx = reinterpret_cast<void*>(a.dx);
  p.weight = reinterpret_cast<const float*>(a.weight);
  p.bias = reinterpret_cast<const float*>(a.bias);
  p.scale = reinterpret_cast<const float*>(a.scale);
  p.shift = reinterpret_cast<const float*>(a.shift);
  p.mean = reinterpret_cast<float*>(a.mean);
  p.rstd = reinterpret_cast<float*>(a.rstd);
  p.dweight_part = reinterpret_cast<float*>(a.dweight_part);
  p.dbias_part = reinterpret_cast<float*>(a.dbias_part);
  p.dscale_part = reinterpret_cast<float*>(a.dscale_part);
  p.dshift_part = reinterpret_cast<float*>(a.dshift_part);
  p.batch = a.batch;
  p.channels = a.channels;
  p.length = a.length;
  p.groups = a.groups;
  p.num_segments = ns;
  p.eps = static_cast<float>(a.eps);
  p.apply_silu = a.apply_silu;
  p.dtype = a.dtype;
  return p;
}

void gn_silu_fwd(const GnSiluArgs& a) {
  const GnSiluParams p = make_params(a);
  if (!a.y) fail("output pointer y is required");
  require_cuda_device("group_norm_silu forward");
#ifdef PVDM_WITH_CUDA
  check_launch(gn_silu_fwd_launch(p, reinterpret_cast<void*>(a.stream)), "group_norm_silu forward");
#endif
}

void gn_silu_bwd(const GnSiluArgs& a) {
  const GnSiluParams p = make_params(a);
  if (!a.dy || !a.dx || !a.dweight_part || !a.dbias_part || !a.dscale_part || !a.dshift_part)
    fail("dy, dx and the four partial-sum pointers are required");
  require_cuda_device("group_norm_silu backward");
#ifdef PVDM_WITH_CUDA
  check_launch(gn_silu_bwd_launch(p, reinterpret_cast<void*>(a.stream)), "group_norm_silu backward");
#endif
}

}  // namespace pvdm
