// Host API of the CUDA kernels (csrc/cuda/kernels.cu), callable from plain C++ (the binding file
// csrc/cuda/bind_cuda.cpp includes no CUDA header). All pointers are device pointers unless named host_*.
// Errors throw std::runtime_error (CUDA failures) or std::invalid_argument (bad arguments).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace s4g::cuda {

struct DeviceInfo {
  std::string name;
  int major, minor;
  int64_t memory;
};

int device_count();                    // 0 when no driver / no GPU
std::vector<DeviceInfo> devices();
int device_of(const void* ptr);        // device owning a pointer (throws for host memory)
void* alloc(int64_t bytes, int device);
void release(void* ptr, int device) noexcept;
void copy_to_host(void* host_dst, const void* src, int64_t bytes);
void set_device(int device);          // make `device` current for the calls that follow (this thread)

// out: B×H×W×C float32 (allocated by the caller with alloc()).
void polar_transform(const void* aerial, bool u8, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                     const float* host_scale, const float* host_bias, float* out);
void inverse_polar(const float* polar, int64_t H, int64_t W, int64_t C, int64_t A, float fill, float* out);
int64_t count_nonfinite(const void* x, bool half, int64_t rows, int64_t cols, int64_t ld);

struct Search {
  const float* q;
  int64_t nq, ldq;
  const void* r;
  bool r_half;
  int64_t n, ldr, d;
};
// How the search computes its result (csrc/cuda/search_filter.cu), as on the CPU:
//   kExact      cuBLAS GEMM on tensor cores (TF32 for float32 refs, float16 for float16 refs) as the filter,
//               proven margin, canonical refinement; the canonical kernels when cuBLAS is not loaded;
//   kCanonical  every score with the canonical kernel (the reference and the fallback);
//   kFilterOnly the filter's own answer (NOT exact; tests show the adversarial cases defeat it).
enum class Mode { kExact, kCanonical, kFilterOnly };

// out_s/out_i: nq×k. host_exclude: nq×m (−1 padded) or null.
void topk_similarity(const Search& s, int64_t k, const int64_t* host_exclude, int64_t m, float* out_s, int64_t* out_i,
                     Mode mode = Mode::kExact);
// out: nq int64. host_positive: nq; host_ignore: nq×m or null.
void positive_ranks(const Search& s, const int64_t* host_positive, const int64_t* host_ignore, int64_t m, int64_t* out,
                    Mode mode = Mode::kExact);

// Counters of the last search call (diagnostics, tests). path: "filter" (cuBLAS), "canonical".
struct Stats {
  std::string path;
  int64_t queries = 0, certified = 0, retried = 0, fallback = 0, band = 0, band_overflow = 0;
};
Stats last_stats();

// cuBLAS, loaded at run time (s4g/cublas_dyn.h): try the candidates (paths or sonames) in order; returns
// the library loaded, "" if none (then `error` says why and the canonical kernels are used).
std::string cublas_load(const std::vector<std::string>& candidates, std::string* error);
std::string cublas_path();

}  // namespace s4g::cuda
