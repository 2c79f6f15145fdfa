// CPU kernels of s4g_engine._core (csrc/cpu). Plain pointers and 64-bit sizes; no Python here.
// Input validation (shapes, dtypes, finiteness, id ranges) happens in s4g_engine/kernels.py and again,
// briefly, in the bindings; these functions trust their arguments.
#pragma once
#include <cstdint>

namespace s4g::cpu {

// ---- polar (csrc/cpu/polar.cpp) ----
// aerial: B×A×A×C (uint8 or float32, C-contiguous); out: B×H×W×C float32.
// out = bilinear_sample(aerial) * scale[c] + bias[c]   (samples outside the tile are 0 before scaling)
void polar_transform_u8(const uint8_t* aerial, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                        const float* scale, const float* bias, float* out);
void polar_transform_f32(const float* aerial, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                         const float* scale, const float* bias, float* out);
// polar: H×W×C float32; out: A×A×C float32, `fill` outside the circle r < (A/2)(H−1)/H.
void inverse_polar(const float* polar, int64_t H, int64_t W, int64_t C, int64_t A, float fill, float* out);
// Number of sampling maps held in the (A, H, W) cache.
int64_t polar_cache_size();

// ---- exact search (csrc/cpu/search.cpp) ----
struct SearchInput {
  const float* q;   // queries, nq × d, row stride ldq (floats)
  int64_t nq;
  int64_t ldq;
  const void* r;    // references, n × d, float32 or float16 bits (r_half), row stride ldr (elements)
  bool r_half;
  int64_t n;
  int64_t ldr;
  int64_t d;
};

// How the search computes its result (csrc/cpu/search.cpp):
//   kExact      filter with the fastest product, prove the margin, refine canonically (the default);
//   kCanonical  every score with the canonical kernel (the reference, and the fallback of kExact);
//   kFilterOnly the filter's own answer, scores ŝ, no refinement — NOT exact; tests use it to show that
//               their adversarial inputs defeat a plain filter.
enum class SearchMode { kExact, kCanonical, kFilterOnly };

// Top-k by inner product: out_s/out_i are nq × k; ties → lower index; k > candidates → (-inf, -1).
// exclude: nq × m ids (−1 = none; may be null when m == 0).
void topk_similarity(const SearchInput& in, int64_t k, const int64_t* exclude, int64_t m, float* out_s,
                     int64_t* out_i, SearchMode mode = SearchMode::kExact);

// rank[q] = #{ r ∉ ignore[q] : s(q, r) > s(q, positive[q]) } with bit-identical canonical scores.
void positive_ranks(const SearchInput& in, const int64_t* positive, const int64_t* ignore, int64_t m,
                    int64_t* out, SearchMode mode = SearchMode::kExact);

// Counters of the last search call in this process (diagnostics and tests; not thread-safe across
// concurrent calls). path: "filter", "dot" (small batches), "canonical".
struct SearchStats {
  const char* path = "";
  int64_t queries = 0;
  int64_t certified = 0;        // top-k queries proven by the certificate
  int64_t retried = 0;          // top-k queries searched again with more candidates
  int64_t fallback = 0;         // ... and then re-scanned canonically
  int64_t rescored = 0;         // canonical scores computed for candidates (top-k)
  int64_t band = 0;             // positive_ranks: pairs within the filter's margin of the positive
  int64_t band2 = 0;            // ... and still within the float32 second stage's margin (canonical)
};
SearchStats last_search_stats();

// Tests only: queries below `small_batch` use the float32 dot filter (default 3); the canonical scan is
// used when (k + m)·canonical_ratio ≥ N (default 10; 0 never). A negative value keeps the setting.
void set_search_tuning(int64_t small_batch, int64_t canonical_ratio);

// Number of NaN/Inf values in a rows × cols matrix with row stride ld (elements); OpenMP-parallel.
int64_t count_nonfinite_f32(const float* x, int64_t rows, int64_t cols, int64_t ld);
int64_t count_nonfinite_f16(const uint16_t* x, int64_t rows, int64_t cols, int64_t ld);

// Threads used by the kernels (OpenMP); set_num_threads(n <= 0) restores the default.
int num_threads();
void set_num_threads(int n);

}  // namespace s4g::cpu
