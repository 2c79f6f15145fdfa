// S4G_HD marks per-element maths shared by the CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda):
// the same inline function is compiled for the host by the C++ compiler and for the device by nvcc.
#pragma once
#if defined(__CUDACC__)
#define S4G_HD __host__ __device__ __forceinline__
#else
#define S4G_HD inline
#endif
#include <cstdint>
