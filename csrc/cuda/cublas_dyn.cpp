// Run-time binding of the few cuBLAS entry points the filtered GPU search needs (see s4g/cublas_dyn.h).
// Host compiler, no CUDA or cuBLAS headers: handles and streams are opaque pointers, enums plain ints
// with the values of cublas_api.h / library_types.h (cuBLAS 12 and 13 agree on them).
#include "s4g/cublas_dyn.h"

#include <dlfcn.h>

#include <map>
#include <mutex>
#include <stdexcept>

namespace s4g::cuda::blas {
namespace {

using Handle = void*;
using CreateFn = int (*)(Handle*);
using MathFn = int (*)(Handle, int);
using GemmExFn = int (*)(Handle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                         const void*, void*, int, int, int, int);

struct Lib {
  void* so = nullptr;
  std::string path;
  CreateFn create = nullptr;
  MathFn set_math = nullptr;
  GemmExFn gemm_ex = nullptr;
};

std::mutex g_mutex;
Lib g_lib;
std::map<int, Handle> g_handles;  // one handle per device, created on first use, kept for the process

bool bind(void* so, Lib* lib, std::string* why) {
  lib->create = reinterpret_cast<CreateFn>(dlsym(so, "cublasCreate_v2"));
  lib->set_math = reinterpret_cast<MathFn>(dlsym(so, "cublasSetMathMode"));
  lib->gemm_ex = reinterpret_cast<GemmExFn>(dlsym(so, "cublasGemmEx"));
  if (lib->create && lib->set_math && lib->gemm_ex) return true;
  *why = "missing cublasCreate_v2/cublasSetMathMode/cublasGemmEx";
  return false;
}

}  // namespace

std::string load(const std::vector<std::string>& candidates, std::string* error) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_lib.so) return g_lib.path;
  std::string why;
  for (const std::string& c : candidates) {
    void* so = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!so) {
      const char* e = dlerror();
      why += c + ": " + (e ? e : "not found") + "; ";
      continue;
    }
    Lib lib;
    std::string miss;
    if (!bind(so, &lib, &miss)) {
      why += c + ": " + miss + "; ";
      dlclose(so);
      continue;
    }
    lib.so = so;
    lib.path = c;
    g_lib = lib;
    return c;
  }
  if (error) *error = why.empty() ? "no candidate given" : why;
  return "";
}

bool available() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_lib.so != nullptr;
}

std::string loaded_path() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_lib.path;
}

void gemm(int device, bool trans_a, bool trans_b, int m, int n, int k, const void* A, DataType a_type, int lda,
          const void* B, DataType b_type, int ldb, float* C, int ldc, Compute compute) {
  Handle h = nullptr;
  GemmExFn gemm_ex = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_lib.so) throw std::runtime_error("cuBLAS is not loaded");
    auto it = g_handles.find(device);
    if (it == g_handles.end()) {
      // cublasCreate binds the handle to the current device. libcublas carries its own CUDA runtime (as
      // our module does: both are linked statically); a runtime follows the driver context current on
      // the thread, and the caller made `device`'s primary context current (cudaSetDevice) before this.
      // Both runtimes use that primary context and its legacy default stream, so our kernels and the
      // GEMMs are ordered without extra synchronisation.
      int st = g_lib.create(&h);
      if (st != 0) throw std::runtime_error("cublasCreate failed (status " + std::to_string(st) + ")");
      g_lib.set_math(h, 0);  // CUBLAS_DEFAULT_MATH: the compute type of each call decides (TF32 or not)
      g_handles[device] = h;
    } else {
      h = it->second;
    }
    gemm_ex = g_lib.gemm_ex;
  }
  const float alpha = 1.0f, beta = 0.0f;
  const int st = gemm_ex(h, trans_a ? 1 : 0, trans_b ? 1 : 0, m, n, k, &alpha, A, a_type, lda, B, b_type, ldb, &beta, C,
                         kF32, ldc, compute, -1 /* CUBLAS_GEMM_DEFAULT */);
  if (st != 0) throw std::runtime_error("cublasGemmEx failed (status " + std::to_string(st) + ")");
}

}  // namespace s4g::cuda::blas
