// Host launchers: validate arguments in user terms, then hand a plain struct to kernels/.
// Pointers and the CUDA stream arrive as integers so this layer needs neither torch nor CUDA headers.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace pvdm {

struct BuildInfo {
  bool cuda;
  std::vector<int> cuda_archs;
  std::vector<std::string> cuda_arch_flags;
  int cuda_runtime_version;  // 0 when not compiled with CUDA
  int driver_version;        // 0 when no driver
  int device_count;
};

BuildInfo build_info();

// Raises std::runtime_error unless CUDA kernels were compiled and a device is visible.
void require_cuda_device(const char* op);

// Throws std::runtime_error naming the op if a launch reported a CUDA error.
void check_launch(int status, const char* op);

struct GnSiluArgs {
  uintptr_t x, y, dy, dx, weight, bias, scale, shift, mean, rstd;
  uintptr_t dweight_part, dbias_part, dscale_part, dshift_part;
  int64_t batch, channels, length, groups;
  std::vector<int64_t> segments;
  double eps;
  bool apply_silu;
  int dtype;
  uintptr_t stream;
};

void gn_silu_fwd(const GnSiluArgs& a);
void gn_silu_bwd(const GnSiluArgs& a);

// A tensor as the triplane_decode and axis_gather launchers take it: pointer, dtype code, shape and
// strides (in elements), so that a wrong shape or a non-contiguous tensor is a ValueError instead of an
// out-of-bounds read.
struct TensorArg {
  uintptr_t ptr = 0;
  int dtype = -1;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  bool present = false;  // false: the optional argument was None
};

// The checks below are defined in csrc/tensor_args.cpp. `who` names the op ("triplane_decode") in the
// messages about the call as a whole, `op` the op and direction ("triplane_decode forward") in the
// messages about one tensor. All throw std::invalid_argument (a ValueError in Python).

std::string shape_str(const std::vector<int64_t>& v);  // "(2, 3)", "(4,)"
[[noreturn]] void fail_arg(const char* who, const std::string& msg);  // "<who>: <msg>"

// Unless `t` is present, has dtype `dtype`, shape `shape` and contiguous strides: "<op>: <name> ...".
void check_tensor(const char* op, const char* name, const TensorArg& t, int dtype, const std::vector<int64_t>& shape);

// The tensor that sets an op's element type: present, and float32, float16 or bfloat16.
void check_float_input(const char* who, const char* name, const TensorArg& t);

// The warp-per-row kernels hold a row in registers: at most `max_channels` channels.
void check_max_channels(const char* who, int64_t channels, int64_t max_channels);

constexpr const char* kWithoutLayerNorm = "without LayerNorm weights";
void require_absent(const char* who, const TensorArg& t, const char* name, const char* why);

// The fused LayerNorm's forward tensors: gamma and beta both or neither; with them, beta (C,) float32,
// y (rows..., C) in `dtype`, mean and rstd (rows...) float32; without them, y, mean and rstd must be
// None. eps must be finite and non-negative. gamma's own shape is the caller's to check.
struct LayerNormFwdArgs {
  const TensorArg& gamma;
  const TensorArg& beta;
  const TensorArg& y;
  const TensorArg& mean;
  const TensorArg& rstd;
};
void check_layernorm_fwd(const char* who, const char* op, const LayerNormFwdArgs& ln, int dtype,
                         const std::vector<int64_t>& rows, int64_t channels, double eps);

// Absent tensors count as aligned: they are never read.
inline bool aligned16(const TensorArg& t) { return !t.present || t.ptr % 16 == 0; }

// The tensor's pointer, or null when it was None.
template <typename T>
T* tensor_ptr(const TensorArg& t) {
  return t.present ? reinterpret_cast<T*>(t.ptr) : nullptr;
}

// Points the kernel parameters' LayerNorm forward fields (beta, y, mean, rstd, eps) at the tensors
// check_layernorm_fwd accepted: null without LayerNorm weights.
template <typename Params>
void set_layernorm_fwd(Params& p, const LayerNormFwdArgs& ln, double eps) {
  p.beta = tensor_ptr<const float>(ln.beta);
  p.y = tensor_ptr<void>(ln.y);
  p.mean = tensor_ptr<float>(ln.mean);
  p.rstd = tensor_ptr<float>(ln.rstd);
  p.eps = static_cast<float>(eps);
}

struct TriplaneArgs {
  TensorArg p_xy, p_yt, p_xt, gamma, beta, v, y, mean, rstd;              // forward
  TensorArg dv, dy, a1, a2, d_xy, d_yt, d_xt, dgamma_part, dbeta_part;  // backward
  double eps = 1e-5;
  uintptr_t stream = 0;
};

void triplane_decode_fwd(const TriplaneArgs& a);
void triplane_decode_bwd(const TriplaneArgs& a);

struct AxisGatherArgs {
  TensorArg x, token, pos, gamma, beta, s, y, mean, rstd;              // forward
  TensorArg ds, dy, dx, part_pos, part_gamma, part_beta;               // backward
  std::vector<int64_t> grid;  // (T, h, w)
  int64_t axis = 0;           // 0 xy (lines over t), 1 yt (over rows), 2 xt (over cols)
  int64_t lines_per_block = 0;
  double eps = 1e-5;
  uintptr_t stream = 0;
};

void axis_gather_fwd(const AxisGatherArgs& a);
void axis_gather_bwd(const AxisGatherArgs& a);

}  // namespace pvdm
