// Portable kernels (aarch64/Jetson, or x86 without AVX2) and the run-time choice of the SIMD level.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "s4g/cpu_gemm.h"
#include "s4g/search_math.h"

namespace s4g::cpu {
namespace {

// ---- canonical micro-kernel ------------------------------------------------------------------------
constexpr int kMR = 4;
constexpr int kNRc = 16;

// Plain loops with an explicit fused multiply-add (std::fma) so the rounding matches the canonical dot
// product; GCC/Clang vectorise the j-loop with NEON (vfmaq) on aarch64.
template <int M>
void ukr_m(int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  float c[M][kNRc];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < kNRc; ++j) c[i][j] = 0.0f;
  for (int64_t k = 0; k < kc; ++k) {
    const float* a = Ap + k * kNRc;
    for (int i = 0; i < M; ++i) {
      const float b = R[i * ldr + k];
      for (int j = 0; j < kNRc; ++j) c[i][j] = std::fma(a[j], b, c[i][j]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < kNRc; ++j) C[i * ldc + j] = acc ? C[i * ldc + j] + c[i][j] : c[i][j];
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

const Ukr kUkr{"generic", kMR, kNRc, &run, &half_rows};

// ---- exact helpers ---------------------------------------------------------------------------------
// Eight partial sums (products and additions may or may not be fused: the bound counts one rounding per
// step either way): every product goes through ≤ ⌈d/8⌉ steps, then a 3-level tree (dot_depth).
template <class R, bool kSquare>
float dot(const float* q, const R* r, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= d; k += 8)
    for (int t = 0; t < 8; ++t) {
      const float b = to_float(r[k + t]);
      acc[t] += (kSquare ? b : q[k + t]) * b;
    }
  for (int t = 0; k + t < d; ++t) {
    const float b = to_float(r[k + t]);
    acc[t] += (kSquare ? b : q[k + t]) * b;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

float dot_f32(const float* q, const float* r, int64_t d) { return dot<float, false>(q, r, d); }
float dot_f16(const float* q, const uint16_t* r, int64_t d) { return dot<uint16_t, false>(q, r, d); }
float sumsq_f32(const float* r, int64_t d) { return dot<float, true>(nullptr, r, d); }
float sumsq_f16(const uint16_t* r, int64_t d) { return dot<uint16_t, true>(nullptr, r, d); }
int64_t dot_depth(int64_t d) { return (d + 7) / 8 + 3; }

template <class R>
void canon(const float* const* q, const R* const* r, int n, int64_t d, float* out) {
  for (int t = 0; t < n; ++t) out[t] = dot_canonical(q[t], r[t], d);
}
void canon_f32(const float* const* q, const float* const* r, int n, int64_t d, float* out) {
  canon<float>(q, r, n, d, out);
}
void canon_f16(const float* const* q, const uint16_t* const* r, int n, int64_t d, float* out) {
  canon<uint16_t>(q, r, n, d, out);
}

// ---- float32 filter: 4 queries × 16 references (plain loops, vectorised by the compiler) ----------
constexpr int kMQ = 4;
constexpr int kNR = 16;

int64_t packed_depth(int64_t d) { return d; }
int64_t acc_depth(int64_t d) { return d; }

template <class T>
void pack_refs(const T* r, int64_t ldr, int rows, int64_t d, uint32_t* Bp, float* sq, float* er) {
  float* B = reinterpret_cast<float*>(Bp);
  for (int i = 0; i < kNR; ++i) {
    if (i < rows) {
      const T* row = r + i * ldr;
      for (int64_t k = 0; k < d; ++k) B[k * kNR + i] = to_float(row[k]);
      sq[i] = dot<T, true>(nullptr, row, d);
      er[i] = 0.0f;  // float32 inputs are used exactly
    } else {
      for (int64_t k = 0; k < d; ++k) B[k * kNR + i] = 0.0f;
    }
  }
}
void pack_refs_f32(const float* r, int64_t ldr, int rows, int64_t d, uint32_t* Bp, float* sq, float* er) {
  pack_refs<float>(r, ldr, rows, d, Bp, sq, er);
}
void pack_refs_f16(const uint16_t* r, int64_t ldr, int rows, int64_t d, uint32_t* Bp, float* sq, float* er) {
  pack_refs<uint16_t>(r, ldr, rows, d, Bp, sq, er);
}

void pack_queries(const float* q, int64_t ldq, int nq, int64_t d, uint32_t* Ap) {
  float* A = reinterpret_cast<float*>(Ap);
  for (int j = 0; j < kMQ; ++j)
    for (int64_t k = 0; k < d; ++k) A[k * kMQ + j] = j < nq ? q[j * ldq + k] : 0.0f;
}

void tile(int nq, int64_t kp, const uint32_t* Ap, const uint32_t* Bp, float* C, float* rowmax) {
  const float* A = reinterpret_cast<const float*>(Ap);
  const float* B = reinterpret_cast<const float*>(Bp);
  float c[kMQ][kNR] = {};
  for (int64_t p = 0; p < kp; ++p)
    for (int j = 0; j < kMQ; ++j) {
      const float a = A[p * kMQ + j];
      for (int i = 0; i < kNR; ++i) c[j][i] += a * B[p * kNR + i];
    }
  for (int j = 0; j < nq; ++j) {
    float m = c[j][0];
    for (int i = 0; i < kNR; ++i) {
      C[j * kNR + i] = c[j][i];
      m = std::isnan(c[j][i]) || c[j][i] > m ? c[j][i] : m;  // a NaN makes the row "worth a look"
    }
    rowmax[j] = m;
  }
}

const Filter kFilter{"generic",      kMQ,        kNR,           false,       &packed_depth, &acc_depth,
                     &pack_queries,  &pack_refs_f32, &pack_refs_f16, &dot_depth, &tile,     &dot_f32,
                     &dot_f16,       &sumsq_f32, &sumsq_f16,    &dot_depth,  &canon_f32,    &canon_f16};

// ---- run-time choice ---------------------------------------------------------------------------------
struct Level {
  const char* name;
  const Ukr* ukr;
  const Filter* filter;
};

bool cpu_has(const char* level) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  if (std::strcmp(level, "avx512bf16") == 0) return avx512 && __builtin_cpu_supports("avx512bf16");
  if (std::strcmp(level, "avx512") == 0) return avx512;
  if (std::strcmp(level, "avx2") == 0) return avx2;
#endif
  return std::strcmp(level, "generic") == 0;
}

// Best first. A level is usable when its kernels were compiled in and the CPU supports them.
Level level(int i) {
  switch (i) {
    case 0: return {"avx512bf16", ukr_avx512(), filter_avx512bf16()};
    case 1: return {"avx512", ukr_avx512(), filter_avx512()};
    case 2: return {"avx2", ukr_avx2(), filter_avx2()};
    default: return {"generic", &kUkr, &kFilter};
  }
}
constexpr int kLevels = 4;

bool usable(const Level& l) { return l.ukr && l.filter && cpu_has(l.name); }

int best() {
  for (int i = 0; i < kLevels; ++i)
    if (usable(level(i))) return i;
  return kLevels - 1;
}

int find(const char* name) {
  if (std::strcmp(name, "auto") == 0) return best();
  for (int i = 0; i < kLevels; ++i)
    if (std::strcmp(name, level(i).name) == 0 && usable(level(i))) return i;
  return -1;
}

std::atomic<int> g_active{-1};

int active() {
  int i = g_active.load(std::memory_order_acquire);
  if (i < 0) {
    // S4G_SIMD forces a level (tests and benchmarks of the slower paths on a fast machine).
    const char* env = std::getenv("S4G_SIMD");
    i = (env && *env) ? find(env) : best();
    if (i < 0)
      throw std::invalid_argument(std::string("S4G_SIMD='") + env + "' is not available in this build/CPU; available: " +
                                  available_simd_levels());
    g_active.store(i, std::memory_order_release);
  }
  return i;
}

}  // namespace

const Ukr* ukr_generic() { return &kUkr; }
const Filter* filter_generic() { return &kFilter; }

const Ukr& active_ukr() { return *level(active()).ukr; }
const Filter& active_filter() { return *level(active()).filter; }
const char* active_simd_level() { return level(active()).name; }

void set_simd_level(const char* name) {
  const int i = find(name);
  if (i < 0)
    throw std::invalid_argument(std::string("SIMD level '") + name + "' is not available in this build/CPU; available: " +
                                available_simd_levels());
  g_active.store(i, std::memory_order_release);
}

const char* available_simd_levels() {
  static const std::string levels = [] {
    std::string s;
    for (int i = 0; i < kLevels; ++i)
      if (usable(level(i))) s += std::string(s.empty() ? "" : ",") + level(i).name;
    return s;
  }();
  return levels.c_str();
}

}  // namespace s4g::cpu
