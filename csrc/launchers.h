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

}  // namespace pvdm
