// AVX-512 kernels: the canonical micro-kernel (12 reference rows × 32 queries), the float32 filter
// (8 queries × 48 references, packed) and the exact helpers (float32 dot products, interleaved canonical
// scores) that the AVX512-BF16 level shares. Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c
// (see CMakeLists.txt) and only called after a runtime CPU check, so this file must not instantiate any
// inline/template function shared with other translation units (the linker could pick this AVX-512
// copy for the whole program): plain code, intrinsics and file-local templates only.
#include "s4g/cpu_gemm.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace s4g::cpu {

// ---- exact helpers (external linkage: also used by gemm_avx512bf16.cpp) --------------------------
namespace {

__mmask16 tail_mask(int64_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u); }
__m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
__m512 load16(const uint16_t* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

// Four accumulators of 16 lanes: every product goes through ≤ ⌈d/64⌉ fused multiply-adds, then 2 levels
// of adds and a 4-level horizontal sum (avx512_dot_depth).
template <class R, bool kSquare>
float dot(const float* q, const R* r, int64_t d) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t k = 0;
  for (; k + 64 <= d; k += 64) {
    for (int t = 0; t < 4; ++t) {
      const __m512 b = load16(r + k + 16 * t, 0xffff);
      if constexpr (kSquare) acc[t] = _mm512_fmadd_ps(b, b, acc[t]);
      else acc[t] = _mm512_fmadd_ps(_mm512_loadu_ps(q + k + 16 * t), b, acc[t]);
    }
  }
  for (int t = 0; k < d; k += 16, ++t) {  // < 64 left: at most one more product per accumulator
    const __mmask16 m = tail_mask(d - k);
    const __m512 b = load16(r + k, m);
    if constexpr (kSquare) acc[t] = _mm512_fmadd_ps(b, b, acc[t]);
    else acc[t] = _mm512_fmadd_ps(load16(q + k, m), b, acc[t]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
float half_to_float(float x) { return x; }

// dot_canonical of up to 8 pairs at once: 8 independent fused multiply-add chains (throughput instead
// of latency), each in exactly the canonical order of search_math.h. Missing pairs repeat pair 0.
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

}  // namespace

float avx512_dot_f32(const float* q, const float* r, int64_t d) { return dot<float, false>(q, r, d); }
float avx512_dot_f16(const float* q, const uint16_t* r, int64_t d) { return dot<uint16_t, false>(q, r, d); }
float avx512_sumsq_f32(const float* r, int64_t d) { return dot<float, true>(nullptr, r, d); }
float avx512_sumsq_f16(const uint16_t* r, int64_t d) { return dot<uint16_t, true>(nullptr, r, d); }
int64_t avx512_dot_depth(int64_t d) { return (d + 63) / 64 + 6; }
void avx512_canon_f32(const float* const* q, const float* const* r, int n, int64_t d, float* out) {
  canon<float>(q, r, n, d, out);
}
void avx512_canon_f16(const float* const* q, const uint16_t* const* r, int n, int64_t d, float* out) {
  canon<uint16_t>(q, r, n, d, out);
}

namespace {

// ---- canonical micro-kernel ------------------------------------------------------------------------
constexpr int kMR = 12;
constexpr int kNRc = 32;

template <int M>
void ukr_m(int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C, int64_t ldc, bool acc) {
  __m512 c0[M], c1[M];
  for (int i = 0; i < M; ++i) { c0[i] = _mm512_setzero_ps(); c1[i] = _mm512_setzero_ps(); }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 a0 = _mm512_load_ps(Ap + k * kNRc);
    const __m512 a1 = _mm512_load_ps(Ap + k * kNRc + 16);
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

const Ukr kUkr{"avx512", kMR, kNRc, &run, &half_rows};

// ---- float32 filter: 8 queries × 48 references --------------------------------------------------
constexpr int kMQ = 8;
constexpr int kNV = 3;
constexpr int kNR = 48;

int64_t packed_depth(int64_t d) { return (d + 15) / 16 * 16; }
int64_t acc_depth(int64_t d) { return packed_depth(d); }  // one fused multiply-add per packed element
int64_t sq_depth(int64_t d) { return (d + 15) / 16 + 4; }

// In-place transpose of a 16×16 matrix of 32-bit elements (as in gemm_avx512bf16.cpp).
void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8) {
    for (int b = 0; b < 4; ++b) {
      t[i + b] = _mm512_shuffle_i32x4(r[i + b], r[i + 4 + b], 0x88);
      t[i + 4 + b] = _mm512_shuffle_i32x4(r[i + b], r[i + 4 + b], 0xdd);
    }
  }
  for (int b = 0; b < 4; ++b) {
    r[b] = _mm512_shuffle_i32x4(t[b], t[8 + b], 0x88);
    r[8 + b] = _mm512_shuffle_i32x4(t[b], t[8 + b], 0xdd);
    r[4 + b] = _mm512_shuffle_i32x4(t[4 + b], t[12 + b], 0x88);
    r[12 + b] = _mm512_shuffle_i32x4(t[4 + b], t[12 + b], 0xdd);
  }
}

template <class T>
void pack_refs(const T* r, int64_t ldr, int rows, int64_t d, uint32_t* Bp, float* sq, float* er) {
  for (int g = 0; g < kNV; ++g) {
    const int base = g * 16;
    const int n = rows - base < 0 ? 0 : (rows - base > 16 ? 16 : rows - base);
    __m512 s[16];
    for (int i = 0; i < 16; ++i) s[i] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < d; k0 += 16) {
      const __mmask16 m = tail_mask(d - k0);
      __m512i v[16];
      for (int i = 0; i < 16; ++i) {
        if (i < n) {
          const __m512 x = load16(r + (base + i) * ldr + k0, m);
          s[i] = _mm512_fmadd_ps(x, x, s[i]);
          v[i] = _mm512_castps_si512(x);
        } else {
          v[i] = _mm512_setzero_si512();
        }
      }
      transpose16(v);
      uint32_t* dst = Bp + k0 * kNR + base;
      for (int p = 0; p < 16; ++p) _mm512_store_si512(dst + p * kNR, v[p]);
    }
    for (int i = 0; i < n; ++i) {
      sq[base + i] = _mm512_reduce_add_ps(s[i]);
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
  __m512 c[NQ][kNV];
  for (int j = 0; j < NQ; ++j)
    for (int v = 0; v < kNV; ++v) c[j][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512 b0 = _mm512_load_ps(B + p * kNR);
    const __m512 b1 = _mm512_load_ps(B + p * kNR + 16);
    const __m512 b2 = _mm512_load_ps(B + p * kNR + 32);
    for (int j = 0; j < NQ; ++j) {
      const __m512 a = _mm512_set1_ps(A[p * kMQ + j]);
      c[j][0] = _mm512_fmadd_ps(a, b0, c[j][0]);
      c[j][1] = _mm512_fmadd_ps(a, b1, c[j][1]);
      c[j][2] = _mm512_fmadd_ps(a, b2, c[j][2]);
    }
  }
  for (int j = 0; j < NQ; ++j) {
    for (int v = 0; v < kNV; ++v) _mm512_storeu_ps(C + j * kNR + v * 16, c[j][v]);
    rowmax[j] = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(c[j][0], c[j][1]), c[j][2]));
  }
}

void tile(int nq, int64_t kp, const uint32_t* Ap, const uint32_t* Bp, float* C, float* rowmax) {
  switch (nq) {
    case 8: tile_n<8>(kp, Ap, Bp, C, rowmax); break;
    case 7: tile_n<7>(kp, Ap, Bp, C, rowmax); break;
    case 6: tile_n<6>(kp, Ap, Bp, C, rowmax); break;
    case 5: tile_n<5>(kp, Ap, Bp, C, rowmax); break;
    case 4: tile_n<4>(kp, Ap, Bp, C, rowmax); break;
    case 3: tile_n<3>(kp, Ap, Bp, C, rowmax); break;
    case 2: tile_n<2>(kp, Ap, Bp, C, rowmax); break;
    default: tile_n<1>(kp, Ap, Bp, C, rowmax); break;
  }
}

const Filter kFilter{"avx512",         kMQ,        kNR,          false,
                     &packed_depth,    &acc_depth, &pack_queries, &pack_refs_f32,
                     &pack_refs_f16,   &sq_depth,  &tile,         &avx512_dot_f32,
                     &avx512_dot_f16,  &avx512_sumsq_f32, &avx512_sumsq_f16, &avx512_dot_depth,
                     &avx512_canon_f32, &avx512_canon_f16};

}  // namespace

const Ukr* ukr_avx512() { return &kUkr; }
const Filter* filter_avx512() { return &kFilter; }

}  // namespace s4g::cpu

#else
namespace s4g::cpu {
const Ukr* ukr_avx512() { return nullptr; }
const Filter* filter_avx512() { return nullptr; }
}  // namespace s4g::cpu
#endif
