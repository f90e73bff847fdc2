// Validation of the TensorArg views the launchers receive, shared by every op that takes them, so that a
// wrong dtype, shape, layout or a missing tensor reads the same for every op.
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "../kernels/common.h"
#include "launchers.h"

namespace pvdm {

std::string shape_str(const std::vector<int64_t>& v) {
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

void fail_arg(const char* who, const std::string& msg) { throw std::invalid_argument(std::string(who) + ": " + msg); }

void check_tensor(const char* op, const char* name, const TensorArg& t, int dtype, const std::vector<int64_t>& shape) {
  const std::string who = std::string(op) + ": " + name;
  if (!t.present) throw std::invalid_argument(who + " is required (got None)");
  if (t.dtype != dtype)
    throw std::invalid_argument(who + " must be " + dtype_name(dtype) + ", got " + dtype_name(t.dtype) +
                                " (dtype code " + std::to_string(t.dtype) + ")");
  if (t.shape != shape)
    throw std::invalid_argument(who + " must have shape " + shape_str(shape) + ", got " + shape_str(t.shape));
  if (t.strides.size() != t.shape.size())
    throw std::invalid_argument(who + " has " + std::to_string(t.strides.size()) + " strides for " +
                                std::to_string(t.shape.size()) + " dimensions");
  int64_t expect = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] != 1 && t.strides[i] != expect)
      throw std::invalid_argument(who + " must be contiguous (strides " + shape_str(t.strides) + " for shape " +
                                  shape_str(t.shape) + "); call .contiguous() first");
    expect *= t.shape[i];
  }
  if (!t.ptr) throw std::invalid_argument(who + " is a null pointer");
}

void check_float_input(const char* who, const char* name, const TensorArg& t) {
  if (!t.present) fail_arg(who, std::string(name) + " is required (got None)");
  if (t.dtype < kFloat32 || t.dtype > kBFloat16)
    fail_arg(who, std::string(name) + " must be float32, float16 or bfloat16 (dtype code " + std::to_string(t.dtype) +
                      ")");
}

void check_max_channels(const char* who, int64_t channels, int64_t max_channels) {
  if (channels > max_channels)
    fail_arg(who, "at most " + std::to_string(max_channels) + " channels are supported by the CUDA kernels, got " +
                      std::to_string(channels) + "; use the 'triton' backend");
}

void require_absent(const char* who, const TensorArg& t, const char* name, const char* why) {
  if (t.present) fail_arg(who, std::string(name) + " must be None " + why);
}

void check_layernorm_fwd(const char* who, const char* op, const LayerNormFwdArgs& ln, int dtype,
                         const std::vector<int64_t>& rows, int64_t channels, double eps) {
  if (ln.gamma.present != ln.beta.present)
    fail_arg(who, "pass both gamma and beta (the LayerNorm weight and bias), or neither");
  if (ln.gamma.present) {
    std::vector<int64_t> row_shape = rows;
    row_shape.push_back(channels);
    check_tensor(op, "beta", ln.beta, kFloat32, {channels});
    check_tensor(op, "y", ln.y, dtype, row_shape);
    check_tensor(op, "mean", ln.mean, kFloat32, rows);
    check_tensor(op, "rstd", ln.rstd, kFloat32, rows);
  } else {
    require_absent(who, ln.y, "y", kWithoutLayerNorm);
    require_absent(who, ln.mean, "mean", kWithoutLayerNorm);
    require_absent(who, ln.rstd, "rstd", kWithoutLayerNorm);
  }
  if (!(eps >= 0.0) || !std::isfinite(eps)) fail_arg(who, "eps must be finite and non-negative");
}

}  // namespace pvdm
