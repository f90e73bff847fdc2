#include <cctype>
#include <sstream>
#include <stdexcept>

#include "../kernels/common.h"
#include "launchers.h"

#ifndef PVDM_CUDA_ARCHS_STR
#define PVDM_CUDA_ARCHS_STR ""
#endif

namespace pvdm {

static std::vector<std::string> split_archs(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

BuildInfo build_info() {
  BuildInfo info{};
#ifdef PVDM_WITH_CUDA
  info.cuda = true;
  info.cuda_arch_flags = split_archs(PVDM_CUDA_ARCHS_STR);
  for (const auto& flag : info.cuda_arch_flags) {
    size_t n = 0;
    while (n < flag.size() && std::isdigit(static_cast<unsigned char>(flag[n]))) ++n;
    if (n > 0) info.cuda_archs.push_back(std::stoi(flag.substr(0, n)));
  }
  info.cuda_runtime_version = cuda_runtime_version();
  info.driver_version = cuda_driver_version();
  info.device_count = cuda_device_count();
#endif
  return info;
}

void require_cuda_device(const char* op) {
#ifdef PVDM_WITH_CUDA
  if (cuda_device_count() > 0) return;
  throw std::runtime_error(std::string(op) + ": no CUDA device is visible (driver version " +
                           std::to_string(cuda_driver_version()) + "); use the 'reference' or 'triton' backend");
#else
  throw std::runtime_error(std::string(op) +
                           ": pvdm_fast._C was built without CUDA kernels (PVDM_CUDA=OFF or no nvcc at build "
                           "time); reinstall with PVDM_CUDA=ON or use the 'reference' or 'triton' backend");
#endif
}

void check_launch(int status, const char* op) {
#ifdef PVDM_WITH_CUDA
  if (status != 0) throw std::runtime_error(std::string(op) + ": CUDA launch failed: " + cuda_error_string(status));
#else
  (void)status;
  (void)op;
#endif
}

}  // namespace pvdm
