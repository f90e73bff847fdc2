// CPU stand-in for <cuda_bf16.h> (emulation build): __nv_bfloat16 with round-to-nearest-even conversions.
#pragma once
#include "cuda_runtime.h"
