// Small helpers shared by the CUDA translation units of s4g_engine._core_cuda (nvcc only).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace s4g::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

inline void check_launch(const char* what) {
  check(cudaGetLastError(), what);
  check(cudaDeviceSynchronize(), what);
}

// RAII device buffer for temporaries.
struct Buf {
  void* p = nullptr;
  Buf() = default;
  explicit Buf(size_t bytes) { resize(bytes); }
  void resize(size_t bytes) {
    if (p) cudaFree(p);
    p = nullptr;
    if (bytes) check(cudaMalloc(&p, bytes), "cudaMalloc");
  }
  ~Buf() {
    if (p) cudaFree(p);
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

inline unsigned blocks_for(int64_t n, int threads) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 1 << 20));
}

template <class T>
void upload(void* dst, const T* src, int64_t count, const char* what) {
  if (count > 0) check(cudaMemcpy(dst, src, count * sizeof(T), cudaMemcpyHostToDevice), what);
}

template <class T>
void download(T* dst, const void* src, int64_t count, const char* what) {
  if (count > 0) check(cudaMemcpy(dst, src, count * sizeof(T), cudaMemcpyDeviceToHost), what);
}

}  // namespace s4g::cuda
