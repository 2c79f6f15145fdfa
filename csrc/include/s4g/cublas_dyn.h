// cuBLAS loaded at run time (dlopen), so that s4g_engine._core_cuda builds without cuBLAS headers and
// imports without libcublas: the filtered GPU search uses it when present (libcublas of the CUDA
// toolkit, or of the `nvidia-cublas` wheel that torch pulls in), and the canonical kernels otherwise.
// Only the few entry points we call are declared (csrc/cuda/cublas_dyn.cpp), with the values of the
// cuBLAS 12/13 headers (cublas_api.h, library_types.h).
#pragma once
#include <string>
#include <vector>

namespace s4g::cuda::blas {

enum DataType : int { kF32 = 0, kF16 = 2 };           // cudaDataType: CUDA_R_32F, CUDA_R_16F
enum Compute : int { kCompute32F = 68, kCompute32FFastTF32 = 77 };  // cublasComputeType_t

// Try each candidate (paths or sonames) until one loads and has every entry point; returns the one
// loaded ("" when none: `error` says why). Idempotent: after a success it returns that library.
std::string load(const std::vector<std::string>& candidates, std::string* error);
bool available();
std::string loaded_path();

// Column-major C (m × n, ldc, float32) = op(A) · op(B), op = transpose when trans*, on `device`'s
// default stream (synchronous with the other work of s4g on that stream). Throws std::runtime_error.
void gemm(int device, bool trans_a, bool trans_b, int m, int n, int k, const void* A, DataType a_type, int lda,
          const void* B, DataType b_type, int ldb, float* C, int ldc, Compute compute);

}  // namespace s4g::cuda::blas
