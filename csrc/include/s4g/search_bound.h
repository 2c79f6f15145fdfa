// The proven margin of the filter-then-refine search (csrc/cpu/search.cpp): a bound
//     |ŝ − s| ≤ ε(q, r)
// between a filter score ŝ (fast product, any summation order, possibly on bfloat16-rounded inputs) and
// the canonical score s (search_math.h: the float32 score every result reports). Host code only.
//
// Notation: q, r ∈ float32^d (finite); x = q·r the exact real product; q̂, r̂ the filter's inputs (q, r
// themselves for float32 filters; for the bf16 filter each element rounded to bfloat16, round to nearest
// even, float32 subnormals → 0 — exactly what vcvtne2ps2bf16 does); x̂ = q̂·r̂ exactly.
// γ_n = n·u/(1 − n·u) with u = 2⁻²⁴ (float32 round-to-nearest), Higham, "Accuracy and Stability of
// Numerical Algorithms", 2nd ed., §3.1: a sum (or dot product) evaluated so that every term goes through
// at most n roundings satisfies |computed − exact| ≤ γ_n Σ|terms| (any order, any tree, fused or
// unfused multiply-add; a first addition to 0 is exact and only helps).
//
//   |ŝ − s| ≤ |ŝ − x̂| + |x̂ − x| + |x − s|
//   (A) filter arithmetic:  |ŝ − x̂| ≤ γ_nA·Σ|q̂_k r̂_k| + ηA ≤ γ_nA·‖q̂‖‖r̂‖ + ηA      (Cauchy–Schwarz)
//       nA = Filter::acc_depth(d) (dot_depth for the float32 dot). ηA covers underflow: with gradual
//       underflow each rounding to a subnormal errs by ≤ 2⁻¹⁵⁰ absolutely; vdpbf16ps instead flushes
//       subnormal products and sums to zero, ≤ 2⁻¹²⁶ each, two products and two sums per instruction
//       (= per 2 of the nA rounding steps). Doubled for the growth of these errors through later
//       roundings: ηA = nA·2⁻¹⁴⁸ (float32) or 4·nA·2⁻¹²⁶ = nA·2⁻¹²⁴ (bf16).
//   (B) input rounding:     |x̂ − x| = |q·(r̂ − r) + (q̂ − q)·r̂| ≤ ‖q‖·‖r − r̂‖ + ‖q − q̂‖·‖r̂‖   (exact
//       identity + Cauchy–Schwarz; 0 for float32 filters). The norms are *measured* per vector (bf16
//       rounding errors are ≈ 0.4·2⁻⁸ of ‖x‖ on average against the worst case 2⁻⁸), which makes ε
//       about 2.5× tighter than the a-priori bound 2·2⁻⁸·‖q‖‖r‖.
//   (C) canonical rounding: |x − s| ≤ γ_nC·‖q‖‖r‖ + ηC, nC = min(d, 256) + ⌈d/256⌉ − 1 (a term goes
//       through ≤ 256 fused multiply-adds of its chunk and ⌈d/256⌉ − 1 chunk additions), ηC = (d +
//       ⌈d/256⌉)·2⁻¹⁴⁹ (gradual underflow, doubled as above).
//
//   ε = S·(γ_nA‖q̂‖‖r̂‖ + ηA + γ_nC‖q‖‖r‖ + ηC) + ‖q‖·e_r + e_q·‖r̂‖,   e_x = ‖x − x̂‖, ‖r̂‖ ≤ ‖r‖ + e_r.
//
// S = 2, the safety factor on the arithmetic terms: the bf16 term assumes vdpbf16ps rounds each of its
// additions to nearest even as the Intel SDM specifies; an implementation that truncated (unit 2u)
// would at most double γ — S = 2 keeps the bound valid even then, and leaves the margin that absorbs the
// rounding of the bound's own evaluation (below). The input-rounding term (B) needs no such factor:
// it is an identity, evaluated with upward-rounded norms.
//
// Evaluating ε itself: query norms are sums of exact float32 squares in double (relative error
// ≤ (d+2)·2⁻⁵³, inflated by (1 + (d+4)·2⁻⁵²)); reference norms come from the packers' float32 sums
// (sumsq_bound: Σ_true ≤ (Σ_computed + d·2⁻¹⁴⁸)/(1 − γ_nS)), square roots in double inflated by
// (1 + 2⁻⁵⁰), stored as float rounded up. Float comparisons s_pos ± ε are made safe by margin():
// fl(s_pos + ε') ≥ s_pos + ε when ε' = ε·(1 + 2⁻²²) + 2⁻²³|s_pos| + 2⁻¹⁴⁹ (|fl(y) − y| ≤ 2⁻²⁴|y| + 2⁻¹⁵⁰).
// Double comparisons add with upward rounding (add_up). Overflow: if ‖q̂‖·‖r̂‖ > 2¹¹⁸ a partial sum could
// overflow float32 and the bound would not hold: ε = +∞ then (the pair is decided canonically).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

namespace s4g::bound {

constexpr double kU = 0x1p-24;        // float32 unit roundoff (round to nearest)
constexpr double kSafety = 2.0;       // S, see above
constexpr double kOverflow = 0x1p118;  // ‖q̂‖‖r̂‖ above this: no bound (partial sums could overflow)
constexpr double kInf = std::numeric_limits<double>::infinity();

// γ_n for float32; +∞ when n·u ≥ 1/2 (never for any realistic d).
inline double gamma(int64_t n) {
  const double nu = double(n) * kU;
  return nu < 0.5 ? nu / (1.0 - nu) : kInf;
}

// Rounding steps of the canonical dot product (term (C)).
inline int64_t canonical_depth(int64_t d) {
  const int64_t chunks = (d + 255) / 256;
  return (d < 256 ? d : 256) + chunks - 1;
}

// a + b rounded upwards (double): ≥ the exact sum. With s = fl(a + b), |s − (a + b)| ≤ ulp(s)/2 and
// |s|·2⁻⁵² ∈ [ulp(s), 2 ulp(s)), so s + |s|·2⁻⁵² rounds to ≥ s + ulp(s) ≥ a + b (2⁻¹⁰⁷⁴: s = 0).
// Plain arithmetic (no libm call): it runs once per query and reference panel.
inline double add_up(double a, double b) {
  const double s = a + b;
  return s + std::fabs(s) * 0x1p-52 + 0x1p-1074;
}

// Upper bound of sqrt(Σ x²) from a float32 sum computed with ≤ depth rounding steps over d terms.
inline double sumsq_norm_bound(float computed, int64_t depth, int64_t d) {
  const double g = gamma(depth);
  if (!std::isfinite(computed) || !std::isfinite(g)) return kInf;
  return std::sqrt((double(computed) + double(d) * 0x1p-148) / (1.0 - g)) * (1.0 + 0x1p-50);
}

// A double x ≥ 0 as a float no smaller than it (+∞ beyond the float range): float() rounds to nearest,
// within 2⁻²⁴ relatively or 2⁻¹⁵⁰ absolutely, which the factor 1 + 2⁻²² and the term 2⁻¹⁴⁹ cover.
inline float float_up(double x) {
  if (!(x < 3.0e38)) return std::numeric_limits<float>::infinity();
  return float(x * (1.0 + 0x1p-22) + 0x1p-149);
}

// Constants of one filter path at dimension d.
struct Model {
  double g_filter = 0;  // S·γ_nA
  double eta = 0;       // S·(ηA + ηC)
  double g_canon = 0;   // S·γ_nC
  double daz = 0;       // √d·2⁻¹²⁶ (bf16 only): see coefficients()
  bool rounded = false;  // inputs rounded (term (B) present)
};

inline Model make_model(int64_t filter_depth, bool bf16, int64_t d) {
  Model m;
  m.g_filter = kSafety * gamma(filter_depth);
  m.g_canon = kSafety * gamma(canonical_depth(d));
  const double eta_a = bf16 ? double(filter_depth) * 0x1p-124 : double(filter_depth) * 0x1p-148;
  const double eta_c = double(d + (d + 255) / 256) * 0x1p-149;
  m.eta = kSafety * (eta_a + eta_c);
  m.daz = bf16 ? std::sqrt(double(d)) * 0x1p-126 : 0.0;
  m.rounded = bf16;
  return m;
}

// Per-query coefficients: ε(q, r) ≤ P·‖r‖ + R·e_r + H (upper bounds of the norms), see the derivation:
//   S γA ‖q̂‖(‖r‖ + e_r) + e_q(‖r‖ + e_r) + ‖q‖ e_r + S γC ‖q‖‖r‖ + H.
// qhat_limit: a reference with ‖r̂‖ bound above it gets ε = +∞ (overflow guard).
struct QueryCoef {
  double P = 0, R = 0, H = 0;
  double qhat_norm = 0;  // ‖q̂‖ upper bound
};

// The measured ‖q − q̂‖, ‖r − r̂‖ use the packed bf16 values. vcvtne2ps2bf16 never produces a bf16
// subnormal (float32 subnormals become 0, normals stay normal), but if an implementation did, vdpbf16ps
// would read it as 0 (DAZ): each element would differ from the measured one by < 2⁻¹²⁶, i.e. an extra
// ≤ √d·2⁻¹²⁶·(‖q̂‖ + ‖r̂‖) — `daz`, added so that the bound does not rest on that detail.
inline QueryCoef coefficients(const Model& m, double q_norm, double qhat_norm, double q_err) {
  QueryCoef c;
  const double a = m.g_filter * qhat_norm + q_err + m.daz;
  c.P = a + m.g_canon * q_norm;
  c.R = m.rounded ? a + q_norm : 0.0;
  c.H = m.eta + m.daz * qhat_norm;
  c.qhat_norm = qhat_norm;
  return c;
}

// ε for references with norm ≤ rn and rounding error ≤ er (both upper bounds), in double, rounded up.
inline double epsilon(const QueryCoef& c, double rn, double er) {
  if (!(c.qhat_norm * (rn + er) <= kOverflow)) return kInf;
  const double e = add_up(add_up(c.P * rn, c.R * er), c.H);
  return std::isfinite(e) ? e * (1.0 + 0x1p-50) : kInf;
}

// ε widened so that float32 comparisons against s_pos ± ε' are safe (see above), as a float.
inline float margin(double eps, float s_pos) {
  if (!std::isfinite(eps)) return std::numeric_limits<float>::infinity();
  return float_up(eps * (1.0 + 0x1p-21) + 0x1p-23 * std::fabs(double(s_pos)) + 0x1p-148);
}

}  // namespace s4g::bound
