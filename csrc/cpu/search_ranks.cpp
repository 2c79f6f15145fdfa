// positive_ranks on the CPU: rank[q] = #{ r ∉ ignore[q] : s(q, r) > s(q, positive[q]) }, exact.
//
// The positive's score s_pos is canonical. The filter (csrc/cpu/search.cpp, cpu_gemm.h) scores every
// pair; with its proven margin ε (s4g/search_bound.h) a reference with ŝ > s_pos + ε is above the
// positive and one with ŝ < s_pos − ε is not, without ever computing s. Only the band in between is
// decided again: by a float32 dot product (exact inputs, short accumulation chains: its margin is ≈ 100×
// smaller than the bf16 filter's), and what is still within that margin, canonically. The positive
// itself has s = s_pos, so it is never counted; ties go to the query (strictly greater).
// Memory: the packed query block (≤ 2 MB), one reference panel and one tile per thread, the counts.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "s4g/cpu_gemm.h"
#include "s4g/kernels.h"
#include "s4g/search_bound.h"
#include "s4g/search_cpu.h"

namespace s4g::cpu {

using detail::ceil_div;
using detail::qrow;

namespace {

constexpr int64_t kQueryBlockBytes = int64_t(2) << 20;

struct RanksJob {
  const Filter& F;
  const SearchInput& in;
  const float* pos;  // canonical positive scores (all queries)
  bool filter_only;
};

// Per work item: counts of the block's queries, the pairs left for the canonical stage.
struct RanksItem {
  const RanksJob& job;
  const detail::QueryBlock& b;
  int64_t* cnt;  // block-local counts of this reference range
  int64_t band = 0, band2 = 0;
  int64_t pq[detail::kCanonBatch], pr[detail::kCanonBatch];
  int pending = 0;

  void flush() {
    float s[detail::kCanonBatch];
    detail::canon_pairs(job.F, job.in, pq, pr, pending, s);
    for (int t = 0; t < pending; ++t) cnt[pq[t] - b.q0] += s[t] > job.pos[pq[t]];
    pending = 0;
  }

  // A pair within the filter's margin: the float32 dot product, then (rarely) the canonical score.
  void second_stage(int64_t j, int64_t n, float m2) {
    ++band;
    const float sp = job.pos[b.q0 + j];
    const float* q = qrow(job.in, b.q0 + j);
    const float s2 = job.in.r_half ? job.F.dot_f16(q, static_cast<const uint16_t*>(job.in.r) + n * job.in.ldr, job.in.d)
                                   : job.F.dot_f32(q, static_cast<const float*>(job.in.r) + n * job.in.ldr, job.in.d);
    if (s2 > sp + m2) { ++cnt[j]; return; }
    if (s2 < sp - m2) return;
    ++band2;
    pq[pending] = b.q0 + j;
    pr[pending] = n;
    if (++pending == detail::kCanonBatch) flush();
  }

  // Scores row[0..rows) of block query j against references n0.. of a panel with norm bounds rn, er.
  void consume_row(int64_t j, const float* row, float rowmax, int rows, int64_t n0, double rn, double er) {
    const float sp = job.pos[b.q0 + j];
    const float m1 = job.filter_only ? 0.0f : bound::margin(bound::epsilon(b.c1[j], rn, er), sp);
    const float hi = sp + m1, lo = sp - m1;
    // Fast exit: the whole row is below the band (a NaN ŝ needs an overflow; then ε = +∞, lo = −∞).
    if (rowmax < lo) return;
    int above = 0, not_below = 0;
    for (int i = 0; i < rows; ++i) {
      above += row[i] > hi;
      not_below += !(row[i] < lo);  // NaN (an overflowed filter score) counts as "in the band"
    }
    cnt[j] += above;
    if (job.filter_only || not_below == above) return;
    const float m2 = bound::margin(bound::epsilon(b.c2[j], rn, 0.0), sp);
    for (int i = 0; i < rows; ++i)
      if (!(row[i] > hi) && !(row[i] < lo)) second_stage(j, n0 + i, m2);
  }
};

void ranks_block(const RanksJob& job, const detail::QueryBlock& b, std::vector<int64_t>& counts, int64_t* band,
                 int64_t* band2) {
  const Filter& F = job.F;
  const detail::Split sp = detail::make_split(job.in.n, F.nr, b.panels, omp_get_max_threads());
  counts.assign(sp.ranges * b.nq, 0);
  int64_t nb1 = 0, nb2 = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : nb1, nb2)
  for (int64_t item = 0; item < sp.ranges * sp.groups; ++item) {
    const int64_t r = item % sp.ranges, g = item / sp.ranges;
    RanksItem it{job, b, counts.data() + r * b.nq};
    detail::scan_range(F, job.in, b, sp.group_begin(g, b.panels), sp.group_begin(g + 1, b.panels),
                       sp.range_begin(r, job.in.n), sp.range_begin(r + 1, job.in.n),
                       [&](int64_t p, int nq, int64_t n0, int rows, const float* C, const float* rowmax, double rn,
                           double er) {
                         for (int j = 0; j < nq; ++j)
                           it.consume_row(p * F.mq + j, C + j * F.nr, rowmax[j], rows, n0, rn, er);
                       });
    if (it.pending) it.flush();
    nb1 += it.band;
    nb2 += it.band2;
  }
  for (int64_t r = 1; r < sp.ranges; ++r)
    for (int64_t j = 0; j < b.nq; ++j) counts[j] += counts[r * b.nq + j];
  *band += nb1;
  *band2 += nb2;
}

}  // namespace

void positive_ranks(const SearchInput& in, const int64_t* positive, const int64_t* ignore, int64_t m, int64_t* out,
                    SearchMode mode) {
  SearchStats& st = detail::stats();
  st = SearchStats{};
  st.queries = in.nq;
  if (mode == SearchMode::kCanonical || in.nq == 0) {
    st.path = "canonical";
    detail::ranks_canonical(in, positive, ignore, m, out);
    return;
  }
  st.path = "filter";
  const Filter& F = active_filter();
  std::vector<float> pos(in.nq);
#pragma omp parallel for schedule(static)
  for (int64_t q0 = 0; q0 < in.nq; q0 += detail::kCanonBatch) {
    int64_t qi[detail::kCanonBatch];
    const int n = int(std::min<int64_t>(detail::kCanonBatch, in.nq - q0));
    for (int t = 0; t < n; ++t) qi[t] = q0 + t;
    detail::canon_pairs(F, in, qi, positive + q0, n, pos.data() + q0);
  }
  const RanksJob job{F, in, pos.data(), mode == SearchMode::kFilterOnly};
  const int64_t kp = F.packed_depth(in.d);
  const int64_t block = std::max<int64_t>(F.mq, kQueryBlockBytes / (kp * 4) / F.mq * F.mq);
  detail::QueryBlock b;
  std::vector<int64_t> counts;
  for (int64_t q0 = 0; q0 < in.nq; q0 += block) {
    detail::make_query_block(F, in, q0, std::min(block, in.nq - q0), true, b);
    ranks_block(job, b, counts, &st.band, &st.band2);
    std::copy(counts.begin(), counts.begin() + b.nq, out + q0);
  }
  if (m <= 0) return;
  // Ignored ids that were counted: their canonical score decides (the same score the count used).
  std::vector<int64_t> ig, ign;
  detail::sorted_rows(ignore, in.nq, m, ig, ign, positive);
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < in.nq; ++q) {
    for (int64_t t0 = 0; t0 < ign[q]; t0 += detail::kCanonBatch) {
      const int n = int(std::min<int64_t>(detail::kCanonBatch, ign[q] - t0));
      float s[detail::kCanonBatch];
      detail::canon_row(F, in, q, ig.data() + q * m + t0, n, s);
      for (int t = 0; t < n; ++t) out[q] -= s[t] > pos[q];
    }
  }
}

}  // namespace s4g::cpu
