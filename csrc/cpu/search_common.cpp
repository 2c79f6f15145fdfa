// Pieces shared by the filtered top-k (search.cpp) and positive ranks (search_ranks.cpp): canonical
// rescoring of chosen pairs, query blocks with their margin coefficients, the work split.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "s4g/search_cpu.h"

namespace s4g::cpu::detail {

namespace {
// Upper bounds of ‖q‖, ‖q̂‖, ‖q − q̂‖ (double sums of exact squares, inflated: search_bound.h).
void query_norms(const Filter& F, const SearchInput& in, const QueryBlock& b, int64_t j, bool packed, double* qn,
                 double* qhn, double* eq) {
  const float* q = qrow(in, b.q0 + j);
  const double inflate = 1.0 + double(in.d + 4) * 0x1p-52;
  double s = 0;
  for (int64_t k = 0; k < in.d; ++k) s += double(q[k]) * double(q[k]);
  *qn = std::sqrt(s) * inflate;
  *qhn = *qn;
  *eq = 0;
  if (!(packed && F.bf16)) return;
  // The bf16 values as the kernel sees them: read back from the packed panel (pairs k = 2p, 2p+1).
  const uint32_t* A = b.A.p + (j / F.mq) * b.kp * F.mq + j % F.mq;
  double sh = 0, se = 0;
  for (int64_t p = 0; p < b.kp && 2 * p < in.d; ++p) {
    const uint32_t w = A[p * F.mq];
    for (int h = 0; h < 2 && 2 * p + h < in.d; ++h) {
      const uint32_t bits = h ? (w & 0xffff0000u) : (w << 16);
      float x;
      std::memcpy(&x, &bits, 4);
      const double e = double(q[2 * p + h]) - double(x);
      sh += double(x) * double(x);
      se += e * e;
    }
  }
  *qhn = std::sqrt(sh) * inflate;
  *eq = std::sqrt(se) * inflate;
}

}  // namespace

// Canonical scores of (q, ids[t]) for t < n.
void canon_row(const Filter& F, const SearchInput& in, int64_t q, const int64_t* ids, int n, float* out) {
  const float* qs[kCanonBatch];
  for (int t0 = 0; t0 < n; t0 += kCanonBatch) {
    const int b = std::min(kCanonBatch, n - t0);
    for (int t = 0; t < b; ++t) qs[t] = qrow(in, q);
    if (in.r_half) {
      const uint16_t* rs[kCanonBatch];
      for (int t = 0; t < b; ++t) rs[t] = static_cast<const uint16_t*>(in.r) + ids[t0 + t] * in.ldr;
      F.canon_f16(qs, rs, b, in.d, out + t0);
    } else {
      const float* rs[kCanonBatch];
      for (int t = 0; t < b; ++t) rs[t] = static_cast<const float*>(in.r) + ids[t0 + t] * in.ldr;
      F.canon_f32(qs, rs, b, in.d, out + t0);
    }
  }
}

// Canonical scores of the pairs (qi[t], ri[t]), t < n ≤ kCanonBatch.
void canon_pairs(const Filter& F, const SearchInput& in, const int64_t* qi, const int64_t* ri, int n, float* out) {
  const float* qs[kCanonBatch];
  for (int t = 0; t < n; ++t) qs[t] = qrow(in, qi[t]);
  if (in.r_half) {
    const uint16_t* rs[kCanonBatch];
    for (int t = 0; t < n; ++t) rs[t] = static_cast<const uint16_t*>(in.r) + ri[t] * in.ldr;
    F.canon_f16(qs, rs, n, in.d, out);
  } else {
    const float* rs[kCanonBatch];
    for (int t = 0; t < n; ++t) rs[t] = static_cast<const float*>(in.r) + ri[t] * in.ldr;
    F.canon_f32(qs, rs, n, in.d, out);
  }
}

void make_query_block(const Filter& F, const SearchInput& in, int64_t q0, int64_t nq, bool pack, QueryBlock& b) {
  b.q0 = q0;
  b.nq = nq;
  b.kp = F.packed_depth(in.d);
  b.panels = ceil_div(nq, F.mq);
  if (pack) b.A.resize(b.panels * b.kp * F.mq);
  const bound::Model m1 = bound::make_model(F.acc_depth(in.d), F.bf16, in.d);
  const bound::Model m2 = bound::make_model(F.dot_depth(in.d), false, in.d);
  b.c1.resize(nq);
  b.c2.resize(nq);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < b.panels; ++p) {
    const int n = int(std::min<int64_t>(F.mq, nq - p * F.mq));
    if (pack) F.pack_queries(qrow(in, q0 + p * F.mq), in.ldq, n, in.d, b.A.p + p * b.kp * F.mq);
    for (int64_t j = p * F.mq; j < p * F.mq + n; ++j) {
      double qn, qhn, eq;
      query_norms(F, in, b, j, pack, &qn, &qhn, &eq);
      b.c1[j] = bound::coefficients(m1, qn, qhn, eq);
      b.c2[j] = bound::coefficients(m2, qn, qn, 0.0);
    }
  }
}

Split make_split(int64_t n, int64_t nr, int64_t panels, int threads) {
  Split s;
  s.ranges = std::max<int64_t>(1, std::min<int64_t>(threads, n / (nr * kMinRangePanels)));
  s.groups = std::max<int64_t>(1, std::min<int64_t>(panels, ceil_div(threads, s.ranges)));
  return s;
}

}  // namespace s4g::cpu::detail
