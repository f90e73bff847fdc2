// Launchers for the triplane decode kernels: validate every tensor (dtype, shape, contiguity) in user
// terms, then hand a plain parameter block to kernels/. No allocation, no synchronisation.
#include <string>

#include "../kernels/triplane_decode.h"
#include "launchers.h"

namespace pvdm {

static constexpr const char* kWho = "triplane_decode";

static void fail(const std::string& msg) { fail_arg(kWho, msg); }

// Shapes from the planes; checks the planes, LayerNorm weights and the shared sizes.
static TriplaneParams plane_params(const TriplaneArgs& a, const char* op) {
  check_float_input(kWho, "p_xy", a.p_xy);
  if (a.p_xy.shape.size() != 4) fail("p_xy must be (B, h, w, C), got shape " + shape_str(a.p_xy.shape));
  if (!a.p_yt.present || a.p_yt.shape.size() != 4)
    fail("p_yt must be (B, T, w, C), got " + (a.p_yt.present ? "shape " + shape_str(a.p_yt.shape) : std::string("None")));
  TriplaneParams p{};
  p.dtype = a.p_xy.dtype;
  p.batch = a.p_xy.shape[0], p.height = a.p_xy.shape[1], p.width = a.p_xy.shape[2], p.channels = a.p_xy.shape[3];
  p.frames = a.p_yt.shape[1];
  if (p.batch <= 0 || p.frames <= 0 || p.height <= 0 || p.width <= 0 || p.channels <= 0)
    fail("every plane size must be positive, got p_xy " + shape_str(a.p_xy.shape) + " and p_yt " +
         shape_str(a.p_yt.shape));
  check_max_channels(kWho, p.channels, kTriMaxChannels);
  const int64_t B = p.batch, T = p.frames, H = p.height, W = p.width, C = p.channels;
  check_tensor(op, "p_xy", a.p_xy, p.dtype, {B, H, W, C});
  check_tensor(op, "p_yt", a.p_yt, p.dtype, {B, T, W, C});
  check_tensor(op, "p_xt", a.p_xt, p.dtype, {B, T, H, C});
  if (a.gamma.present) check_tensor(op, "gamma", a.gamma, kFloat32, {C});
  if (B * T * H * W > (int64_t(1) << 40) || (B * T * H * W + kTriWarps - 1) / kTriWarps > 0x7fffffffLL)
    fail("the token volume is too large for one launch grid");
  p.p_xy = tensor_ptr<const void>(a.p_xy);
  p.p_yt = tensor_ptr<const void>(a.p_yt);
  p.p_xt = tensor_ptr<const void>(a.p_xt);
  p.gamma = tensor_ptr<const float>(a.gamma);
  p.vec = C % vec16_elements(p.dtype) == 0 && aligned16(a.p_xy) && aligned16(a.p_yt) && aligned16(a.p_xt);
  return p;
}

void triplane_decode_fwd(const TriplaneArgs& a) {
  const char* op = "triplane_decode forward";
  TriplaneParams p = plane_params(a, op);
  const int64_t B = p.batch, N = p.frames * p.height * p.width, C = p.channels;
  check_tensor(op, "v", a.v, p.dtype, {B, N, C});
  const LayerNormFwdArgs ln{a.gamma, a.beta, a.y, a.mean, a.rstd};
  check_layernorm_fwd(kWho, op, ln, p.dtype, {B, N}, C, a.eps);
  set_layernorm_fwd(p, ln, a.eps);
  p.v = tensor_ptr<void>(a.v);
  p.vec = p.vec && aligned16(a.v) && aligned16(a.y);
  require_cuda_device(op);
#ifdef PVDM_WITH_CUDA
  check_launch(triplane_fwd_launch(p, reinterpret_cast<void*>(a.stream)), op);
#endif
}

void triplane_decode_bwd(const TriplaneArgs& a) {
  const char* op = "triplane_decode backward";
  TriplaneParams p = plane_params(a, op);
  const int64_t B = p.batch, T = p.frames, H = p.height, W = p.width, N = T * H * W, C = p.channels;
  check_tensor(op, "dv", a.dv, p.dtype, {B, N, C});
  if (p.gamma) {
    check_tensor(op, "dy", a.dy, p.dtype, {B, N, C});
    check_tensor(op, "mean", a.mean, kFloat32, {B, N});
    check_tensor(op, "rstd", a.rstd, kFloat32, {B, N});
    check_tensor(op, "a1", a.a1, kFloat32, {B, N});
    check_tensor(op, "a2", a.a2, kFloat32, {B, N});
    check_tensor(op, "dgamma_part", a.dgamma_part, kFloat32, {B, C});
    check_tensor(op, "dbeta_part", a.dbeta_part, kFloat32, {B, C});
  } else {
    require_absent(kWho, a.dy, "dy", kWithoutLayerNorm);
    require_absent(kWho, a.mean, "mean", kWithoutLayerNorm);
    require_absent(kWho, a.rstd, "rstd", kWithoutLayerNorm);
    require_absent(kWho, a.a1, "a1", kWithoutLayerNorm);
    require_absent(kWho, a.a2, "a2", kWithoutLayerNorm);
    require_absent(kWho, a.dgamma_part, "dgamma_part", kWithoutLayerNorm);
    require_absent(kWho, a.dbeta_part, "dbeta_part", kWithoutLayerNorm);
  }
  check_tensor(op, "d_xy", a.d_xy, kFloat32, {B, H, W, C});
  check_tensor(op, "d_yt", a.d_yt, kFloat32, {B, T, W, C});
  check_tensor(op, "d_xt", a.d_xt, kFloat32, {B, T, H, C});
  p.dv = tensor_ptr<const void>(a.dv);
  p.dy = tensor_ptr<const void>(a.dy);
  p.mean = tensor_ptr<float>(a.mean);
  p.rstd = tensor_ptr<float>(a.rstd);
  p.a1 = tensor_ptr<float>(a.a1);
  p.a2 = tensor_ptr<float>(a.a2);
  p.dgamma_part = tensor_ptr<float>(a.dgamma_part);
  p.dbeta_part = tensor_ptr<float>(a.dbeta_part);
  p.d_xy = tensor_ptr<float>(a.d_xy);
  p.d_yt = tensor_ptr<float>(a.d_yt);
  p.d_xt = tensor_ptr<float>(a.d_xt);
  p.vec = p.vec && aligned16(a.dv) && aligned16(a.dy) && aligned16(a.d_xy) && aligned16(a.d_yt) && aligned16(a.d_xt);
  if (triplane_sum_smem_bytes(p) > kTriMaxSmemBytes)
    fail("T*(h+w) = " + std::to_string(T * (H + W)) + " needs " + std::to_string(triplane_sum_smem_bytes(p)) +
         " bytes of shared memory (limit " + std::to_string(kTriMaxSmemBytes) + "); use the 'triton' backend");
  if (B * (C / (p.vec ? vec16_elements(p.dtype) : 1)) > 0x7fffffffLL) fail("batch * channels exceeds the launch grid");
  require_cuda_device(op);
#ifdef PVDM_WITH_CUDA
  check_launch(triplane_bwd_launch(p, reinterpret_cast<void*>(a.stream)), op);
#endif
}

}  // namespace pvdm
