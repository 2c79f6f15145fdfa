// Exact inner-product top-k and positive ranks on the CPU: filter, prove the margin, refine canonically.
//
// The contract (unchanged): every reported score is the canonical float32 score of search_math.h
// (bit-identical on every SIMD level and on the GPU), ranking = score desc, index asc, and a positive
// never counts against itself. Computing *every* score canonically is slow (one fused multiply-add per
// element in a fixed order), so:
//
// 1. Filter. The fastest product the CPU has scores all pairs in any order: vdpbf16ps on bfloat16-rounded
//    inputs where AVX512-BF16 exists (≈ 2× the float32 FMA rate), else a BLIS-style packed float32
//    kernel (cpu_gemm.h). A block of queries is packed once (≤ 2 MB, L2/L3); reference micro-panels are
//    packed as the scan reaches them (each thread owns a reference range) — never a Q×N score matrix and
//    never a converted copy of the N×d references. Small batches (Q ≤ 2, serving) use a float32 dot
//    product per pair instead: no packing, memory-bound, both cores.
//    Why not a BLAS sgemm: it needs a Q×block score buffer and its summation order is unknown (the
//    bound below needs the depth), it would be a run-time dependency of the wheel, and on AVX512-BF16
//    machines it is half as fast as vdpbf16ps; the float32 path is a BLIS-style kernel of our own.
// 2. Margin. s4g/search_bound.h proves |ŝ − s| ≤ ε(q, r) = P_q·‖r‖ + R_q·‖r − r̂‖ + H (per query
//    coefficients, per reference-panel norms measured while packing).
// 3. Refine.
//    top-k: keep at least the approximate top-(k+m) per query and reference range (reservoirs on
//    (ŝ, index)); then rescore the candidates canonically in ŝ order into an exact top-k heap, and stop as
//    soon as the next candidate cannot reach it: ŝ_next + ε < s_k (strict; every candidate not yet
//    rescored and every discarded reference has ŝ ≤ ŝ_next, so s ≤ ŝ + ε < s_k and it ranks after the
//    k-th even on a tie of indices). If all candidates are rescored, the discarded references (ŝ ≤ t, t =
//    the reservoir's threshold) are excluded by t + ε < s_k. A query whose certificate fails
//    (more than m references within 2ε of its k-th score) is searched again with 4× the extra
//    candidates, and if that fails too (duplicates, wide ties) scanned canonically.
//    positive_ranks: s_pos canonical; ŝ > s_pos + ε counts, ŝ < s_pos − ε does not; only the band in
//    between is decided again, first by a float32 dot product with its own (≈ 100× smaller) margin,
//    then canonically.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "s4g/cpu_gemm.h"
#include "s4g/kernels.h"
#include "s4g/search_bound.h"
#include "s4g/search_cpu.h"
#include "s4g/search_math.h"

namespace s4g::cpu {

using detail::Aligned;
using detail::canon_row;
using detail::ceil_div;
using detail::make_query_block;
using detail::make_split;
using detail::qrow;
using detail::QueryBlock;
using detail::scan_range;
using detail::Split;

namespace {

constexpr int64_t kExtraMin = 32;                // m = max(32, k) extra candidates
constexpr int64_t kQueryBlockBytes = int64_t(2) << 20;  // packed query block
constexpr int64_t kHeapBytes = int64_t(64) << 20;       // candidate reservoirs of one query block

// Tuning knobs (tests force the paths on small inputs through set_search_tuning).
std::atomic<int64_t> g_small_batch{3};     // Q below this: float32 dot filter, no packing (memory-bound)
std::atomic<int64_t> g_canonical_ratio{10};  // (k + m)·ratio ≥ N: canonical scan (rescoring would cost more)

SearchStats g_stats;  // counters of the last call (diagnostics; concurrent calls may mix them)

// ---- top-k ------------------------------------------------------------------------------------------
// Approximate candidates (ŝ, index) per reference range × query of a block: a reservoir with room for
// 2·cap that admits only ŝ above its threshold and, when full, keeps its best cap (nth_element by
// ranks_before) and raises the threshold to the cap-th best — amortised O(1) per admission (a binary
// heap cost ~1/3 of the tile time at k = 128). Everything discarded has ŝ ≤ the threshold, which only
// rises; the threshold stays −∞ until something is discarded ("complete").
struct Cand {
  float s;
  int64_t i;
};

inline bool cand_before(const Cand& a, const Cand& b) { return ranks_before(a.s, a.i, b.s, b.i); }

struct Reservoirs {
  int64_t nq = 0, cap = 0;
  std::vector<Cand> c;     // (range · nq + j) · 2cap …
  std::vector<int64_t> n;  // filled
  std::vector<float> thr;  // admission threshold
  void reset(int64_t ranges, int64_t nq_, int64_t cap_) {
    nq = nq_;
    cap = cap_;
    c.resize(ranges * nq * 2 * cap);
    n.assign(ranges * nq, 0);
    thr.assign(ranges * nq, -INFINITY);
  }
};

struct Excl {
  std::vector<int64_t> ids, cnt;
  int64_t m = 0;
  bool has(int64_t q, int64_t id) const { return m > 0 && sorted_contains(ids.data() + q * m, cnt[q], id); }
};

// Offer the scores row[0..rows) (references n0..; none above `rowmax`) of global query q to reservoir h.
inline void offer(Reservoirs& R, int64_t h, const float* row, float rowmax, int rows, int64_t n0, const Excl& ex,
                  int64_t q) {
  float thr = R.thr[h];
  if (!(rowmax > thr)) return;  // the common case once something was discarded (NaN is never admitted)
  Cand* c = R.c.data() + h * 2 * R.cap;
  int64_t n = R.n[h];
  for (int i = 0; i < rows; ++i) {
    if (!(row[i] > thr) || ex.has(q, n0 + i)) continue;
    if (n == 2 * R.cap) {
      std::nth_element(c, c + R.cap - 1, c + n, cand_before);
      n = R.cap;
      thr = c[R.cap - 1].s;
      if (!(row[i] > thr)) continue;
    }
    c[n++] = Cand{row[i], n0 + i};
  }
  R.n[h] = n;
  R.thr[h] = thr;
}

struct TopkJob {
  const Filter& F;
  const SearchInput& in;
  int64_t k;
  const Excl& ex;
  SearchMode mode;
  float* out_s;
  int64_t* out_i;
};

// Certify and refine one query (see the file note). Returns false when the certificate fails.
bool refine(const TopkJob& job, const Reservoirs& R, int64_t ranges, int64_t j, int64_t q, double eps, int64_t* rescored) {
  std::vector<Cand> cand;
  bool complete = true;
  double t_out = -INFINITY;  // every discarded reference has ŝ ≤ t_out
  for (int64_t r = 0; r < ranges; ++r) {
    const int64_t h = r * R.nq + j;
    if (R.thr[h] != -INFINITY) {
      complete = false;
      t_out = std::max(t_out, double(R.thr[h]));
    }
    cand.insert(cand.end(), R.c.begin() + h * 2 * R.cap, R.c.begin() + h * 2 * R.cap + R.n[h]);
  }
  std::sort(cand.begin(), cand.end(), cand_before);
  const int64_t k = job.k, kk = std::min(k, job.in.n);
  float* os = job.out_s + q * k;
  int64_t* oi = job.out_i + q * k;
  if (job.mode == SearchMode::kFilterOnly) {
    const int64_t take = std::min<int64_t>(k, (int64_t)cand.size());
    for (int64_t t = 0; t < k; ++t) { os[t] = t < take ? cand[t].s : -INFINITY; oi[t] = t < take ? cand[t].i : -1; }
    return true;
  }
  TopkHeap E{os, oi, 0, kk};
  size_t c = 0;
  bool certified = false;
  float sc[detail::kCanonBatch];
  int64_t ids[detail::kCanonBatch];
  while (c < cand.size()) {
    if (E.size == kk && kk > 0 && bound::add_up(cand[c].s, eps) < double(E.s[0])) { certified = true; break; }
    const int n = int(std::min<size_t>(detail::kCanonBatch, cand.size() - c));
    for (int t = 0; t < n; ++t) ids[t] = cand[c + t].i;
    canon_row(job.F, job.in, q, ids, n, sc);
    for (int t = 0; t < n; ++t) E.push(sc[t], ids[t]);
    c += n;
    *rescored += n;
  }
  if (!certified) certified = complete || (E.size == kk && kk > 0 && bound::add_up(t_out, eps) < double(E.s[0]));
  if (!certified) return false;
  E.sort_and_pad();
  for (int64_t t = kk; t < k; ++t) { os[t] = -INFINITY; oi[t] = -1; }
  return true;
}

// Certify/refine the block's queries; failing ones are appended to `failed` (global ids).
void refine_block(const TopkJob& job, const QueryBlock& b, const Reservoirs& H, int64_t ranges, double rn, double er,
                  bool dot_path, std::vector<int64_t>& failed) {
  int64_t rescored = 0, certified = 0;
  std::vector<int64_t> fail_local;
#pragma omp parallel reduction(+ : rescored, certified)
  {
    std::vector<int64_t> mine;
#pragma omp for schedule(dynamic, 16)
    for (int64_t j = 0; j < b.nq; ++j) {
      const double eps = dot_path ? bound::epsilon(b.c2[j], rn, 0.0) : bound::epsilon(b.c1[j], rn, er);
      if (refine(job, H, ranges, j, b.q0 + j, eps, &rescored)) ++certified;
      else mine.push_back(b.q0 + j);
    }
#pragma omp critical
    fail_local.insert(fail_local.end(), mine.begin(), mine.end());
  }
  failed.insert(failed.end(), fail_local.begin(), fail_local.end());
  g_stats.rescored += rescored;
  g_stats.certified += certified;
}

// Maxima of the reference norm bounds over a scan (per work item, combined at the end).
struct NormMax {
  double rn = 0, er = 0;
  void add(double a, double b) { rn = std::max(rn, a); er = std::max(er, b); }
};

void scan_topk_packed(const TopkJob& job, const QueryBlock& b, const Split& sp, Reservoirs& H, NormMax& nm) {
  const Filter& F = job.F;
  std::vector<NormMax> part(sp.ranges * sp.groups);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t item = 0; item < sp.ranges * sp.groups; ++item) {
    const int64_t r = item % sp.ranges, g = item / sp.ranges;
    NormMax& mine = part[item];
    scan_range(F, job.in, b, sp.group_begin(g, b.panels), sp.group_begin(g + 1, b.panels),
               sp.range_begin(r, job.in.n), sp.range_begin(r + 1, job.in.n),
               [&](int64_t p, int nq, int64_t n0, int rows, const float* C, const float* rowmax, double rn,
                   double er) {
                 mine.add(rn, er);
                 for (int j = 0; j < nq; ++j) {
                   const int64_t bj = p * F.mq + j;
                   offer(H, r * H.nq + bj, C + j * F.nr, rowmax[j], rows, n0, job.ex, b.q0 + bj);
                 }
               });
  }
  for (const auto& m : part) nm.add(m.rn, m.er);
}

// Small batches: ŝ = float32 dot product per pair, no packing; also Σ r² per reference for the margin.
void scan_topk_dot(const TopkJob& job, const QueryBlock& b, const Split& sp, Reservoirs& H, NormMax& nm) {
  const Filter& F = job.F;
  const SearchInput& in = job.in;
  const int64_t depth = F.dot_depth(in.d);
  std::vector<NormMax> part(sp.ranges);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < sp.ranges; ++r) {
    float msq = 0;
    for (int64_t n = sp.range_begin(r, in.n); n < sp.range_begin(r + 1, in.n); ++n) {
      const float* rf = static_cast<const float*>(in.r) + n * in.ldr;
      const uint16_t* rh = static_cast<const uint16_t*>(in.r) + n * in.ldr;
      const float sq = in.r_half ? F.sumsq_f16(rh, in.d) : F.sumsq_f32(rf, in.d);
      msq = std::isnan(sq) ? INFINITY : std::max(msq, sq);
      for (int64_t j = 0; j < b.nq; ++j) {
        const float* q = qrow(in, b.q0 + j);
        const float s = in.r_half ? F.dot_f16(q, rh, in.d) : F.dot_f32(q, rf, in.d);
        offer(H, r * H.nq + j, &s, s, 1, n, job.ex, b.q0 + j);
      }
    }
    part[r].add(bound::sumsq_norm_bound(msq, depth, in.d), 0.0);
  }
  for (const auto& m : part) nm.add(m.rn, m.er);
}

// One filtered pass over all queries of job.in keeping ≥ `cap` candidates each; returns the queries
// (ids in job.in) whose certificate failed, their output rows unwritten.
std::vector<int64_t> topk_filtered(const TopkJob& job, bool dot_path, int64_t cap) {
  const Filter& F = job.F;
  const SearchInput& in = job.in;
  const int threads = omp_get_max_threads();
  const int64_t kp = F.packed_depth(in.d);
  int64_t block = dot_path ? in.nq : std::max<int64_t>(F.mq, kQueryBlockBytes / (kp * 4) / F.mq * F.mq);
  block = std::max<int64_t>(F.mq, std::min(block, kHeapBytes / (threads * cap * 2 * int64_t(sizeof(Cand))) / F.mq * F.mq));
  std::vector<int64_t> failed;
  QueryBlock b;
  Reservoirs H;
  for (int64_t q0 = 0; q0 < in.nq; q0 += block) {
    make_query_block(F, in, q0, std::min(block, in.nq - q0), !dot_path, b);
    const Split sp = dot_path ? Split{std::max<int64_t>(1, std::min<int64_t>(threads, in.n / 1024)), 1}
                              : make_split(in.n, F.nr, b.panels, threads);
    H.reset(sp.ranges, b.nq, cap);
    NormMax nm;
    if (dot_path) scan_topk_dot(job, b, sp, H, nm);
    else scan_topk_packed(job, b, sp, H, nm);
    refine_block(job, b, H, sp.ranges, nm.rn, nm.er, dot_path, failed);
  }
  std::sort(failed.begin(), failed.end());
  return failed;
}

// Runs `solve` on the sub-problem of the queries `ids` (their rows and exclusions gathered) and writes
// its output rows back; returns the ids (in job.in) that `solve` reports as failed.
template <class Solve>
std::vector<int64_t> on_subset(const TopkJob& job, const std::vector<int64_t>& ids, Solve&& solve) {
  const SearchInput& in = job.in;
  const int64_t f = (int64_t)ids.size(), d = in.d, k = job.k, m = job.ex.m;
  std::vector<float> qs(f * d), os(f * k);
  std::vector<int64_t> oi(f * k);
  Excl ex;
  ex.m = m;
  ex.ids.assign(m > 0 ? f * m : 0, -1);
  ex.cnt.assign(m > 0 ? f : 0, 0);
  for (int64_t t = 0; t < f; ++t) {
    std::copy(qrow(in, ids[t]), qrow(in, ids[t]) + d, qs.begin() + t * d);
    if (m == 0) continue;
    ex.cnt[t] = job.ex.cnt[ids[t]];  // the sorted valid ids; the rest of the row stays −1 (padding)
    std::copy(job.ex.ids.begin() + ids[t] * m, job.ex.ids.begin() + ids[t] * m + ex.cnt[t], ex.ids.begin() + t * m);
  }
  SearchInput sub = in;
  sub.q = qs.data();
  sub.nq = f;
  sub.ldq = d;
  std::vector<int64_t> failed = solve(TopkJob{job.F, sub, k, ex, job.mode, os.data(), oi.data()});
  std::vector<char> bad(f, 0);
  for (int64_t t : failed) bad[t] = 1;
  std::vector<int64_t> out;
  for (int64_t t = 0; t < f; ++t) {
    if (bad[t]) { out.push_back(ids[t]); continue; }
    std::copy(os.begin() + t * k, os.begin() + (t + 1) * k, job.out_s + ids[t] * k);
    std::copy(oi.begin() + t * k, oi.begin() + (t + 1) * k, job.out_i + ids[t] * k);
  }
  return out;
}

// The filtered search with its two ways out: the queries whose certificate fails are searched again
// with 4× the extra candidates (a filter pass over the few of them is cheap), and those that fail again
// (ties or near-ties wider than the margin: many duplicates) are scanned canonically.
void topk_search(const TopkJob& job, bool dot_path) {
  const int64_t cap = std::min(job.k + std::max(kExtraMin, job.k), job.in.n + 1);
  std::vector<int64_t> failed = topk_filtered(job, dot_path, cap);
  g_stats.retried = (int64_t)failed.size();
  if (!failed.empty() && cap <= job.in.n) {
    const int64_t wide = std::min(job.k + 4 * (cap - job.k), job.in.n + 1);
    failed = on_subset(job, failed, [&](const TopkJob& sub) { return topk_filtered(sub, dot_path, wide); });
  }
  g_stats.fallback = (int64_t)failed.size();
  if (failed.empty()) return;
  on_subset(job, failed, [](const TopkJob& sub) {
    const std::vector<int64_t>& ids = sub.ex.ids;
    detail::topk_canonical(sub.in, sub.k, sub.ex.m > 0 ? ids.data() : nullptr, sub.ex.m, sub.out_s, sub.out_i);
    return std::vector<int64_t>{};
  });
}

}  // namespace

namespace detail {
SearchStats& stats() { return g_stats; }
}  // namespace detail

SearchStats last_search_stats() { return g_stats; }

void set_search_tuning(int64_t small_batch, int64_t canonical_ratio) {
  if (small_batch >= 0) g_small_batch = small_batch;
  if (canonical_ratio >= 0) g_canonical_ratio = canonical_ratio;
}

void topk_similarity(const SearchInput& in, int64_t k, const int64_t* exclude, int64_t m, float* out_s,
                     int64_t* out_i, SearchMode mode) {
  g_stats = SearchStats{};
  g_stats.queries = in.nq;
  const int64_t extra = std::max(kExtraMin, k);
  if (mode == SearchMode::kCanonical || in.n == 0 || (mode == SearchMode::kExact && (k + extra) * g_canonical_ratio >= in.n)) {
    g_stats.path = "canonical";
    detail::topk_canonical(in, k, exclude, m, out_s, out_i);
    return;
  }
  if (in.nq == 0) return;
  Excl ex;
  ex.m = m;
  if (m > 0) detail::sorted_rows(exclude, in.nq, m, ex.ids, ex.cnt);
  const Filter& F = active_filter();
  const bool dot_path = in.nq < g_small_batch;
  g_stats.path = dot_path ? "dot" : "filter";
  topk_search(TopkJob{F, in, k, ex, mode, out_s, out_i}, dot_path);
}

}  // namespace s4g::cpu
