// AVX2 kernels: the canonical micro-kernel (6 reference rows × 16 queries), the float32 filter
// (6 queries × 16 packed references, BLIS-style) and the exact helpers. Compiled with -mavx2 -mfma
// -mf16c (see CMakeLists.txt) and only called after a runtime CPU check, so this file must not
// instantiate any inline/template function shared with other translation units (the linker could pick
// this AVX2 copy for the whole program): plain code, intrinsics and file-local templates only.
//
// Filter tile: 6 queries broadcast × 2 ymm of references = 12 accumulators + 2 reference vectors + 1
// broadcast (15 of 16 ymm). The references are packed into k-major micro-panels (16 lanes per depth
// step, 64 contiguous bytes) instead of being broadcast from their rows: rows of d = 1024 floats lie
// 4 KB apart and all map to the same L1 set, which is what held the previous kernel back.
#include "s4g/cpu_gemm.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace s4g::cpu {
namespace {

// ---- loads with a zero-filled tail ----------------------------------------------------------------
__m256 load8(const float* p, int64_t left) {
  if (left >= 8) return _mm256_loadu_ps(p);
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), idx));
}
__m256 load8(const uint16_t* p, int64_t left) {
  if (left >= 8) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < left; ++i) tmp[i] = p[i];
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
}

float hsum(__m256 v) {  // 3 levels of additions
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Four accumulators of 8 lanes: every product goes through ≤ ⌈d/32⌉ fused multiply-adds, then 2 levels
// of adds and a 3-level horizontal sum (dot_depth).
template <class R, bool kSquare>
float dot(const float* q, const R* r, int64_t d) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t k = 0;
  for (; k + 32 <= d; k += 32) {
    for (int t = 0; t < 4; ++t) {
      const __m256 b = load8(r + k + 8 * t, 8);
      if constexpr (kSquare) acc[t] = _mm256_fmadd_ps(b, b, acc[t]);
      else acc[t] = _mm256_fmadd_ps(_mm256_loadu_ps(q + k + 8 * t), b, acc[t]);
    }
  }
  for (int t = 0; k < d; k += 8, ++t) {  // < 32 left: at most one more product per accumulator
    const __m256 b = load8(r + k, d - k);
    if constexpr (kSquare) acc[t] = _mm256_fmadd_ps(b, b, acc[t]);
    else acc[t] = _mm256_fmadd_ps(load8(q + k, d - k), b, acc[t]);
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
float half_to_float(float x) { return x; }

// dot_canonical of up to 8 pairs at once (8 independent fused multiply-add chains in the canonical
// order of search_math.h). Missing pairs repeat pair 0.
template <class R>
void canon(const float* const* q, const R* const* r, int n, int64_t d, float* out) {
  constexpr int64_t kChunk = 256;  // = kDotChunk (search_math.h is not included here: see the file note)
  for (int t0 = 0; t0 < n; t0 += 8) {
    const float* qq[8];
    const R* rr[8];
    for (int t = 0; t < 8; ++t) {
      qq[t] = q[t0 + t < n ? t0 + t : t0];
      rr[t] = r[t0 + t < n ? t0 + t : t0];
    }
    float total[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t c0 = 0; c0 < d; c0 += kChunk) {
      const int64_t c1 = c0 + kChunk < d ? c0 + kChunk : d;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k = c0; k < c1; ++k)
        for (int t = 0; t < 8; ++t) acc[t] = __builtin_fmaf(qq[t][k], half_to_float(rr[t][k]), acc[t]);
      for (int t = 0; t < 8; ++t) total[t] = c0 == 0 ? acc[t] : total[t] + acc[t];
    }
    for (int t = 0; t < 8 && t0 + t < n; ++t) out[t0 + t] = total[t];
  }
}

float dot_f32(const float* q, const float* r, int64_t d) { return dot<float, false>(q, r, d); }
float dot_f16(const float* q, const uint16_t* r, int64_t d) { return dot<uint16_t, false>(q, r, d); }
float sumsq_f32(const float* r, int64_t d) { return dot<float, true>(nullptr, r, d); }
float sumsq_f16(const uint16_t* r, int64_t d) { return dot<uint16_t, true>(nullptr, r, d); }
int64_t dot_depth(int64_t d) { return (d + 31) / 32 + 5; }
void canon_f32(const float* const* q, const float* const* r, int n, int64_t d, float* out) {
  canon<float>(q, r, n, d, out);
}
void canon_f16(const float* const* q, const uint16_t* const* r, int n, int64_t d, float* out) {
  canon<uint16_t>(q, r, n, d, out);
}

// ---- canonical micro-kernel ------------------------------------------------------------------------
constexpr int kMR = 6;
constexpr int kNRc = 16;

template <int M>
void ukr_m(int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  __m256 c0[M], c1[M];
  for (int i = 0; i < M; ++i) { c0[i] = _mm256_setzero_ps(); c1[i] = _mm256_setzero_ps(); }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 a0 = _mm256_load_ps(Ap + k * kNRc);
    const __m256 a1 = _mm256_load_ps(Ap + k * kNRc + 8);
    for (int i = 0; i < M; ++i) {
      const __m256 b = _mm256_set1_ps(R[i * ldr + k]);
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

const Ukr kUkr{"avx2", kMR, kNRc, &run, &half_rows};

// ---- float32 filter: 6 queries × 16 references -----------------------------------------------------
constexpr int kMQ = 6;
constexpr int kNR = 16;

int64_t packed_depth(int64_t d) { return (d + 7) / 8 * 8; }
int64_t acc_depth(int64_t d) { return packed_depth(d); }  // one fused multiply-add per packed element
int64_t sq_depth(int64_t d) { return (d + 7) / 8 + 3; }

void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int h = 0; h < 8; h += 4) {
    t[h] = _mm256_unpacklo_ps(r[h], r[h + 1]);
    t[h + 1] = _mm256_unpackhi_ps(r[h], r[h + 1]);
    t[h + 2] = _mm256_unpacklo_ps(r[h + 2], r[h + 3]);
    t[h + 3] = _mm256_unpackhi_ps(r[h + 2], r[h + 3]);
    u[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);      // column 4L + 0 of rows h..h+3
    u[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xee);  // column 4L + 1
    u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
    u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xee);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

template <class T>
void pack_refs(const T* r, int64_t ldr, int rows, int64_t d, uint32_t* Bp, float* sq, float* er) {
  float* B = reinterpret_cast<float*>(Bp);
  for (int g = 0; g < 2; ++g) {
    const int base = g * 8;
    const int n = rows - base < 0 ? 0 : (rows - base > 8 ? 8 : rows - base);
    __m256 s[8];
    for (int i = 0; i < 8; ++i) s[i] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < d; k0 += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i) {
        if (i < n) {
          v[i] = load8(r + (base + i) * ldr + k0, d - k0);
          s[i] = _mm256_fmadd_ps(v[i], v[i], s[i]);
        } else {
          v[i] = _mm256_setzero_ps();
        }
      }
      transpose8(v);
      float* dst = B + k0 * kNR + base;
      for (int p = 0; p < 8; ++p) _mm256_store_ps(dst + p * kNR, v[p]);
    }
    for (int i = 0; i < n; ++i) {
      sq[base + i] = hsum(s[i]);
      er[base + i] = 0.0f;  // float32 inputs are used exactly
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
  const int64_t kp = packed_depth(d);
  float* A = reinterpret_cast<float*>(Ap);
  for (int j = 0; j < kMQ; ++j)
    for (int64_t k = 0; k < kp; ++k) A[k * kMQ + j] = (j < nq && k < d) ? q[j * ldq + k] : 0.0f;
}

template <int NQ>
void tile_n(int64_t kp, const uint32_t* Ap, const uint32_t* Bp, float* C, float* rowmax) {
  const float* A = reinterpret_cast<const float*>(Ap);
  const float* B = reinterpret_cast<const float*>(Bp);
  // Accumulators in registers (with _mm256_broadcast_ss(pointer) GCC 12 also stored them every step).
  __m256 c[NQ][2];
  for (int j = 0; j < NQ; ++j) c[j][0] = c[j][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m256 b0 = _mm256_load_ps(B + p * kNR);
    const __m256 b1 = _mm256_load_ps(B + p * kNR + 8);
    for (int j = 0; j < NQ; ++j) {
      const __m256 a = _mm256_set1_ps(A[p * kMQ + j]);
      c[j][0] = _mm256_fmadd_ps(a, b0, c[j][0]);
      c[j][1] = _mm256_fmadd_ps(a, b1, c[j][1]);
    }
  }
  for (int j = 0; j < NQ; ++j) {
    _mm256_storeu_ps(C + j * kNR, c[j][0]);
    _mm256_storeu_ps(C + j * kNR + 8, c[j][1]);
    const __m256 m = _mm256_max_ps(c[j][0], c[j][1]);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    rowmax[j] = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
  }
}

void tile(int nq, int64_t kp, const uint32_t* Ap, const uint32_t* Bp, float* C, float* rowmax) {
  switch (nq) {
    case 6: tile_n<6>(kp, Ap, Bp, C, rowmax); break;
    case 5: tile_n<5>(kp, Ap, Bp, C, rowmax); break;
    case 4: tile_n<4>(kp, Ap, Bp, C, rowmax); break;
    case 3: tile_n<3>(kp, Ap, Bp, C, rowmax); break;
    case 2: tile_n<2>(kp, Ap, Bp, C, rowmax); break;
    default: tile_n<1>(kp, Ap, Bp, C, rowmax); break;
  }
}

const Filter kFilter{"avx2",         kMQ,        kNR,           false,       &packed_depth, &acc_depth,
                     &pack_queries,  &pack_refs_f32, &pack_refs_f16, &sq_depth, &tile,      &dot_f32,
                     &dot_f16,       &sumsq_f32, &sumsq_f16,    &dot_depth,  &canon_f32,    &canon_f16};

}  // namespace

const Ukr* ukr_avx2() { return &kUkr; }
const Filter* filter_avx2() { return &kFilter; }

}  // namespace s4g::cpu

#else
namespace s4g::cpu {
const Ukr* ukr_avx2() { return nullptr; }
const Filter* filter_avx2() { return nullptr; }
}  // namespace s4g::cpu
#endif
