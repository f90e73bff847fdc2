// Plain C++ view of the CUDA side: no CUDA headers, so g++ (csrc/) can include it.
#pragma once
#include <cstdint>

namespace pvdm {

// Element types the kernels accept, matching pvdm_fast/ops/_ext.py DTYPE_CODES.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Elements of `dtype` in one 16-byte access: the VEC of the vectorised kernel paths.
inline int64_t vec16_elements(int dtype) { return dtype == kFloat32 ? 4 : 8; }

// Runtime queries, implemented in runtime.cu with the statically linked CUDA runtime.
int cuda_runtime_version();   // e.g. 13000
int cuda_driver_version();    // 0 when no driver is installed
int cuda_device_count();      // 0 when no device or no driver
const char* cuda_error_string(int code);

}  // namespace pvdm
