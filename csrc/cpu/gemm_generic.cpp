// Portable micro-kernel (aarch64/Jetson, or x86 without AVX2) and the run-time choice between kernels.
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "s4g/cpu_gemm.h"
#include "s4g/search_math.h"

namespace s4g::cpu {
namespace {

constexpr int kMR = 4;
constexpr int kNR = 16;

// Plain loops with an explicit fused multiply-add (std::fma) so the rounding matches the canonical dot
// product; GCC/Clang vectorise the j-loop with NEON (vfmaq) on aarch64.
template <int M>
void ukr_m(int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  float c[M][kNR];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < kNR; ++j) c[i][j] = 0.0f;
  for (int64_t k = 0; k < kc; ++k) {
    const float* a = Ap + k * kNR;
    for (int i = 0; i < M; ++i) {
      const float b = R[i * ldr + k];
      for (int j = 0; j < kNR; ++j) c[i][j] = std::fma(a[j], b, c[i][j]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < kNR; ++j) C[i * ldc + j] = acc ? C[i * ldc + j] + c[i][j] : c[i][j];
}

void run(int mr, int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  switch (mr) {
    case 4: ukr_m<4>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 3: ukr_m<3>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 2: ukr_m<2>(kc, Ap, R, ldr, C, ldc, acc); break;
    default: ukr_m<1>(kc, Ap, R, ldr, C, ldc, acc); break;
  }
}

void half_rows(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}

const Ukr kUkr{"generic", kMR, kNR, &run, &half_rows};

bool cpu_has(const char* level) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  if (std::strcmp(level, "avx512") == 0) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  if (std::strcmp(level, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return std::strcmp(level, "generic") == 0;
}

const Ukr* best() {
  if (ukr_avx512() && cpu_has("avx512")) return ukr_avx512();
  if (ukr_avx2() && cpu_has("avx2")) return ukr_avx2();
  return &kUkr;
}

std::atomic<const Ukr*> g_active{nullptr};

}  // namespace

const Ukr* ukr_generic() { return &kUkr; }

const Ukr& active_ukr() {
  const Ukr* u = g_active.load(std::memory_order_acquire);
  if (!u) {
    u = best();
    g_active.store(u, std::memory_order_release);
  }
  return *u;
}

void set_simd_level(const char* name) {
  const Ukr* u = nullptr;
  if (std::strcmp(name, "auto") == 0) u = best();
  else if (std::strcmp(name, "avx512") == 0 && ukr_avx512() && cpu_has("avx512")) u = ukr_avx512();
  else if (std::strcmp(name, "avx2") == 0 && ukr_avx2() && cpu_has("avx2")) u = ukr_avx2();
  else if (std::strcmp(name, "generic") == 0) u = &kUkr;
  if (!u)
    throw std::invalid_argument(std::string("SIMD level '") + name + "' is not available in this build/CPU; available: " +
                                available_simd_levels());
  g_active.store(u, std::memory_order_release);
}

const char* available_simd_levels() {
  static const std::string levels = [] {
    std::string s;
    if (ukr_avx512() && cpu_has("avx512")) s += "avx512,";
    if (ukr_avx2() && cpu_has("avx2")) s += "avx2,";
    return s + "generic";
  }();
  return levels.c_str();
}

}  // namespace s4g::cpu
