// CPU stand-in for <cuda_fp16.h> (emulation build): __half with round-to-nearest-even conversions.
#pragma once
#include "cuda_runtime.h"
