// AVX2 micro-kernel: 6 reference rows × 16 queries (12 ymm accumulators). Compiled with
// -mavx2 -mfma -mf16c (see CMakeLists.txt) and only called after a runtime CPU check, so this file must
// not instantiate any inline/template function shared with other translation units (the linker could
// pick this AVX2 copy for the whole program): plain code and intrinsics only.
#include "s4g/cpu_gemm.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace s4g::cpu {
namespace {

constexpr int kMR = 6;
constexpr int kNR = 16;

template <int M>
void ukr_m(int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  __m256 c0[M], c1[M];
  for (int i = 0; i < M; ++i) { c0[i] = _mm256_setzero_ps(); c1[i] = _mm256_setzero_ps(); }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 a0 = _mm256_load_ps(Ap + k * kNR);
    const __m256 a1 = _mm256_load_ps(Ap + k * kNR + 8);
    for (int i = 0; i < M; ++i) {
      const __m256 b = _mm256_broadcast_ss(R + i * ldr + k);
      c0[i] = _mm256_fmadd_ps(a0, b, c0[i]);
      c1[i] = _mm256_fmadd_ps(a1, b, c1[i]);
    }
  }
  for (int i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (acc) {
      c0[i] = _mm256_add_ps(_mm256_load_ps(c), c0[i]);
      c1[i] = _mm256_add_ps(_mm256_load_ps(c + 8), c1[i]);
    }
    _mm256_store_ps(c, c0[i]);
    _mm256_store_ps(c + 8, c1[i]);
  }
}

void run(int mr, int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  switch (mr) {
    case 6: ukr_m<6>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 5: ukr_m<5>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 4: ukr_m<4>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 3: ukr_m<3>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 2: ukr_m<2>(kc, Ap, R, ldr, C, ldc, acc); break;
    default: ukr_m<1>(kc, Ap, R, ldr, C, ldc, acc); break;
  }
}

void half_rows(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

const Ukr kUkr{"avx2", kMR, kNR, &run, &half_rows};

}  // namespace

const Ukr* ukr_avx2() { return &kUkr; }

}  // namespace s4g::cpu

#else
namespace s4g::cpu {
const Ukr* ukr_avx2() { return nullptr; }
}  // namespace s4g::cpu
#endif
