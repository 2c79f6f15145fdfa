// AVX512-BF16 filter kernel: vdpbf16ps on bfloat16 inputs, float32 accumulation (2× the float32 FMA
// throughput on Zen 4 / Sapphire Rapids). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512bf16
// -mfma -mf16c (CMakeLists.txt) and only called after a run-time CPUID check, so this file must not
// instantiate any inline/template function shared with other translation units (the linker could pick
// this copy for the whole program): plain code, intrinsics and file-local templates only.
//
// Tile: 8 queries (broadcast: one bf16 pair per vdpbf16ps) × 48 references (3 zmm of 16 lanes): 24 zmm
// accumulators + 3 reference vectors + 1 broadcast. Measured on Zen 4 (single thread): ≈ 100–115 GMAC/s
// per core, against ≈ 39 for the best float32 tile (8×48, 6×64 or 14×32 all ≈ equal); 14×32 and 6×64
// bf16 tiles reached ≈ 80–90. No depth blocking: the whole depth of a tile is one pass (the reference
// panel, 48 × d bf16 = 96 KB at d = 1024, streams from L2; the query panel, 16 KB, from L1).
//
// Rounding (for the bound in s4g/search_bound.h): inputs are rounded to bfloat16 by vcvtne2ps2bf16
// (round to nearest even; float32 subnormal inputs become ±0). The packers return, per reference,
// Σx² and Σ(x − x̂)² (x̂ = the packed value) so that the caller can bound the rounding error exactly; the
// query side is measured by the caller from the packed panel. vdpbf16ps adds two exact products to each
// float32 lane (at most two roundings per instruction, subnormal products and sums flushed to zero).
#include "s4g/cpu_gemm.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace s4g::cpu {

// float32 helpers of the AVX-512 level (csrc/cpu/gemm_avx512.cpp).
float avx512_dot_f32(const float* q, const float* r, int64_t d);
float avx512_dot_f16(const float* q, const uint16_t* r, int64_t d);
float avx512_sumsq_f32(const float* r, int64_t d);
float avx512_sumsq_f16(const uint16_t* r, int64_t d);
int64_t avx512_dot_depth(int64_t d);
void avx512_canon_f32(const float* const* q, const float* const* r, int n, int64_t d, float* out);
void avx512_canon_f16(const float* const* q, const uint16_t* const* r, int n, int64_t d, float* out);

namespace {

constexpr int kMQ = 8;    // queries per tile
constexpr int kNV = 3;    // reference vectors per tile
constexpr int kNR = 48;   // references per tile
constexpr int64_t kBlk = 32;  // depth elements per packing step (16 bf16 pairs = one zmm per row)

int64_t packed_depth(int64_t d) { return (d + kBlk - 1) / kBlk * (kBlk / 2); }
// Each vdpbf16ps step rounds at most twice per lane: 2·kp rounding steps per score (padding included).
int64_t acc_depth(int64_t d) { return 2 * packed_depth(d); }
// Σx² per row: each lane adds 2 squares per 32-element block, then a 4-level horizontal sum.
int64_t sq_depth(int64_t d) { return 2 * ((d + kBlk - 1) / kBlk) + 4; }

__mmask16 tail_mask(int64_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u); }

// Load 32 values (float32 or float16 bits) of one row at depth k0 (zero past d) as two float vectors.
void load32(const float* row, int64_t k0, int64_t d, __m512* lo, __m512* hi) {
  *lo = _mm512_maskz_loadu_ps(tail_mask(d - k0), row + k0);
  *hi = d - k0 > 16 ? _mm512_maskz_loadu_ps(tail_mask(d - k0 - 16), row + k0 + 16) : _mm512_setzero_ps();
}
void load32(const uint16_t* row, int64_t k0, int64_t d, __m512* lo, __m512* hi) {
  *lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(d - k0), row + k0));
  *hi = d - k0 > 16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(d - k0 - 16), row + k0 + 16))
                    : _mm512_setzero_ps();
}

// Round 32 floats to bf16 pairs (dword i = (x[2i], x[2i+1])) and accumulate Σx², Σ(x − x̂)². The
// differences x − x̂ are exact in float32 (x̂ is x rounded to 8 bits, or 0 for a subnormal x).
__m512i round_pairs(__m512 lo, __m512 hi, __m512* sq, __m512* er) {
  const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
  const __m512 lo_hat = _mm512_cvtpbh_ps((__m256bh)_mm512_castsi512_si256(packed));
  const __m512 hi_hat = _mm512_cvtpbh_ps((__m256bh)_mm512_extracti64x4_epi64(packed, 1));
  const __m512 el = _mm512_sub_ps(lo, lo_hat), eh = _mm512_sub_ps(hi, hi_hat);
  *sq = _mm512_fmadd_ps(lo, lo, *sq);
  *sq = _mm512_fmadd_ps(hi, hi, *sq);
  *er = _mm512_fmadd_ps(el, el, *er);
  *er = _mm512_fmadd_ps(eh, eh, *er);
  return packed;
}

// In-place transpose of a 16×16 matrix of 32-bit elements (row i → column i).
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
  // r[4a + b] now holds, per 128-bit lane L, elements (row 4a..4a+3) × column 4L + b.
  for (int i = 0; i < 16; i += 8) {
    for (int b = 0; b < 4; ++b) {
      t[i + b] = _mm512_shuffle_i32x4(r[i + b], r[i + 4 + b], 0x88);      // lanes 0,2 of each
      t[i + 4 + b] = _mm512_shuffle_i32x4(r[i + b], r[i + 4 + b], 0xdd);  // lanes 1,3 of each
    }
  }
  // t[8h + 4s + b] (h: rows 0–7 / 8–15, s: lanes {0,2} / {1,3}) → combine halves.
  for (int b = 0; b < 4; ++b) {
    r[b] = _mm512_shuffle_i32x4(t[b], t[8 + b], 0x88);            // column b
    r[8 + b] = _mm512_shuffle_i32x4(t[b], t[8 + b], 0xdd);        // column 8 + b
    r[4 + b] = _mm512_shuffle_i32x4(t[4 + b], t[12 + b], 0x88);   // column 4 + b
    r[12 + b] = _mm512_shuffle_i32x4(t[4 + b], t[12 + b], 0xdd);  // column 12 + b
  }
}

template <class T>
void pack_refs(const T* r, int64_t ldr, int rows, int64_t d, uint32_t* Bp, float* sq, float* er) {
  for (int g = 0; g < kNV; ++g) {
    const int base = g * 16;
    const int n = rows - base < 0 ? 0 : (rows - base > 16 ? 16 : rows - base);
    __m512 s[16], e[16];
    for (int i = 0; i < 16; ++i) { s[i] = _mm512_setzero_ps(); e[i] = _mm512_setzero_ps(); }
    for (int64_t k0 = 0; k0 < d; k0 += kBlk) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) {
        if (i < n) {
          __m512 lo, hi;
          load32(r + (base + i) * ldr, k0, d, &lo, &hi);
          v[i] = round_pairs(lo, hi, &s[i], &e[i]);
        } else {
          v[i] = _mm512_setzero_si512();
        }
      }
      transpose16(v);
      uint32_t* dst = Bp + (k0 / 2) * kNR + base;
      for (int p = 0; p < 16; ++p) _mm512_store_si512(dst + p * kNR, v[p]);
    }
    for (int i = 0; i < n; ++i) {
      sq[base + i] = _mm512_reduce_add_ps(s[i]);
      er[base + i] = _mm512_reduce_add_ps(e[i]);
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
  for (int j = 0; j < kMQ; ++j) {
    for (int64_t k0 = 0; k0 < kp * 2; k0 += kBlk) {
      alignas(64) uint32_t pairs[16];
      if (j < nq) {
        __m512 lo, hi, s = _mm512_setzero_ps(), e = _mm512_setzero_ps();
        load32(q + j * ldq, k0, d, &lo, &hi);
        _mm512_store_si512(pairs, round_pairs(lo, hi, &s, &e));
      } else {
        _mm512_store_si512(pairs, _mm512_setzero_si512());
      }
      for (int p = 0; p < 16; ++p) Ap[(k0 / 2 + p) * kMQ + j] = pairs[p];
    }
  }
}

template <int NQ>
void tile_n(int64_t kp, const uint32_t* Ap, const uint32_t* Bp, float* C, float* rowmax) {
  __m512 c[NQ][kNV];
  for (int j = 0; j < NQ; ++j)
    for (int v = 0; v < kNV; ++v) c[j][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(Bp + p * kNR);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(Bp + p * kNR + 16);
    const __m512bh b2 = (__m512bh)_mm512_load_si512(Bp + p * kNR + 32);
    for (int j = 0; j < NQ; ++j) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32((int)Ap[p * kMQ + j]);
      c[j][0] = _mm512_dpbf16_ps(c[j][0], a, b0);
      c[j][1] = _mm512_dpbf16_ps(c[j][1], a, b1);
      c[j][2] = _mm512_dpbf16_ps(c[j][2], a, b2);
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

const Filter kFilter{"avx512bf16",       kMQ,           kNR,              true,
                     &packed_depth,      &acc_depth,    &pack_queries,    &pack_refs_f32,
                     &pack_refs_f16,     &sq_depth,     &tile,            &avx512_dot_f32,
                     &avx512_dot_f16,    &avx512_sumsq_f32, &avx512_sumsq_f16, &avx512_dot_depth,
                     &avx512_canon_f32,  &avx512_canon_f16};

}  // namespace

const Filter* filter_avx512bf16() { return &kFilter; }

}  // namespace s4g::cpu

#else
namespace s4g::cpu {
const Filter* filter_avx512bf16() { return nullptr; }
}  // namespace s4g::cpu
#endif
