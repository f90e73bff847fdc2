// Launchers for the axis-gather kernels: validate every tensor (dtype, shape, contiguity) in user
// terms, then hand a plain parameter block to kernels/. No allocation, no synchronisation.
#include <string>

#include "../kernels/axis_gather.h"
#include "launchers.h"

namespace pvdm {

static constexpr const char* kWho = "axis_gather";

static void fail(const std::string& msg) { fail_arg(kWho, msg); }

static AxisGatherParams axis_params(const AxisGatherArgs& a, const char* op) {
  if (a.grid.size() != 3 || a.grid[0] <= 0 || a.grid[1] <= 0 || a.grid[2] <= 0)
    fail("grid must be three positive sizes (T, h, w)");
  if (a.axis < 0 || a.axis > 2) fail("axis must be 0 (xy), 1 (yt) or 2 (xt), got " + std::to_string(a.axis));
  if (a.lines_per_block <= 0) fail("lines_per_block must be positive");
  check_float_input(kWho, "x", a.x);
  if (a.x.shape.size() != 3 || a.x.shape[0] <= 0 || a.x.shape[2] <= 0) fail("x must be (B, T*h*w, C) with B, C > 0");
  const int64_t T = a.grid[0], H = a.grid[1], W = a.grid[2];
  AxisGatherParams p{};
  p.dtype = a.x.dtype;
  p.batch = a.x.shape[0], p.tokens = T * H * W, p.channels = a.x.shape[2];
  const int64_t B = p.batch, N = p.tokens, C = p.channels;
  check_max_channels(kWho, C, kAxisMaxChannels);
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
  p.x = tensor_ptr<const void>(a.x);
  p.token = tensor_ptr<const float>(a.token);
  p.pos = tensor_ptr<const float>(a.pos);
  p.gamma = tensor_ptr<const float>(a.gamma);
  p.vec = C % vec16_elements(p.dtype) == 0 && aligned16(a.x);
  return p;
}

void axis_gather_fwd(const AxisGatherArgs& a) {
  const char* op = "axis_gather forward";
  AxisGatherParams p = axis_params(a, op);
  const int64_t M = p.lines, S = p.A + 1, C = p.channels;
  check_tensor(op, "s", a.s, p.dtype, {M, S, C});
  const LayerNormFwdArgs ln{a.gamma, a.beta, a.y, a.mean, a.rstd};
  check_layernorm_fwd(kWho, op, ln, p.dtype, {M, S}, C, a.eps);
  set_layernorm_fwd(p, ln, a.eps);
  p.s = tensor_ptr<void>(a.s);
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
    require_absent(kWho, a.dy, "dy", kWithoutLayerNorm);
    require_absent(kWho, a.mean, "mean", kWithoutLayerNorm);
    require_absent(kWho, a.rstd, "rstd", kWithoutLayerNorm);
    require_absent(kWho, a.part_gamma, "part_gamma", kWithoutLayerNorm);
    require_absent(kWho, a.part_beta, "part_beta", kWithoutLayerNorm);
  }
  p.ds = tensor_ptr<const void>(a.ds);
  p.dy = tensor_ptr<const void>(a.dy);
  p.dx = tensor_ptr<void>(a.dx);
  p.mean = tensor_ptr<float>(a.mean);
  p.rstd = tensor_ptr<float>(a.rstd);
  p.part_pos = tensor_ptr<float>(a.part_pos);
  p.part_gamma = tensor_ptr<float>(a.part_gamma);
  p.part_beta = tensor_ptr<float>(a.part_beta);
  p.vec = p.vec && aligned16(a.ds) && aligned16(a.dy) && aligned16(a.dx);
  require_cuda_device(op);
#ifdef PVDM_WITH_CUDA
  check_launch(axis_gather_bwd_launch(p, reinterpret_cast<void*>(a.stream)), op);
#endif
}

}  // namespace pvdm
