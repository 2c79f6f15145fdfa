// Internals of the CPU search: csrc/cpu/search.cpp (top-k: filter, certify, refine), search_ranks.cpp
// (positive ranks), search_common.cpp (pieces both use) and search_canonical.cpp (the canonical blocked
// scan: the reference and the fallback). Host code only (never included by the per-ISA kernel files).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "s4g/cpu_gemm.h"
#include "s4g/kernels.h"
#include "s4g/search_bound.h"

namespace s4g::cpu::detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 64-byte aligned buffer of T (uninitialised).
template <class T>
struct Aligned {
  std::unique_ptr<T[]> raw;
  T* p = nullptr;
  void resize(int64_t n) {
    raw.reset(new T[n + 64 / sizeof(T)]);
    p = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(raw.get()) + 63) & ~uintptr_t(63));
  }
};

// Sorted, de-duplicated valid ids of each row of an nq × m id matrix (−1 and drop[q] removed).
void sorted_rows(const int64_t* ids, int64_t nq, int64_t m, std::vector<int64_t>& out, std::vector<int64_t>& cnt,
                 const int64_t* drop = nullptr);

// Canonical score of one pair.
float pair_score(const SearchInput& in, int64_t q, int64_t r);

// The canonical blocked kernels (every score in the canonical order).
void topk_canonical(const SearchInput& in, int64_t k, const int64_t* exclude, int64_t m, float* out_s,
                    int64_t* out_i);
void ranks_canonical(const SearchInput& in, const int64_t* positive, const int64_t* ignore, int64_t m,
                     int64_t* out);

// ---- filter-then-refine pieces (search_common.cpp) --------------------------------------------------
constexpr int kCanonBatch = 8;              // canonical scores computed together (interleaved chains)
constexpr int64_t kMinRangePanels = 16;     // reference panels per thread range, at least

inline const float* qrow(const SearchInput& in, int64_t q) { return in.q + q * in.ldq; }

// Canonical scores of (q, ids[t]) for t < n.
void canon_row(const Filter& F, const SearchInput& in, int64_t q, const int64_t* ids, int n, float* out);
// Canonical scores of the pairs (qi[t], ri[t]), t < n ≤ kCanonBatch.
void canon_pairs(const Filter& F, const SearchInput& in, const int64_t* qi, const int64_t* ri, int n, float* out);

// ---- query blocks ---------------------------------------------------------------------------------
struct QueryBlock {
  int64_t q0 = 0, nq = 0, panels = 0, kp = 0;
  Aligned<uint32_t> A;                  // panels × kp × mq packed query panels (filter path)
  std::vector<bound::QueryCoef> c1, c2;  // margin coefficients: the filter, the float32 dot
};

// Queries [q0, q0 + nq): packed panels (when pack) and the margin coefficients of every query.
void make_query_block(const Filter& F, const SearchInput& in, int64_t q0, int64_t nq, bool pack, QueryBlock& b);

// Work items of a block: reference ranges × groups of query panels (ranges first: each reference
// panel is then packed once per block).
struct Split {
  int64_t ranges = 1, groups = 1;
  int64_t range_begin(int64_t r, int64_t n) const { return n * r / ranges; }
  int64_t group_begin(int64_t g, int64_t panels) const { return panels * g / groups; }
};

Split make_split(int64_t n, int64_t nr, int64_t panels, int threads);

// Packs each reference panel of [nb, ne) once and runs the query panels [p0, p1) of the block on it:
// consume(p, nq, n0, rows, C, rowmax, rn, er) with C[j*nr + i] = ŝ(query p·mq + j, reference n0 + i),
// rowmax[j] ≥ every ŝ of row j (when no ŝ is NaN), and the panel's norm bounds rn ≥ ‖r‖, er ≥ ‖r − r̂‖
// (search_bound.h).
template <class Consume>
void scan_range(const Filter& F, const SearchInput& in, const QueryBlock& b, int64_t p0, int64_t p1, int64_t nb,
                int64_t ne, Consume&& consume) {
  Aligned<uint32_t> Bp;
  Bp.resize(b.kp * F.nr);
  Aligned<float> C;
  C.resize(int64_t(F.mq) * F.nr);
  std::vector<float> rowmax(F.mq);
  std::vector<float> sq(F.nr), er(F.nr);
  const int64_t depth = F.sq_depth(in.d);
  for (int64_t n0 = nb; n0 < ne; n0 += F.nr) {
    const int rows = int(std::min<int64_t>(F.nr, ne - n0));
    if (in.r_half)
      F.pack_refs_f16(static_cast<const uint16_t*>(in.r) + n0 * in.ldr, in.ldr, rows, in.d, Bp.p, sq.data(), er.data());
    else
      F.pack_refs_f32(static_cast<const float*>(in.r) + n0 * in.ldr, in.ldr, rows, in.d, Bp.p, sq.data(), er.data());
    float msq = 0, mer = 0;
    for (int i = 0; i < rows; ++i) {
      msq = std::isnan(sq[i]) ? INFINITY : std::max(msq, sq[i]);
      mer = std::isnan(er[i]) ? INFINITY : std::max(mer, er[i]);
    }
    const double rn = bound::sumsq_norm_bound(msq, depth, in.d);
    const double ern = F.bf16 ? bound::sumsq_norm_bound(mer, depth, in.d) : 0.0;
    for (int64_t p = p0; p < p1; ++p) {
      const int nq = int(std::min<int64_t>(F.mq, b.nq - p * F.mq));
      F.tile(nq, b.kp, b.A.p + p * b.kp * F.mq, Bp.p, C.p, rowmax.data());
      consume(p, nq, n0, rows, static_cast<const float*>(C.p), static_cast<const float*>(rowmax.data()), rn, ern);
    }
  }
}

// Counters of the current call (search.cpp owns them).
SearchStats& stats();

}  // namespace s4g::cpu::detail
