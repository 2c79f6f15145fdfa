// AVX2 gather path of the uint8 polar transform: 8 output pixels at a time; one 32-bit gather per tap
// fetches all channels (C <= 4) of 8 source pixels. Compiled with -mavx2 -mfma (CMakeLists.txt) and only
// called after a run-time CPU check; like gemm_avx2.cpp it must not instantiate inline/template code
// shared with other translation units (plain code and intrinsics only).
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace s4g::cpu {

// Groups [g0, g1) of 8 consecutive output pixels of one image. idx: per group 4 taps × 8 byte offsets
// (pixel index · C); w: per group 4 × 8 weights; safe[g] = 0 → skipped (done by the scalar path).
void polar_u8_groups_avx2(const uint8_t* img, int64_t C, const int32_t* idx, const float* w, const uint8_t* safe,
                          int64_t g0, int64_t g1, const float* scale, const float* bias, float* out) {
  const __m256i lo8 = _mm256_set1_epi32(0xff);
  for (int64_t g = g0; g < g1; ++g) {
    if (!safe[g]) continue;
    const int32_t* gi = idx + g * 32;
    const float* gw = w + g * 32;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int t = 0; t < 4; ++t) {
      const __m256i off = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gi + t * 8));
      const __m256i px = _mm256_i32gather_epi32(reinterpret_cast<const int*>(img), off, 1);
      const __m256 wt = _mm256_loadu_ps(gw + t * 8);
      for (int c = 0; c < C; ++c) {
        const __m256 v = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(px, 8 * c), lo8));
        acc[c] = _mm256_fmadd_ps(v, wt, acc[c]);
      }
    }
    alignas(32) float tmp[4][8];
    for (int c = 0; c < C; ++c)
      _mm256_store_ps(tmp[c], _mm256_fmadd_ps(acc[c], _mm256_set1_ps(scale[c]), _mm256_set1_ps(bias[c])));
    float* o = out + g * 8 * C;
    for (int j = 0; j < 8; ++j)
      for (int c = 0; c < C; ++c) o[j * C + c] = tmp[c][j];
  }
}

bool polar_avx2_compiled() { return true; }

}  // namespace s4g::cpu

#else
namespace s4g::cpu {
void polar_u8_groups_avx2(const uint8_t*, int64_t, const int32_t*, const float*, const uint8_t*, int64_t, int64_t,
                          const float*, const float*, float*) {}
bool polar_avx2_compiled() { return false; }
}  // namespace s4g::cpu
#endif
