// AVX2 gather path of the uint8 polar transform: 8 output pixels at a time; one 32-bit gather per tap
// fetches all channels (C <= 4) of 8 source pixels. Compiled with -mavx2 -mfma (CMakeLists.txt) and only
// called after a run-time CPU check; like gemm_avx2.cpp it must not instantiate inline/template code
// shared with other translation units (plain code, intrinsics and file-local templates only).
//
// What the profile said (Zen 4, one thread, 512²×3 → 128×512): ≈ 80 % of the time stalled on the gathers,
// i.e. on cache misses into the source image, whose lines are visited along circles (no hardware
// prefetcher follows that). Hence: (1) while one image is sampled, the lines of the *next* image are
// prefetched, a few per group of 8 pixels (the whole image over the pass): 1.3 → ≈ 0.45 ms per image;
// (2) a compact map — one base pixel index and two float fractions per output pixel (12 bytes instead
// of 32, so the map does not push the image out of L2); (3) channel-interleaved vector stores for C = 3
// (a 3×8 transpose in registers instead of 24 scalar stores).
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace s4g::cpu {

namespace {

// r, g, b (8 pixels each) → 24 floats r0 g0 b0 r1 g1 b1 … at o.
void store_rgb(float* o, __m256 r, __m256 g, __m256 b) {
  const __m256i i0 = _mm256_setr_epi32(0, 0, 0, 1, 1, 1, 2, 2);
  const __m256i i1 = _mm256_setr_epi32(2, 3, 3, 3, 4, 4, 4, 5);
  const __m256i i2 = _mm256_setr_epi32(5, 5, 6, 6, 6, 7, 7, 7);
  const __m256 o0 = _mm256_blend_ps(_mm256_blend_ps(_mm256_permutevar8x32_ps(r, i0), _mm256_permutevar8x32_ps(g, i0), 0x92),
                                    _mm256_permutevar8x32_ps(b, i0), 0x24);  // r g b r g b r g
  const __m256 o1 = _mm256_blend_ps(_mm256_blend_ps(_mm256_permutevar8x32_ps(r, i1), _mm256_permutevar8x32_ps(g, i1), 0x24),
                                    _mm256_permutevar8x32_ps(b, i1), 0x49);  // b r g b r g b r
  const __m256 o2 = _mm256_blend_ps(_mm256_blend_ps(_mm256_permutevar8x32_ps(r, i2), _mm256_permutevar8x32_ps(g, i2), 0x49),
                                    _mm256_permutevar8x32_ps(b, i2), 0x92);  // g b r g b r g b
  _mm256_storeu_ps(o, o0);
  _mm256_storeu_ps(o + 8, o1);
  _mm256_storeu_ps(o + 16, o2);
}

template <int kC>
void groups(const uint8_t* img, int64_t A, const int32_t* base, const float* fx, const float* fy,
            const uint8_t* safe, int64_t g0, int64_t g1, const float* scale, const float* bias, float* out,
            const uint8_t* next, int64_t next_bytes) {
  const __m256i lo8 = _mm256_set1_epi32(0xff);
  const __m256i dc = _mm256_set1_epi32(kC), dr = _mm256_set1_epi32((int)(A * kC));
  const __m256 one = _mm256_set1_ps(1.0f);
  // Prefetch stride: spread the next image's lines evenly over this range's groups.
  const int64_t lines = (next_bytes + 63) / 64, per = g1 > g0 ? (lines + (g1 - g0) - 1) / (g1 - g0) : 0;
  int64_t pf = 0;
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t t = 0; t < per && pf < next_bytes; ++t, pf += 64) _mm_prefetch((const char*)next + pf, _MM_HINT_T1);
    if (!safe[g]) continue;
    const __m256i b = _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i*)(base + g * 8)), dc);
    const __m256 x = _mm256_loadu_ps(fx + g * 8), y = _mm256_loadu_ps(fy + g * 8);
    const __m256 x1 = _mm256_sub_ps(one, x), y1 = _mm256_sub_ps(one, y);
    const __m256 w[4] = {_mm256_mul_ps(x1, y1), _mm256_mul_ps(x, y1), _mm256_mul_ps(x1, y), _mm256_mul_ps(x, y)};
    const __m256i off[4] = {b, _mm256_add_epi32(b, dc), _mm256_add_epi32(b, dr), _mm256_add_epi32(_mm256_add_epi32(b, dr), dc)};
    __m256 acc[kC];
    for (int c = 0; c < kC; ++c) acc[c] = _mm256_setzero_ps();
    for (int t = 0; t < 4; ++t) {
      const __m256i px = _mm256_i32gather_epi32(reinterpret_cast<const int*>(img), off[t], 1);
      for (int c = 0; c < kC; ++c)
        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(px, 8 * c), lo8)), w[t], acc[c]);
    }
    for (int c = 0; c < kC; ++c) acc[c] = _mm256_fmadd_ps(acc[c], _mm256_set1_ps(scale[c]), _mm256_set1_ps(bias[c]));
    float* o = out + g * 8 * kC;
    if constexpr (kC == 1) {
      _mm256_storeu_ps(o, acc[0]);
    } else if constexpr (kC == 3) {
      store_rgb(o, acc[0], acc[1], acc[2]);
    } else {
      alignas(32) float tmp[kC][8];
      for (int c = 0; c < kC; ++c) _mm256_store_ps(tmp[c], acc[c]);
      for (int j = 0; j < 8; ++j)
        for (int c = 0; c < kC; ++c) o[j * kC + c] = tmp[c][j];
    }
  }
}

}  // namespace

// Groups [g0, g1) of 8 consecutive output pixels of one image (C in 1..4). base: per pixel the source
// pixel index of the top-left tap; fx, fy: its fractional column and row; safe[g] = 0 → the group is
// skipped (the caller's scalar path does it). The `next_bytes` bytes at `next` are prefetched meanwhile.
void polar_u8_groups_avx2(const uint8_t* img, int64_t A, int64_t C, const int32_t* base, const float* fx,
                          const float* fy, const uint8_t* safe, int64_t g0, int64_t g1, const float* scale,
                          const float* bias, float* out, const uint8_t* next, int64_t next_bytes) {
  switch (C) {
    case 1: groups<1>(img, A, base, fx, fy, safe, g0, g1, scale, bias, out, next, next_bytes); break;
    case 2: groups<2>(img, A, base, fx, fy, safe, g0, g1, scale, bias, out, next, next_bytes); break;
    case 3: groups<3>(img, A, base, fx, fy, safe, g0, g1, scale, bias, out, next, next_bytes); break;
    default: groups<4>(img, A, base, fx, fy, safe, g0, g1, scale, bias, out, next, next_bytes); break;
  }
}

bool polar_avx2_compiled() { return true; }

}  // namespace s4g::cpu

#else
namespace s4g::cpu {
void polar_u8_groups_avx2(const uint8_t*, int64_t, int64_t, const int32_t*, const float*, const float*,
                          const uint8_t*, int64_t, int64_t, const float*, const float*, float*, const uint8_t*,
                          int64_t) {}
bool polar_avx2_compiled() { return false; }
}  // namespace s4g::cpu
#endif
