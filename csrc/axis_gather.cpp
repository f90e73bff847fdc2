// Launchers for the axis-gather kernels: validate every tensor (dtype, shape, contiguity) in user
// terms, then hand a plain parameter block to kernels/. No allocation, no synchronisation.
#include <cmath>
#include <stdexcept>
#include <string>

#include "../kernels/axis_gather.h"
#include "launchers.h"

namespace pvdm {

static void fail(const std::string& msg) { throw std::invalid_argument("axis_gather: " + msg); }

static bool aligned16(const TensorArg& t) { return !t.present || t.ptr % 16 == 0; }

static AxisGatherParams axis_params(const AxisGatherArgs& a, const char* op) {
  if (a.grid.size() != 3 || a.grid[0] <= 0 || a.grid[1] <= 0 || a.grid[2] <= 0)
    fail("grid must be three positive sizes (T, h, w)");
  if (a.axis < 0 || a.axis > 2) fail("axis must be 0 (xy), 1 (yt) or 2 (xt), got " + std::to_string(a.axis));
  if (a.lines_per_block <= 0) fail("lines_per_block must be positive");
  if (!a.x.present) fail("x is required (got None)");
  if (a.x.dtype < kFloat32 || a.x.dtype > kBFloat16)
    fail("x must be float32, float16 or bfloat16 (dtype code " + std::to_string(a.x.dtype) + ")");
  if (a.x.shape.size() != 3 || a.x.shape[0] <= 0 || a.x.shape[2] <= 0) fail("x must be (B, T*h*w, C) with B, C > 0");
  const int64_t T = a.grid[0], H = a.grid[1], W = a.grid[2];
  AxisGatherParams p{};
  p.dtype = a.x.dtype;
  p.batch = a.x.shape[0], p.tokens = T * H * W, p.channels = a.x.shape[2];
  const int64_t B = p.batch, N = p.tokens, C = p.channels;
  if (C > kAxisMaxChannels)
    fail("at most " + std::to_string(kAxisMaxChannels) + " channels are supported by the CUDA kernels, got " +
         std::to_string(C) + "; use the 'triton' backend");
  const int64_t geo[3][6] = {{T, H, W, W, 1, H * W}, {H, T, W, H * W, 1, W}, {W, T, H, H * W, W, 1}};
  const int64_t* g = geo[a.axis];
  p.A = g[0], p.O1 = g[1], p.O2 = g[2], p.s1 = g[3], p.s2 = g[4], p.sj = g[5];
  p.lines = B * p.O1 * p.O2;
  p.lines_per_block = a.lines_per_block;
  if (p.A + 1 > 65535) fail("the axis length + 1 must fit a launch grid dimension (65535)");
  if ((p.lines + p.lines_per_block - 1) / p.lines_per_block > 0x7fffffffLL) fail("too many lines for one launch");
  check_tensor(op, "x", a.x, p.dtype, {B, N, C});
  check_tensor(op, "token", a.token, kFloat32, {C});
  check_tensor(op, "pos", a.pos, kFloat32, {p.A + 1, C});
  if (a.gamma.present) check_tensor(op, "gamma", a.gamma, kFloat32, {C});
  p.x = reinterpret_cast<const void*>(a.x.ptr);
  p.token = reinterpret_cast<const float*>(a.token.ptr);
  p.pos = reinterpret_cast<const float*>(a.pos.ptr);
  p.gamma = a.gamma.present ? reinterpret_cast<const float*>(a.gamma.ptr) : nullptr;
  const int64_t vec = 16 / (p.dtype == kFloat32 ? 4 : 2);
  p.vec = C % vec == 0 && aligned16(a.x);
  return p;
}

static void require_absent(const TensorArg& t, const char* name) {
  if (t.present) fail(std::string(name) + " must be None without LayerNorm weights");
}

void axis_gather_fwd(const AxisGatherArgs& a) {
  const char* op = "axis_gather forward";
  AxisGatherParams p = axis_params(a, op);
  const int64_t M = p.lines, S = p.A + 1, C = p.channels;
  check_tensor(op, "s", a.s, p.dtype, {M, S, C});
  if (a.gamma.present != a.beta.present) fail("pass both gamma and beta (the LayerNorm weight and bias), or neither");
  if (p.gamma) {
    check_tensor(op, "beta", a.beta, kFloat32, {C});
    check_tensor(op, "y", a.y, p.dtype, {M, S, C});
    check_tensor(op, "mean", a.mean, kFloat32, {M, S});
    check_tensor(op, "rstd", a.rstd, kFloat32, {M, S});
  } else {
    require_absent(a.y, "y");
    require_absent(a.mean, "mean");
    require_absent(a.rstd, "rstd");
  }
  if (!(a.eps >= 0.0) || !std::isfinite(a.eps)) fail("eps must be finite and non-negative");
  p.beta = p.gamma ? reinterpret_cast<const float*>(a.beta.ptr) : nullptr;
  p.s = reinterpret_cast<void*>(a.s.ptr);
  p.y = p.gamma ? reinterpret_cast<void*>(a.y.ptr) : nullptr;
  p.mean = p.gamma ? reinterpret_cast<float*>(a.mean.ptr) : nullptr;
  p.rstd = p.gamma ? reinterpret_cast<float*>(a.rstd.ptr) : nullptr;
  p.eps = static_cast<float>(a.eps);
  p.vec = p.vec && aligned16(a.s) && aligned16(a.y);
  require_cuda_device(op);
#ifdef PVDM_WITH_CUDA
  check_launch(axis_gather_fwd_launch(p, reinterpret_cast<void*>(a.stream)), op);
#endif
}

void axis_gather_bwd(const AxisGatherArgs& a) {
  const char* op = "axis_gather backward";
  AxisGatherParams p = axis_params(a, op);
  const int64_t M = p.lines, S = p.A + 1, C = p.channels;
  const int64_t blocks = (M + p.lines_per_block - 1) / p.lines_per_block;
  check_tensor(op, "ds", a.ds, p.dtype, {M, S, C});
  check_tensor(op, "dx", a.dx, p.dtype, {p.batch, p.tokens, C});
  check_tensor(op, "part_pos", a.part_pos, kFloat32, {blocks, S, C});
  if (p.gamma) {
    check_tensor(op, "dy", a.dy, p.dtype, {M, S, C});
    check_tensor(op, "mean", a.mean, kFloat32, {M, S});
    check_tensor(op, "rstd", a.rstd, kFloat32, {M, S});
    check_tensor(op, "part_gamma", a.part_gamma, kFloat32, {blocks, S, C});
    check_tensor(op, "part_beta", a.part_beta, kFloat32, {blocks, S, C});
  } else {
    require_absent(a.dy, "dy");
    require_absent(a.mean, "mean");
    require_absent(a.rstd, "rstd");
    require_absent(a.part_gamma, "part_gamma");
    require_absent(a.part_beta, "part_beta");
  }
  p.ds = reinterpret_cast<const void*>(a.ds.ptr);
  p.dy = p.gamma ? reinterpret_cast<const void*>(a.dy.ptr) : nullptr;
  p.dx = reinterpret_cast<void*>(a.dx.ptr);
  p.mean = p.gamma ? reinterpret_cast<float*>(a.mean.ptr) : nullptr;
  p.rstd = p.gamma ? reinterpret_cast<float*>(a.rstd.ptr) : nullptr;
  p.part_pos = reinterpret_cast<float*>(a.part_pos.ptr);
  p.part_gamma = p.gamma ? reinterpret_cast<float*>(a.part_gamma.ptr) : nullptr;
  p.part_beta = p.gamma ? reinterpret_cast<float*>(a.part_beta.ptr) : nullptr;
  p.vec = p.vec && aligned16(a.ds) && aligned16(a.dy) && aligned16(a.dx);
  require_cuda_device(op);
#ifdef PVDM_WITH_CUDA
  check_launch(axis_gather_bwd_launch(p, reinterpret_cast<void*>(a.stream)), op);
#endif
}

}  // namespace pvdm
