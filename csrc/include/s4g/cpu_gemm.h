// Register-blocked micro-kernels for the exact-search kernels (CPU), one per instruction set.
//
// A micro-kernel computes an mr×nr tile of scores C[i][j] = Σ_k R[i][k]·A[k][j] over one depth chunk
// (kc ≤ kDotChunk) with one fused multiply-add per (i, j, k) in ascending k, i.e. exactly the canonical
// dot product of search_math.h, so its scores are bit-identical to dot_canonical():
//   R  : mr reference rows, row stride ldr (floats), read in place (no packing: each R value is broadcast)
//   Ap : packed query panel, kc × nr floats (query j of the panel at Ap[k*nr + j]), zero-padded
//   C  : mr rows of nr scores, row stride ldc; acc=false stores the chunk, acc=true adds it (C += chunk)
#pragma once
#include <cstdint>

namespace s4g::cpu {

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

// Each returns nullptr when the translation unit was not compiled for that instruction set.
const Ukr* ukr_avx512();
const Ukr* ukr_avx2();
const Ukr* ukr_generic();

// The micro-kernel in use (best the CPU supports, unless overridden by set_simd_level()).
const Ukr& active_ukr();
// Force "avx512" | "avx2" | "generic" | "auto"; throws std::invalid_argument if unavailable here.
void set_simd_level(const char* name);
// Instruction sets compiled in and supported by this CPU, best first.
const char* available_simd_levels();

}  // namespace s4g::cpu
