// AVX-512 micro-kernel: 12 reference rows × 32 queries (24 zmm accumulators). Compiled with
// -mavx512f -mfma -mf16c (see CMakeLists.txt) and only called after a runtime CPU check, so this file
// must not instantiate any inline/template function shared with other translation units (the linker
// could pick this AVX-512 copy for the whole program): plain code and intrinsics only.
#include "s4g/cpu_gemm.h"

#if defined(__AVX512F__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace s4g::cpu {
namespace {

constexpr int kMR = 12;
constexpr int kNR = 32;

template <int M>
void ukr_m(int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  __m512 c0[M], c1[M];
  for (int i = 0; i < M; ++i) { c0[i] = _mm512_setzero_ps(); c1[i] = _mm512_setzero_ps(); }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 a0 = _mm512_load_ps(Ap + k * kNR);
    const __m512 a1 = _mm512_load_ps(Ap + k * kNR + 16);
    for (int i = 0; i < M; ++i) {
      const __m512 b = _mm512_set1_ps(R[i * ldr + k]);
      c0[i] = _mm512_fmadd_ps(a0, b, c0[i]);
      c1[i] = _mm512_fmadd_ps(a1, b, c1[i]);
    }
  }
  for (int i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (acc) {
      c0[i] = _mm512_add_ps(_mm512_load_ps(c), c0[i]);
      c1[i] = _mm512_add_ps(_mm512_load_ps(c + 16), c1[i]);
    }
    _mm512_store_ps(c, c0[i]);
    _mm512_store_ps(c + 16, c1[i]);
  }
}

void run(int mr, int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  switch (mr) {
    case 12: ukr_m<12>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 11: ukr_m<11>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 10: ukr_m<10>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 9: ukr_m<9>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 8: ukr_m<8>(kc, Ap, R, ldr, C, ldc, acc); break;
    case 7: ukr_m<7>(kc, Ap, R, ldr, C, ldc, acc); break;
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
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

const Ukr kUkr{"avx512", kMR, kNR, &run, &half_rows};

}  // namespace

const Ukr* ukr_avx512() { return &kUkr; }

}  // namespace s4g::cpu

#else
namespace s4g::cpu {
const Ukr* ukr_avx512() { return nullptr; }
}  // namespace s4g::cpu
#endif
