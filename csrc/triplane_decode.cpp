// Launchers for the triplane decode kernels: validate every tensor (dtype, shape, contiguity) in user
// terms, then hand a plain parameter block to kernels/. No allocation, no synchronisation.
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "../kernels/triplane_decode.h"
#include "launchers.h"

namespace pvdm {

static std::string dims(const std::vector<int64_t>& v) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
  s << (v.size() == 1 ? ",)" : ")");
  return s.str();
}

static const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    default: return "an unsupported dtype";
  }
}

void check_tensor(const char* op, const char* name, const TensorArg& t, int dtype, const std::vector<int64_t>& shape) {
  const std::string who = std::string(op) + ": " + name;
  if (!t.present) throw std::invalid_argument(who + " is required (got None)");
  if (t.dtype != dtype)
    throw std::invalid_argument(who + " must be " + dtype_name(dtype) + ", got " + dtype_name(t.dtype) +
                                " (dtype code " + std::to_string(t.dtype) + ")");
  if (t.shape != shape) throw std::invalid_argument(who + " must have shape " + dims(shape) + ", got " + dims(t.shape));
  if (t.strides.size() != t.shape.size())
    throw std::invalid_argument(who + " has " + std::to_string(t.strides.size()) + " strides for " +
                                std::to_string(t.shape.size()) + " dimensions");
  int64_t expect = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] != 1 && t.strides[i] != expect)
      throw std::invalid_argument(who + " must be contiguous (strides " + dims(t.strides) + " for shape " +
                                  dims(t.shape) + "); call .contiguous() first");
    expect *= t.shape[i];
  }
  if (!t.ptr) throw std::invalid_argument(who + " is a null pointer");
}

static void fail(const std::string& msg) { throw std::invalid_argument("triplane_decode: " + msg); }

static void require_absent(const TensorArg& t, const char* name, const char* why) {
  if (t.present) fail(std::string(name) + " must be None " + why);
}

static bool aligned16(const TensorArg& t) { return !t.present || t.ptr % 16 == 0; }

// Shapes from the planes; checks the planes, LayerNorm weights and the shared sizes.
static TriplaneParams plane_params(const TriplaneArgs& a, const char* op) {
  if (!a.p_xy.present) fail("p_xy is required (got None)");
  if (a.p_xy.dtype < kFloat32 || a.p_xy.dtype > kBFloat16)
    fail("p_xy must be float32, float16 or bfloat16 (dtype code " + std::to_string(a.p_xy.dtype) + ")");
  if (a.p_xy.shape.size() != 4) fail("p_xy must be (B, h, w, C), got shape " + dims(a.p_xy.shape));
  if (!a.p_yt.present || a.p_yt.shape.size() != 4)
    fail("p_yt must be (B, T, w, C), got " + (a.p_yt.present ? "shape " + dims(a.p_yt.shape) : std::string("None")));
  TriplaneParams p{};
  p.dtype = a.p_xy.dtype;
  p.batch = a.p_xy.shape[0], p.height = a.p_xy.shape[1], p.width = a.p_xy.shape[2], p.channels = a.p_xy.shape[3];
  p.frames = a.p_yt.shape[1];
  if (p.batch <= 0 || p.frames <= 0 || p.height <= 0 || p.width <= 0 || p.channels <= 0)
    fail("every plane size must be positive, got p_xy " + dims(a.p_xy.shape) + " and p_yt " + dims(a.p_yt.shape));
  if (p.channels > kTriMaxChannels)
    fail("at most " + std::to_string(kTriMaxChannels) + " channels are supported by the CUDA kernels, got " +
         std::to_string(p.channels) + "; use the 'triton' backend");
  const int64_t B = p.batch, T = p.frames, H = p.height, W = p.width, C = p.channels;
  check_tensor(op, "p_xy", a.p_xy, p.dtype, {B, H, W, C});
  check_tensor(op, "p_yt", a.p_yt, p.dtype, {B, T, W, C});
  check_tensor(op, "p_xt", a.p_xt, p.dtype, {B, T, H, C});
  if (a.gamma.present) check_tensor(op, "gamma", a.gamma, kFloat32, {C});
  if (B * T * H * W > (int64_t(1) << 40)) fail("the token volume is too large");
  p.p_xy = reinterpret_cast<const void*>(a.p_xy.ptr);
  p.p_yt = reinterpret_cast<const void*>(a.p_yt.ptr);
  p.p_xt = reinterpret_cast<const void*>(a.p_xt.ptr);
  p.gamma = a.gamma.present ? reinterpret_cast<const float*>(a.gamma.ptr) : nullptr;
  const int64_t vec = 16 / (p.dtype == kFloat32 ? 4 : 2);
  p.vec = C % vec == 0 && aligned16(a.p_xy) && aligned16(a.p_yt) && aligned16(a.p_xt);
  return p;
}

void triplane_decode_fwd(const TriplaneArgs& a) {
  const char* op = "triplane_decode forward";
  TriplaneParams p = plane_params(a, op);
  const int64_t B = p.batch, N = p.frames * p.height * p.width, C = p.channels;
  check_tensor(op, "v", a.v, p.dtype, {B, N, C});
  if (a.gamma.present != a.beta.present) fail("pass both gamma and beta (the LayerNorm weight and bias), or neither");
  if (p.gamma) {
    check_tensor(op, "beta", a.beta, kFloat32, {C});
    check_tensor(op, "y", a.y, p.dtype, {B, N, C});
    check_tensor(op, "mean", a.mean, kFloat32, {B, N});
    check_tensor(op, "rstd", a.rstd, kFloat32, {B, N});
  } else {
    require_absent(a.y, "y", "without LayerNorm weights");
    require_absent(a.mean, "mean", "without LayerNorm weights");
    require_absent(a.rstd, "rstd", "without LayerNorm weights");
  }
  if (!(a.eps >= 0.0) || !std::isfinite(a.eps)) fail("eps must be finite and non-negative");
  p.beta = p.gamma ? reinterpret_cast<const float*>(a.beta.ptr) : nullptr;
  p.v = reinterpret_cast<void*>(a.v.ptr);
  p.y = p.gamma ? reinterpret_cast<void*>(a.y.ptr) : nullptr;
  p.mean = p.gamma ? reinterpret_cast<float*>(a.mean.ptr) : nullptr;
  p.rstd = p.gamma ? reinterpret_cast<float*>(a.rstd.ptr) : nullptr;
  p.eps = static_cast<float>(a.eps);
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
    const char* why = "without LayerNorm weights";
    require_absent(a.dy, "dy", why);
    require_absent(a.mean, "mean", why);
    require_absent(a.rstd, "rstd", why);
    require_absent(a.a1, "a1", why);
    require_absent(a.a2, "a2", why);
    require_absent(a.dgamma_part, "dgamma_part", why);
    require_absent(a.dbeta_part, "dbeta_part", why);
  }
  check_tensor(op, "d_xy", a.d_xy, kFloat32, {B, H, W, C});
  check_tensor(op, "d_yt", a.d_yt, kFloat32, {B, T, W, C});
  check_tensor(op, "d_xt", a.d_xt, kFloat32, {B, T, H, C});
  p.dv = reinterpret_cast<const void*>(a.dv.ptr);
  p.dy = p.gamma ? reinterpret_cast<const void*>(a.dy.ptr) : nullptr;
  p.mean = p.gamma ? reinterpret_cast<float*>(a.mean.ptr) : nullptr;
  p.rstd = p.gamma ? reinterpret_cast<float*>(a.rstd.ptr) : nullptr;
  p.a1 = p.gamma ? reinterpret_cast<float*>(a.a1.ptr) : nullptr;
  p.a2 = p.gamma ? reinterpret_cast<float*>(a.a2.ptr) : nullptr;
  p.dgamma_part = p.gamma ? reinterpret_cast<float*>(a.dgamma_part.ptr) : nullptr;
  p.dbeta_part = p.gamma ? reinterpret_cast<float*>(a.dbeta_part.ptr) : nullptr;
  p.d_xy = reinterpret_cast<float*>(a.d_xy.ptr);
  p.d_yt = reinterpret_cast<float*>(a.d_yt.ptr);
  p.d_xt = reinterpret_cast<float*>(a.d_xt.ptr);
  p.vec = p.vec && aligned16(a.dv) && aligned16(a.dy) && aligned16(a.d_xy) && aligned16(a.d_yt) && aligned16(a.d_xt);
  if (triplane_sum_smem_bytes(p) > kTriMaxSmemBytes)
    fail("T*(h+w) = " + std::to_string(T * (H + W)) + " needs " + std::to_string(triplane_sum_smem_bytes(p)) +
         " bytes of shared memory (limit " + std::to_string(kTriMaxSmemBytes) + "); use the 'triton' backend");
  if (B * (C / (p.vec ? 16 / (p.dtype == kFloat32 ? 4 : 2) : 1)) > 0x7fffffffLL) fail("batch * channels exceeds the launch grid");
  require_cuda_device(op);
#ifdef PVDM_WITH_CUDA
  check_launch(triplane_bwd_launch(p, reinterpret_cast<void*>(a.stream)), op);
#endif
}

}  // namespace pvdm
