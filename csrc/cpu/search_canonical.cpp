// The canonical blocked search: every score computed in the canonical order of search_math.h by the
// register-blocked micro-kernels of cpu_gemm.h (Ukr). This is the reference of the filter-then-refine
// search (csrc/cpu/search.cpp) and its fallback for the queries whose certificate fails; it is also the
// whole search when the caller asks for SearchMode::kCanonical.
//
// Blocking: a block of ≤ 512 queries, packed once per thread, is the vector operand; reference rows are
// broadcast straight from memory (no copy of the N×d matrix). Parallelism: query blocks × reference
// ranges; per-range top-k lists are merged at the end. Also here: thread control and the NaN/Inf count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "s4g/cpu_gemm.h"
#include "s4g/kernels.h"
#include "s4g/search_cpu.h"
#include "s4g/search_math.h"

namespace s4g::cpu {

using detail::Aligned;
using detail::ceil_div;

namespace {

constexpr int64_t kMaxBlockQueries = 512;
constexpr int64_t kMinRefsPerSplit = 2048;

struct Plan {
  int64_t mc = 0;      // queries per block (multiple of nr)
  int64_t blocks = 0;  // query blocks
  int64_t splits = 1;  // reference ranges per block
};

Plan make_plan(int64_t nq, int64_t n, int64_t nr, int threads) {
  Plan p;
  if (nq == 0) return p;
  const int64_t panels = ceil_div(nq, nr);
  const int64_t max_panels = std::max<int64_t>(1, kMaxBlockQueries / nr);
  int64_t blocks = std::max(ceil_div(panels, max_panels), std::min<int64_t>(threads, panels));
  const int64_t per = ceil_div(panels, blocks);
  p.blocks = ceil_div(panels, per);
  p.mc = per * nr;
  if (p.blocks < threads) {
    p.splits = std::min(ceil_div(threads, p.blocks), std::max<int64_t>(1, n / kMinRefsPerSplit));
  }
  return p;
}

// Runs the micro-kernel over queries [q0, q0+mc) × references [nb, ne) and hands each micro-panel of
// scores to consume(n0, rows, C, ldc): C[i*ldc + j] = score(query q0+j, reference n0+i), j < mcpad.
template <class Consume>
void scan_block(const Ukr& u, const SearchInput& in, int64_t q0, int64_t mc, int64_t nb, int64_t ne,
                Consume&& consume) {
  const int64_t nr = u.nr, mr = u.mr, d = in.d;
  const int64_t mcpad = ceil_div(mc, nr) * nr;
  const int64_t panels = mcpad / nr;
  const int64_t chunks = ceil_div(d, kDotChunk);
  Aligned<float> ap, cbuf, conv;
  ap.resize(chunks * kDotChunk * mcpad);
  cbuf.resize(mr * mcpad);
  // Pack the query block: chunk c, panel p, depth k, lane j → ap[c*KC*mcpad + p*kc*nr + k*nr + j].
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t k0 = c * kDotChunk, kc = std::min(kDotChunk, d - k0);
    float* base = ap.p + c * kDotChunk * mcpad;
    for (int64_t p = 0; p < panels; ++p) {
      float* panel = base + p * kc * nr;
      for (int64_t j = 0; j < nr; ++j) {
        const int64_t q = q0 + p * nr + j;
        if (q < q0 + mc) {
          const float* src = in.q + q * in.ldq + k0;
          for (int64_t k = 0; k < kc; ++k) panel[k * nr + j] = src[k];
        } else {
          for (int64_t k = 0; k < kc; ++k) panel[k * nr + j] = 0.0f;
        }
      }
    }
  }
  if (in.r_half) conv.resize(mr * d);
  for (int64_t n0 = nb; n0 < ne; n0 += mr) {
    const int rows = (int)std::min<int64_t>(mr, ne - n0);
    const float* R;
    int64_t ldr;
    if (in.r_half) {
      const uint16_t* rh = static_cast<const uint16_t*>(in.r);
      for (int i = 0; i < rows; ++i) u.half_to_float(rh + (n0 + i) * in.ldr, conv.p + i * d, d);
      R = conv.p;
      ldr = d;
    } else {
      R = static_cast<const float*>(in.r) + n0 * in.ldr;
      ldr = in.ldr;
    }
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t k0 = c * kDotChunk, kc = std::min(kDotChunk, d - k0);
      const float* base = ap.p + c * kDotChunk * mcpad;
      for (int64_t p = 0; p < panels; ++p)
        u.run(rows, kc, base + p * kc * nr, R + k0, ldr, cbuf.p + p * nr, mcpad, c > 0);
    }
    consume(n0, rows, static_cast<const float*>(cbuf.p), mcpad);
  }
}

}  // namespace

namespace detail {

void sorted_rows(const int64_t* ids, int64_t nq, int64_t m, std::vector<int64_t>& out, std::vector<int64_t>& cnt,
                 const int64_t* drop) {
  out.assign(nq * m, 0);
  cnt.assign(nq, 0);
  for (int64_t q = 0; q < nq; ++q) {
    int64_t c = 0;
    for (int64_t t = 0; t < m; ++t) {
      const int64_t id = ids[q * m + t];
      if (id < 0 || (drop && id == drop[q])) continue;
      out[q * m + c++] = id;
    }
    std::sort(out.begin() + q * m, out.begin() + q * m + c);
    c = std::unique(out.begin() + q * m, out.begin() + q * m + c) - (out.begin() + q * m);
    cnt[q] = c;
  }
}

float pair_score(const SearchInput& in, int64_t q, int64_t r) {
  const float* qp = in.q + q * in.ldq;
  if (in.r_half) return dot_canonical(qp, static_cast<const uint16_t*>(in.r) + r * in.ldr, in.d);
  return dot_canonical(qp, static_cast<const float*>(in.r) + r * in.ldr, in.d);
}


void topk_canonical(const SearchInput& in, int64_t k, const int64_t* exclude, int64_t m, float* out_s,
                    int64_t* out_i) {
  const Ukr& u = active_ukr();
  const int threads = omp_get_max_threads();
  const int64_t kk = std::min(k, in.n);  // heap capacity: there are only n candidates
  std::vector<int64_t> ex, exn;
  if (m > 0) sorted_rows(exclude, in.nq, m, ex, exn);
  const Plan plan = make_plan(in.nq, in.n, u.nr, threads);
  const int64_t S = plan.splits;
  // S == 1: heaps live in the output rows. S > 1: per-split lists, merged below.
  std::vector<float> part_s(S > 1 ? S * in.nq * kk : 0);
  std::vector<int64_t> part_i(S > 1 ? S * in.nq * kk : 0), part_n(S > 1 ? S * in.nq : 0);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t item = 0; item < plan.blocks * S; ++item) {
    const int64_t b = item / S, s = item % S;
    const int64_t q0 = b * plan.mc, mc = std::min(plan.mc, in.nq - q0);
    const int64_t nb = in.n * s / S, ne = in.n * (s + 1) / S;
    const int64_t mcpad = ceil_div(mc, u.nr) * u.nr;
    std::vector<TopkHeap> heaps(mc);
    std::vector<float> thr(mcpad, INFINITY);  // padded lanes never pass
    for (int64_t j = 0; j < mc; ++j) {
      const int64_t q = q0 + j;
      if (S == 1) heaps[j] = TopkHeap{out_s + q * k, out_i + q * k, 0, kk};
      else heaps[j] = TopkHeap{part_s.data() + (s * in.nq + q) * kk, part_i.data() + (s * in.nq + q) * kk, 0, kk};
      thr[j] = heaps[j].threshold();
    }
    scan_block(u, in, q0, mc, nb, ne, [&](int64_t n0, int rows, const float* C, int64_t ldc) {
      for (int i = 0; i < rows; ++i) {
        const float* row = C + i * ldc;
        int any = 0;
        for (int64_t j = 0; j < mcpad; ++j) any |= row[j] > thr[j];
        if (!any) continue;
        const int64_t n = n0 + i;
        for (int64_t j = 0; j < mc; ++j) {
          if (!(row[j] > thr[j])) continue;
          const int64_t q = q0 + j;
          if (m > 0 && sorted_contains(ex.data() + q * m, exn[q], n)) continue;
          heaps[j].push(row[j], n);
          thr[j] = heaps[j].threshold();
        }
      }
    });
    for (int64_t j = 0; j < mc; ++j) {
      if (S == 1) {
        heaps[j].sort_and_pad();
        for (int64_t t = kk; t < k; ++t) { out_s[(q0 + j) * k + t] = -INFINITY; out_i[(q0 + j) * k + t] = -1; }
      } else {
        part_n[s * in.nq + q0 + j] = heaps[j].size;
      }
    }
  }
  if (S == 1) return;
  // Merge the per-split lists of each query (ranking order: score desc, index asc).
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < in.nq; ++q) {
    std::vector<std::pair<float, int64_t>> cand;
    cand.reserve(S * kk);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t t = 0; t < part_n[s * in.nq + q]; ++t)
        cand.emplace_back(part_s[(s * in.nq + q) * kk + t], part_i[(s * in.nq + q) * kk + t]);
    const int64_t take = std::min<int64_t>(k, (int64_t)cand.size());
    auto before = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
      return ranks_before(a.first, a.second, b.first, b.second);
    };
    std::partial_sort(cand.begin(), cand.begin() + take, cand.end(), before);
    for (int64_t t = 0; t < k; ++t) {
      out_s[q * k + t] = t < take ? cand[t].first : -INFINITY;
      out_i[q * k + t] = t < take ? cand[t].second : -1;
    }
  }
}

void ranks_canonical(const SearchInput& in, const int64_t* positive, const int64_t* ignore, int64_t m,
                     int64_t* out) {
  const Ukr& u = active_ukr();
  const int threads = omp_get_max_threads();
  std::vector<float> pos(in.nq);
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < in.nq; ++q) pos[q] = pair_score(in, q, positive[q]);
  const Plan plan = make_plan(in.nq, in.n, u.nr, threads);
  const int64_t S = plan.splits;
  std::vector<int64_t> part(S * in.nq, 0);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t item = 0; item < plan.blocks * S; ++item) {
    const int64_t b = item / S, s = item % S;
    const int64_t q0 = b * plan.mc, mc = std::min(plan.mc, in.nq - q0);
    const int64_t nb = in.n * s / S, ne = in.n * (s + 1) / S;
    const int64_t mcpad = ceil_div(mc, u.nr) * u.nr;
    std::vector<float> thr(mcpad, INFINITY);
    std::vector<int64_t> cnt(mcpad, 0);
    for (int64_t j = 0; j < mc; ++j) thr[j] = pos[q0 + j];
    scan_block(u, in, q0, mc, nb, ne, [&](int64_t, int rows, const float* C, int64_t ldc) {
      for (int i = 0; i < rows; ++i) {
        const float* row = C + i * ldc;
        for (int64_t j = 0; j < mcpad; ++j) cnt[j] += row[j] > thr[j];
      }
    });
    for (int64_t j = 0; j < mc; ++j) part[s * in.nq + q0 + j] = cnt[j];
  }
  std::vector<int64_t> ig, ign;
  if (m > 0) sorted_rows(ignore, in.nq, m, ig, ign, positive);
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < in.nq; ++q) {
    int64_t c = 0;
    for (int64_t s = 0; s < S; ++s) c += part[s * in.nq + q];
    // Ignored ids that were counted (their canonical score is bit-identical to the blocked one).
    for (int64_t t = 0; m > 0 && t < ign[q]; ++t)
      if (pair_score(in, q, ig[q * m + t]) > pos[q]) --c;
    out[q] = c;
  }
}

}  // namespace detail

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  if (n <= 0) {
    n = omp_get_num_procs();
    if (const char* env = std::getenv("OMP_NUM_THREADS")) n = std::max(1, std::atoi(env));
  }
  omp_set_num_threads(n);
}

int64_t count_nonfinite_f32(const float* x, int64_t rows, int64_t cols, int64_t ld) {
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = x + r * ld;
    int64_t b = 0;
    for (int64_t c = 0; c < cols; ++c) {  // bit test (vectorises; isfinite() may not)
      uint32_t u;
      std::memcpy(&u, p + c, 4);
      b += (u & 0x7f800000u) == 0x7f800000u;
    }
    bad += b;
  }
  return bad;
}

int64_t count_nonfinite_f16(const uint16_t* x, int64_t rows, int64_t cols, int64_t ld) {
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* p = x + r * ld;
    int64_t b = 0;
    for (int64_t c = 0; c < cols; ++c) b += (p[c] & 0x7c00u) == 0x7c00u;
    bad += b;
  }
  return bad;
}

}  // namespace s4g::cpu
