// CPU micro-kernels of the search, one set per instruction-set level, chosen at run time.
//
// Two families (csrc/cpu/search.cpp explains how they work together):
//
// * Canonical kernels (Ukr): an mr×nr tile of scores C[i][j] = Σ_k R[i][k]·A[k][j] over one depth chunk
//   (kc ≤ kDotChunk) with one fused multiply-add per (i, j, k) in ascending k, i.e. exactly the canonical
//   dot product of search_math.h, so their scores are bit-identical to dot_canonical(). Used for the
//   canonical fallback scan (csrc/cpu/search_canonical.cpp):
//     R  : mr reference rows, row stride ldr (floats), read in place (each R value is broadcast)
//     Ap : packed query panel, kc × nr floats (query j of the panel at Ap[k*nr + j]), zero-padded
//     C  : mr rows of nr scores, row stride ldc; acc=false stores the chunk, acc=true adds it (C += chunk)
//
// * Filter kernels (Filter): the fastest product the CPU has, in any summation order, on inputs that may
//   be rounded (bfloat16 on AVX512-BF16). Their scores ŝ are only used together with a proven error
//   bound |ŝ − s_canonical| ≤ ε (s4g/search_bound.h); every reported score is recomputed canonically.
//   A tile is mq queries (broadcast operand) × nr references (vector operand), over the full depth:
//     Ap : packed query panel, kp × mq 32-bit elements (element p of query j at Ap[p*mq + j])
//     Bp : packed reference panel, kp × nr 32-bit elements (element p of reference i at Bp[p*nr + i])
//     C  : C[j*nr + i] = ŝ(query j, reference i) for j < nq (all nr lanes; padded lanes score 0)
//     rowmax[j] = max_i C[j*nr + i] (padded lanes included). Only used to skip rows with nothing above a
//     threshold; NaN handling of the max is unspecified, consumers treat such rows by other means.
//   A 32-bit element holds one float (fp32 filters) or a pair of bfloat16 (k = 2p, 2p+1) (bf16 filter).
#pragma once
#include <cstdint>

namespace s4g::cpu {

// ---- canonical kernels ------------------------------------------------------------------------
using UkrFn = void (*)(int mr, int64_t kc, const float* Ap, const float* R, int64_t ldr, float* C,
                       int64_t ldc, bool acc);
using HalfRowsFn = void (*)(const uint16_t* src, float* dst, int64_t n);

struct Ukr {
  const char* name;  // "avx512", "avx2" or "generic"
  int mr;            // reference rows per tile (broadcast operand)
  int nr;            // queries per packed panel (vector operand)
  UkrFn run;
  HalfRowsFn half_to_float;  // float16 bits → float32, n values
};

// ---- filter kernels and exact helpers ----------------------------------------------------------
struct Filter {
  const char* name;  // SIMD level: "avx512bf16", "avx512", "avx2", "generic"
  int mq;            // queries per tile (max)
  int nr;            // references per tile (vector lanes)
  bool bf16;         // inputs rounded to bfloat16 pairs (vdpbf16ps), else exact fp32 inputs
  int64_t (*packed_depth)(int64_t d);  // kp: 32-bit elements per packed row (d, or ⌈d/32⌉·16 for bf16)
  // Rounding steps one filter score goes through at most (the n of γ_n), for dimension d.
  int64_t (*acc_depth)(int64_t d);
  // Pack nq ≤ mq query rows (float32, row stride ldq) into Ap; rows nq..mq−1 and the depth padding are 0.
  void (*pack_queries)(const float* q, int64_t ldq, int nq, int64_t d, uint32_t* Ap);
  // Pack rows ≤ nr reference rows into Bp (rest zero). Per row: sq[i] = Σ x², er[i] = Σ (x − x̂)² as
  // computed in float32 (x̂ = the packed value; sq_depth(d) bounds the rounding steps of these sums).
  void (*pack_refs_f32)(const float* r, int64_t ldr, int rows, int64_t d, uint32_t* Bp, float* sq, float* er);
  void (*pack_refs_f16)(const uint16_t* r, int64_t ldr, int rows, int64_t d, uint32_t* Bp, float* sq, float* er);
  int64_t (*sq_depth)(int64_t d);
  // The tile (see above); nq in 1..mq.
  void (*tile)(int nq, int64_t kp, const uint32_t* Ap, const uint32_t* Bp, float* C, float* rowmax);
  // float32 dot product in a fixed SIMD order (the second-stage filter and the small-batch filter);
  // dot_depth(d) bounds its rounding steps. The _sq variants also return Σ r² (same depth).
  float (*dot_f32)(const float* q, const float* r, int64_t d);
  float (*dot_f16)(const float* q, const uint16_t* r, int64_t d);
  float (*sumsq_f32)(const float* r, int64_t d);
  float (*sumsq_f16)(const uint16_t* r, int64_t d);
  int64_t (*dot_depth)(int64_t d);
  // Canonical scores (dot_canonical, bit-identical) of n pairs (q[t], r[t]), computed interleaved.
  void (*canon_f32)(const float* const* q, const float* const* r, int n, int64_t d, float* out);
  void (*canon_f16)(const float* const* q, const uint16_t* const* r, int n, int64_t d, float* out);
};

// Each returns nullptr when the translation unit was not compiled for that instruction set.
const Ukr* ukr_avx512();
const Ukr* ukr_avx2();
const Ukr* ukr_generic();
const Filter* filter_avx512bf16();
const Filter* filter_avx512();
const Filter* filter_avx2();
const Filter* filter_generic();

// The SIMD level in use: the best the CPU supports, or the environment variable S4G_SIMD
// (avx512bf16|avx512|avx2|generic) read at first use, or set_simd_level().
const Ukr& active_ukr();        // canonical kernel of the active level (avx512bf16 → avx512)
const Filter& active_filter();  // filter kernel of the active level
const char* active_simd_level();
// Force "avx512bf16" | "avx512" | "avx2" | "generic" | "auto"; throws std::invalid_argument if unavailable.
void set_simd_level(const char* name);
// Levels compiled in and supported by this CPU, best first, comma-separated.
const char* available_simd_levels();

}  // namespace s4g::cpu
