// Exact inner-product search maths shared by the CPU and CUDA kernels: the canonical dot product
// (its rounding is part of the contract), float16 decoding, the ranking order and a bounded heap.
#pragma once
#include <cmath>
#include "s4g/hd.h"

namespace s4g {

// Depth chunk of the canonical dot product. Every score in s4g is computed in exactly this order:
//   for each chunk of kDotChunk dimensions: acc = 0; acc = fma(q[k], r[k], acc) for k ascending;
//   total = (first chunk) ? acc : total + acc
// The blocked SIMD CPU kernel, the scalar paths and the CUDA kernel all follow it, so the score of a
// (query, reference) pair is bit-identical wherever it is computed. positive_ranks relies on this: the
// positive's own score never counts as "strictly above" itself, and ties between equal rows are exact.
constexpr int64_t kDotChunk = 256;

// IEEE binary16 bits → float (exact).
S4G_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  float v;
  if (exp == 0) {
    v = ldexpf((float)man, -24);  // zero or subnormal: man · 2^-24
  } else if (exp == 31) {
    v = man ? NAN : INFINITY;
  } else {
    v = ldexpf((float)(man | 0x400u), (int)exp - 25);
  }
  return sign ? -v : v;
}

S4G_HD float to_float(float x) { return x; }
S4G_HD float to_float(uint16_t x) { return half_bits_to_float(x); }

// Canonical score of one pair (see kDotChunk).
template <class R>
S4G_HD float dot_canonical(const float* q, const R* r, int64_t d) {
  float total = 0.0f;
  for (int64_t c0 = 0; c0 < d; c0 += kDotChunk) {
    const int64_t c1 = (c0 + kDotChunk < d) ? c0 + kDotChunk : d;
    float acc = 0.0f;
    for (int64_t k = c0; k < c1; ++k) acc = fmaf(q[k], to_float(r[k]), acc);
    total = (c0 == 0) ? acc : total + acc;
  }
  return total;
}

// Ranking order: higher score first, ties broken by the lower index.
S4G_HD bool ranks_before(float sa, int64_t ia, float sb, int64_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Bounded heap of the best `cap` candidates; the root is the worst kept one. s/i have room for cap.
struct TopkHeap {
  float* s;
  int64_t* i;
  int64_t size;
  int64_t cap;

  S4G_HD void sift_down(int64_t pos) {
    for (;;) {
      int64_t worst = pos;
      const int64_t l = 2 * pos + 1, r = l + 1;
      if (l < size && ranks_before(s[worst], i[worst], s[l], i[l])) worst = l;
      if (r < size && ranks_before(s[worst], i[worst], s[r], i[r])) worst = r;
      if (worst == pos) return;
      const float ts = s[pos]; s[pos] = s[worst]; s[worst] = ts;
      const int64_t ti = i[pos]; i[pos] = i[worst]; i[worst] = ti;
      pos = worst;
    }
  }
  // Offer a candidate; returns true if it was kept.
  S4G_HD bool push(float score, int64_t idx) {
    if (cap <= 0) return false;
    if (size < cap) {
      int64_t pos = size++;
      s[pos] = score; i[pos] = idx;
      while (pos > 0) {  // sift up: parent must rank after (be worse than) the child
        const int64_t parent = (pos - 1) / 2;
        if (!ranks_before(s[parent], i[parent], s[pos], i[pos])) break;
        const float ts = s[pos]; s[pos] = s[parent]; s[parent] = ts;
        const int64_t ti = i[pos]; i[pos] = i[parent]; i[parent] = ti;
        pos = parent;
      }
      return true;
    }
    if (!ranks_before(score, idx, s[0], i[0])) return false;
    s[0] = score; i[0] = idx;
    sift_down(0);
    return true;
  }
  // Score a new candidate must beat (when full), or -inf.
  S4G_HD float threshold() const { return size < cap ? -INFINITY : s[0]; }
  // Sort in place best-first (heap sort), then pad [size, cap) with (-inf, -1).
  S4G_HD void sort_and_pad() {
    const int64_t n = size;
    for (int64_t end = n - 1; end > 0; --end) {
      const float ts = s[0]; s[0] = s[end]; s[end] = ts;
      const int64_t ti = i[0]; i[0] = i[end]; i[end] = ti;
      size = end;
      sift_down(0);
    }
    size = n;
    for (int64_t p = n; p < cap; ++p) { s[p] = -INFINITY; i[p] = -1; }
  }
};

// Is id in the sorted list ids[0..m)? (m is small: exclusion / semi-positive lists.)
S4G_HD bool sorted_contains(const int64_t* ids, int64_t m, int64_t id) {
  int64_t lo = 0, hi = m;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (ids[mid] < id) lo = mid + 1; else hi = mid;
  }
  return lo < m && ids[lo] == id;
}

}  // namespace s4g
