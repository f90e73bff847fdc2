// Kernels that check the emulation itself (python_tests/test_cuda_emulation.py calls these through
// ctypes): shuffle and barrier semantics, the errors a GPU would hang or misbehave on, the launch
// limits, and the 16-bit conversions. Each entry point returns the launch's error code and copies the
// error text into `msg`.
#include <cstdio>
#include <cstring>

namespace {

int finish(char* msg, int cap) {
  const cudaError_t e = cudaGetLastError();
  std::snprintf(msg, static_cast<size_t>(cap), "%s", e == cudaSuccess ? "" : cudaGetErrorString(e));
  return static_cast<int>(e);
}

// out[3 t + 0..2]: the lane ids read by xor 1, down 3 and up 5 (as floats), for every thread t.
__global__ void shuffles(float* out) {
  const int t = threadIdx.x, lane = t & 31;
  const float v = static_cast<float>(lane);
  out[3 * t + 0] = __shfl_xor_sync(0xffffffffu, v, 1);
  out[3 * t + 1] = __shfl_down_sync(0xffffffffu, v, 3);
  out[3 * t + 2] = __shfl_up_sync(0xffffffffu, v, 5);
}

// Every thread writes its slot, waits, then reads its neighbour's: correct only if the barrier orders.
__global__ void barrier_neighbour(float* out) {
  extern __shared__ float smem[];
  const int t = threadIdx.x, n = blockDim.x;
  smem[t] = static_cast<float>(t + 1000 * blockIdx.x);
  __syncthreads();
  out[blockIdx.x * n + t] = smem[(t + 1) % n];
}

// barrier_neighbour without its barrier, reading the slot of the next warp: a race the shuffled order must
// expose (the reader runs before the writer).
__global__ void racy_neighbour(float* out) {
  extern __shared__ float smem[];
  const int t = threadIdx.x, n = blockDim.x;
  smem[t] = static_cast<float>(t);
  out[t] = smem[(t + 32) % n];
}

// Reads shared memory nobody wrote: NaN in the emulation.
__global__ void read_unwritten(float* out) {
  extern __shared__ float smem[];
  out[threadIdx.x] = smem[threadIdx.x];
}

// Half of warp 1 waits at __syncthreads, the other half at a full-warp shuffle that needs the first
// half: neither can complete (a hang, or undefined, on a GPU).
__global__ void barrier_against_shuffle(float* out) {
  if (threadIdx.x < 48) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
  }
}

// Lane 0 leaves, the rest shuffle with the full mask.
__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);
}

__global__ void nothing(float*) {}

// 1 KB of static shared memory next to the dynamic: out[block * 64 + t] = 3 t + 1 from both, 64 threads.
__global__ void static_and_dynamic(float* out) {
  extern __shared__ float smem[];
  __shared__ float table[256];
  const int t = threadIdx.x;
  table[t] = static_cast<float>(t);
  smem[t] = static_cast<float>(2 * t + 1);
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = table[t] + smem[t];
}

// Thread i copies in[i]; launched with one thread more than `in` holds (the memcheck test's control).
__global__ void copy(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x]; }

}  // namespace

extern "C" {

int emu_shuffles(float* out, int threads, char* msg, int cap) {
  shuffles<<<1, threads>>>(out);
  return finish(msg, cap);
}

int emu_barrier_neighbour(float* out, int blocks, int threads, char* msg, int cap) {
  barrier_neighbour<<<blocks, threads, threads * sizeof(float)>>>(out);
  return finish(msg, cap);
}

int emu_racy_neighbour(float* out, int threads, char* msg, int cap) {
  racy_neighbour<<<1, threads, threads * sizeof(float)>>>(out);
  return finish(msg, cap);
}

int emu_read_unwritten(float* out, int threads, char* msg, int cap) {
  read_unwritten<<<1, threads, threads * sizeof(float)>>>(out);
  return finish(msg, cap);
}

int emu_barrier_against_shuffle(float* out, char* msg, int cap) {
  barrier_against_shuffle<<<1, 64>>>(out);
  return finish(msg, cap);
}

int emu_shuffle_after_exit(float* out, char* msg, int cap) {
  shuffle_after_exit<<<1, 32>>>(out);
  return finish(msg, cap);
}

// A launch of `nothing` with the given shape and dynamic shared memory, after setting its opt-in limit
// to `smem_limit` (CUDA's default of 48 KB when negative; a refused setting returns its error).
int emu_launch_shape(int gx, int gy, int bx, int by, int bz, int smem, int smem_limit, char* msg, int cap) {
  const int limit = smem_limit >= 0 ? smem_limit : 48 * 1024;
  const cudaError_t e = cudaFuncSetAttribute(nothing, cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
  if (e != cudaSuccess) {
    std::snprintf(msg, static_cast<size_t>(cap), "cudaFuncSetAttribute refused %d bytes", limit);
    return static_cast<int>(e);
  }
  nothing<<<dim3(gx, gy), dim3(bx, by, bz), static_cast<size_t>(smem)>>>(nullptr);
  return finish(msg, cap);
}

// static_and_dynamic (1 KB static) on 2 blocks of 64 threads with `smem` bytes of dynamic shared memory,
// after cudaFuncSetAttribute(smem_limit) unless smem_limit is negative (a refused setting returns its
// error). The emulation first forgets the kernel; with `warm` it then runs it once (64 floats dynamic),
// so that it knows the static size before the attribute call and the launch.
int emu_static_shared(float* out, int smem, int smem_limit, int warm, char* msg, int cap) {
  ::emu::forget_kernel(reinterpret_cast<const void*>(static_and_dynamic));
  if (warm) {
    static_and_dynamic<<<1, 64, 64 * sizeof(float)>>>(out);
    if (finish(msg, cap) != 0) return -1;
  }
  if (smem_limit >= 0) {
    const cudaError_t e = cudaFuncSetAttribute(static_and_dynamic, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit);
    if (e != cudaSuccess) {
      std::snprintf(msg, static_cast<size_t>(cap), "cudaFuncSetAttribute refused %d bytes", smem_limit);
      return static_cast<int>(e);
    }
  }
  static_and_dynamic<<<2, 64, static_cast<size_t>(smem)>>>(out);
  return finish(msg, cap);
}

// static_and_dynamic again, with whatever setting the emulation kept.
int emu_static_shared_again(float* out, int smem, char* msg, int cap) {
  static_and_dynamic<<<2, 64, static_cast<size_t>(smem)>>>(out);
  return finish(msg, cap);
}

int emu_copy(const float* in, float* out, int threads, char* msg, int cap) {
  copy<<<1, threads>>>(in, out);
  return finish(msg, cap);
}

void emu_to_half(const float* in, uint16_t* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = __float2half_rn(in[i]).bits;
}

void emu_from_half(const uint16_t* in, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = __half2float(__half{in[i]});
}

void emu_to_bf16(const float* in, uint16_t* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(in[i]).bits;
}

}  // extern "C"
