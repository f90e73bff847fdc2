// CPU stand-in for <cuda_runtime.h>, used only by the CUDA emulation test build (see ../README.md):
// the kernels in kernels/ compile as plain C++ against these declarations and run on the fibers of
// emu.h. Only what kernels/ uses is declared; anything else is a compile error, on purpose.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../emu.h"
