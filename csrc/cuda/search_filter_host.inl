// Host side of the filtered GPU search (csrc/cuda/search_filter.cu includes this file at its end: one
// translation unit, so the kernels stay file-local). See search_filter.cu for the design.

namespace s4g::cuda {
namespace {

bool fits_int(const Search& s) {
  const int64_t lim = (int64_t(1) << 31) - 1;
  return s.n < lim && s.nq < lim && s.d < lim && s.ldq < lim && s.ldr < lim;
}

int current_device() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

Search with_queries(const Search& s, const float* q, int64_t nq, int64_t ldq) {
  Search b = s;
  b.q = q;
  b.nq = nq;
  b.ldq = ldq;
  return b;
}

// RN ≥ max ‖r‖ and ER ≥ max ‖r − r̂‖ over the whole reference set (TF32: a priori 2⁻¹⁰‖r‖; float16: the
// parts a tensor core might flush as subnormal).
struct RefBound {
  double rn = 0, er = 0;
};

RefBound ref_bound(const Search& s) {
  const int blocks = (int)std::min<int64_t>(2048, std::max<int64_t>(1, (s.n + 7) / 8));
  Buf out(blocks * 2 * sizeof(double));
  if (s.r_half)
    ref_norms_kernel<uint16_t><<<blocks, 256>>>(static_cast<const uint16_t*>(s.r), s.n, s.ldr, s.d, out.as<double>());
  else
    ref_norms_kernel<float><<<blocks, 256>>>(static_cast<const float*>(s.r), s.n, s.ldr, s.d, out.as<double>());
  check_launch("ref_norms_kernel");
  std::vector<double> h(2 * blocks);
  download(h.data(), out.p, 2 * blocks, "download norms");
  double m1 = 0, m2 = 0;
  for (int b = 0; b < blocks; ++b) { m1 = std::max(m1, h[2 * b]); m2 = std::max(m2, h[2 * b + 1]); }
  const double inflate = 1.0 + double(s.d + 64) * 0x1p-52;  // double sums of exact squares, any order
  RefBound rb;
  rb.rn = std::sqrt(m1) * inflate;
  rb.er = s.r_half ? std::sqrt(m2) * inflate : rb.rn * 0x1p-10;
  return rb;
}

// A query block's margins ε (host and device) and, for float16 references, its float16 copy.
struct QueryPrep {
  Buf qh, eps;
  std::vector<double> h_eps;
  bool ok = true;  // false: some query does not fit float16 (the block goes to the canonical kernels)
};

void prep_queries(const Search& s, const RefBound& rb, QueryPrep& p) {
  const bool half = s.r_half;
  if (half) p.qh.resize(s.nq * s.d * sizeof(__half));
  Buf out(s.nq * 4 * sizeof(double)), bad(sizeof(int));
  check(cudaMemset(bad.p, 0, sizeof(int)), "cudaMemset");
  query_prep_kernel<<<blocks_for(s.nq * 32, 256), 256>>>(s.q, s.ldq, s.nq, s.d, half ? p.qh.as<__half>() : nullptr,
                                                        out.as<double>(), bad.as<int>());
  check_launch("query_prep_kernel");
  int hbad = 0;
  download(&hbad, bad.p, 1, "download");
  p.ok = hbad == 0;
  std::vector<double> h(4 * s.nq);
  download(h.data(), out.p, 4 * s.nq, "download");
  // Tensor-core accumulation: γ with unit 2⁻²² over d + 64 steps = γ_{4(d+64)} in float32 units.
  const bound::Model model = bound::make_model(4 * (s.d + 64), true, s.d);
  const double inflate = 1.0 + double(s.d + 64) * 0x1p-52;
  p.h_eps.resize(s.nq);
  for (int64_t q = 0; q < s.nq; ++q) {
    const double qn = std::sqrt(h[4 * q]) * inflate;
    const double qhn = half ? std::sqrt(h[4 * q + 1]) * inflate : qn * (1.0 + 0x1p-10);
    const double eq = half ? (std::sqrt(h[4 * q + 2]) + std::sqrt(h[4 * q + 3])) * inflate : qn * 0x1p-10;
    p.h_eps[q] = bound::epsilon(bound::coefficients(model, qn, qhn, eq), rb.rn, rb.er);
  }
  p.eps.resize(s.nq * sizeof(double));
  upload(p.eps.p, p.h_eps.data(), s.nq, "upload eps");
}

// S (row-major nq × nc, ld nc) = ŝ of the block's queries against references n0..n0+nc.
void chunk_scores(const Search& s, const QueryPrep& p, int64_t n0, int64_t nc, float* S) {
  const int dev = current_device();
  if (s.r_half)
    blas::gemm(dev, true, false, (int)nc, (int)s.nq, (int)s.d, static_cast<const uint16_t*>(s.r) + n0 * s.ldr, blas::kF16,
               (int)s.ldr, p.qh.p, blas::kF16, (int)s.d, S, (int)nc, blas::kCompute32F);
  else
    blas::gemm(dev, true, false, (int)nc, (int)s.nq, (int)s.d, static_cast<const float*>(s.r) + n0 * s.ldr, blas::kF32,
               (int)s.ldr, s.q, blas::kF32, (int)s.ldq, S, (int)nc, blas::kCompute32FFastTF32);
}

int64_t chunk_size(int64_t nq, int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(n, kScoreBudget / nq)); }

int next_pow2(int64_t x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

struct TopkArgs {
  int64_t k, m;
  const int64_t* dev_ex;   // sorted exclusion lists of the whole problem (nq × m), or null
  const int64_t* dev_exn;
  Mode mode;
};

// One query block (queries q0..q0+nq of `s`): outputs written for the certified queries; returns the
// others (block-local ids).
std::vector<int64_t> topk_block(const Search& sb, const TopkArgs& a, int64_t ex_q0, const RefBound& rb, int C,
                                float* out_s, int64_t* out_i) {
  std::vector<int64_t> fail;
  QueryPrep p;
  prep_queries(sb, rb, p);
  if (!p.ok) {
    for (int64_t q = 0; q < sb.nq; ++q) fail.push_back(q);
    return fail;
  }
  const int64_t nc = chunk_size(sb.nq, sb.n);
  Buf S(sb.nq * nc * sizeof(float)), cs(sb.nq * C * sizeof(float)), ci(sb.nq * C * sizeof(int64_t));
  Buf cc(sb.nq * sizeof(int)), failed(sb.nq * sizeof(int));
  check(cudaMemset(cc.p, 0, sb.nq * sizeof(int)), "cudaMemset");
  check(cudaMemset(failed.p, 0, sb.nq * sizeof(int)), "cudaMemset");
  const unsigned grid = (unsigned)std::min<int64_t>(sb.nq, 1 << 20);
  for (int64_t n0 = 0; n0 < sb.n; n0 += nc) {
    const int64_t c = std::min(nc, sb.n - n0);
    chunk_scores(sb, p, n0, c, S.as<float>());
    select_kernel<<<grid, kSelThreads, kSelP * (sizeof(float) + sizeof(int64_t))>>>(
        S.as<float>(), c, c, n0, sb.nq, cs.as<float>(), ci.as<int64_t>(), cc.as<int>(), C, a.dev_ex, a.dev_exn, a.m,
        ex_q0);
    check_launch("select_kernel");
  }
  const int P2 = next_pow2(std::min(a.k, sb.n) + 32);
  const int fo = a.mode == Mode::kFilterOnly;
  const size_t shm = P2 * (sizeof(float) + sizeof(int64_t));
  if (sb.r_half)
    refine_kernel<uint16_t><<<grid, 32, shm>>>(sb.q, sb.ldq, static_cast<const uint16_t*>(sb.r), sb.ldr, sb.d, 0, sb.nq,
                                               cs.as<float>(), ci.as<int64_t>(), cc.as<int>(), C, a.k, sb.n, P2,
                                               p.eps.as<double>(), fo, out_s, out_i, failed.as<int>());
  else
    refine_kernel<float><<<grid, 32, shm>>>(sb.q, sb.ldq, static_cast<const float*>(sb.r), sb.ldr, sb.d, 0, sb.nq,
                                            cs.as<float>(), ci.as<int64_t>(), cc.as<int>(), C, a.k, sb.n, P2,
                                            p.eps.as<double>(), fo, out_s, out_i, failed.as<int>());
  check_launch("refine_kernel");
  std::vector<int> hf(sb.nq);
  download(hf.data(), failed.p, sb.nq, "download");
  for (int64_t q = 0; q < sb.nq; ++q)
    if (hf[q]) fail.push_back(q);
  return fail;
}

// All queries of `s`; returns the failed ones (ids in s).
std::vector<int64_t> topk_filtered(const Search& s, const int64_t* host_exclude, const TopkArgs& a0, int C, float* out_s,
                                   int64_t* out_i) {
  TopkArgs a = a0;
  Buf ex(a.m > 0 ? s.nq * a.m * 8 : 0), exn(a.m > 0 ? s.nq * 8 : 0);
  if (a.m > 0) detail::upload_id_lists(host_exclude, s.nq, a.m, nullptr, ex, exn);
  a.dev_ex = ex.as<int64_t>();
  a.dev_exn = exn.as<int64_t>();
  const RefBound rb = ref_bound(s);
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(65536, (int64_t(512) << 20) / (C * 12)));
  std::vector<int64_t> failed;
  for (int64_t q0 = 0; q0 < s.nq; q0 += block) {
    const int64_t nb = std::min(block, s.nq - q0);
    const Search sb = with_queries(s, s.q + q0 * s.ldq, nb, s.ldq);
    for (int64_t f : topk_block(sb, a, q0, rb, C, out_s + q0 * a.k, out_i + q0 * a.k)) failed.push_back(q0 + f);
  }
  return failed;
}

// Run `solve(sub, sub_exclude, out_s, out_i) → failed (sub ids)` on the queries `ids` of s, write their
// rows back, return the ids (in s) that failed again.
template <class Solve>
std::vector<int64_t> on_subset(const Search& s, const std::vector<int64_t>& ids, const int64_t* host_exclude, int64_t m,
                               int64_t k, float* out_s, int64_t* out_i, Solve&& solve) {
  const int64_t f = (int64_t)ids.size();
  Buf dids(f * 8), qs(f * s.d * sizeof(float)), os(f * k * sizeof(float)), oi(f * k * sizeof(int64_t));
  upload(dids.p, ids.data(), f, "upload ids");
  gather_rows_kernel<<<blocks_for(f * s.d, 256), 256>>>(s.q, s.ldq, dids.as<int64_t>(), f, s.d, qs.as<float>());
  check_launch("gather_rows_kernel");
  std::vector<int64_t> ex(m > 0 ? f * m : 0);
  for (int64_t t = 0; t < f && m > 0; ++t) std::copy(host_exclude + ids[t] * m, host_exclude + (ids[t] + 1) * m, ex.begin() + t * m);
  const Search sub = with_queries(s, qs.as<float>(), f, s.d);
  std::vector<int64_t> again = solve(sub, m > 0 ? ex.data() : nullptr, os.as<float>(), oi.as<int64_t>());
  std::vector<char> bad(f, 0);
  for (int64_t t : again) bad[t] = 1;
  std::vector<int64_t> ok_src, ok_dst, out;
  for (int64_t t = 0; t < f; ++t) {
    if (bad[t]) out.push_back(ids[t]);
    else { ok_src.push_back(t); ok_dst.push_back(ids[t]); }
  }
  // Rows of the successful ones: compact them, then scatter.
  if (!ok_src.empty()) {
    const int64_t g = (int64_t)ok_src.size();
    Buf src_ids(g * 8), dst_ids(g * 8), cs(g * k * sizeof(float)), ci(g * k * sizeof(int64_t));
    upload(src_ids.p, ok_src.data(), g, "upload");
    upload(dst_ids.p, ok_dst.data(), g, "upload");
    gather_rows_kernel<<<blocks_for(g * k, 256), 256>>>(os.as<float>(), k, src_ids.as<int64_t>(), g, k, cs.as<float>());
    std::vector<int64_t> hi(f * k), ho(g * k);
    download(hi.data(), oi.p, f * k, "download");
    for (int64_t t = 0; t < g; ++t) std::copy(hi.begin() + ok_src[t] * k, hi.begin() + (ok_src[t] + 1) * k, ho.begin() + t * k);
    upload(ci.p, ho.data(), g * k, "upload");
    scatter_rows_kernel<float><<<blocks_for(g * k, 256), 256>>>(cs.as<float>(), k, dst_ids.as<int64_t>(), g, out_s);
    scatter_rows_kernel<int64_t><<<blocks_for(g * k, 256), 256>>>(ci.as<int64_t>(), k, dst_ids.as<int64_t>(), g, out_i);
    check_launch("scatter_rows_kernel");
  }
  return out;
}

// positive_ranks over one query block: counts (device, block-local) of the references above each
// positive; queries whose band overflowed are flagged (their counts are redone canonically).
void ranks_block(const Search& sb, const RefBound& rb, const float* dev_pos, const std::vector<float>& h_pos, Mode mode,
                 unsigned long long* counts, int* overflow) {
  QueryPrep p;
  prep_queries(sb, rb, p);
  if (!p.ok) {
    std::vector<int> all(sb.nq, 1);
    upload(overflow, all.data(), sb.nq, "upload");
    return;
  }
  const bool fo = mode == Mode::kFilterOnly;
  std::vector<float> hi(sb.nq), lo(sb.nq);
  for (int64_t q = 0; q < sb.nq; ++q) {
    const float mg = fo ? 0.0f : bound::margin(p.h_eps[q], h_pos[q]);
    hi[q] = h_pos[q] + mg;
    lo[q] = h_pos[q] - mg;
  }
  Buf dhi(sb.nq * 4), dlo(sb.nq * 4);
  upload(dhi.p, hi.data(), sb.nq, "upload");
  upload(dlo.p, lo.data(), sb.nq, "upload");
  const int64_t nc = chunk_size(sb.nq, sb.n), per = 4096;
  Buf S(sb.nq * nc * sizeof(float)), bq(kBandCap * 4), br(kBandCap * 4), nband(8);
  for (int64_t n0 = 0; n0 < sb.n; n0 += nc) {
    const int64_t c = std::min(nc, sb.n - n0);
    chunk_scores(sb, p, n0, c, S.as<float>());
    check(cudaMemset(nband.p, 0, 8), "cudaMemset");
    const int64_t blocks = sb.nq * ((c + per - 1) / per);
    count_band_kernel<<<(unsigned)blocks, 256>>>(S.as<float>(), c, c, sb.nq, per, dhi.as<float>(), dlo.as<float>(), counts,
                                                bq.as<int>(), br.as<int>(), nband.as<unsigned long long>(), kBandCap,
                                                overflow, fo);
    check_launch("count_band_kernel");
    unsigned long long nb = 0;
    download(&nb, nband.p, 1, "download");
    g_stats.band += (int64_t)nb;
    const int64_t todo = std::min<int64_t>((int64_t)nb, kBandCap);
    if (todo == 0) continue;
    if (sb.r_half)
      band_kernel<uint16_t><<<blocks_for(todo, 128), 128>>>(sb.q, sb.ldq, static_cast<const uint16_t*>(sb.r), sb.ldr, sb.d,
                                                            n0, bq.as<int>(), br.as<int>(), todo, dev_pos, counts);
    else
      band_kernel<float><<<blocks_for(todo, 128), 128>>>(sb.q, sb.ldq, static_cast<const float*>(sb.r), sb.ldr, sb.d, n0,
                                                         bq.as<int>(), br.as<int>(), todo, dev_pos, counts);
    check_launch("band_kernel");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// host API
// ---------------------------------------------------------------------------------------------------
Stats last_stats() { return g_stats; }

std::string cublas_load(const std::vector<std::string>& candidates, std::string* error) {
  return blas::load(candidates, error);
}

std::string cublas_path() { return blas::loaded_path(); }

void topk_similarity(const Search& s, int64_t k, const int64_t* host_exclude, int64_t m, float* out_s, int64_t* out_i,
                     Mode mode) {
  g_stats = Stats{};
  g_stats.queries = s.nq;
  if (s.nq == 0) return;
  const int64_t C = std::min(k + std::max<int64_t>(32, k), s.n + 1);
  if (mode == Mode::kCanonical || !blas::available() || s.n == 0 || C > kMaxCap || !fits_int(s)) {
    g_stats.path = "canonical";
    detail::topk_canonical(s, k, host_exclude, m, out_s, out_i);
    return;
  }
  g_stats.path = "filter";
  const TopkArgs args{k, m, nullptr, nullptr, mode};
  std::vector<int64_t> failed = topk_filtered(s, host_exclude, args, (int)C, out_s, out_i);
  g_stats.certified = s.nq - (int64_t)failed.size();
  g_stats.retried = (int64_t)failed.size();
  const int64_t wide = std::min(k + 4 * (C - k), s.n + 1);
  if (!failed.empty() && C <= s.n && wide <= kMaxCap) {
    failed = on_subset(s, failed, host_exclude, m, k, out_s, out_i,
                       [&](const Search& sub, const int64_t* ex, float* os, int64_t* oi) {
                         return topk_filtered(sub, ex, args, (int)wide, os, oi);
                       });
  }
  g_stats.fallback = (int64_t)failed.size();
  if (failed.empty()) return;
  on_subset(s, failed, host_exclude, m, k, out_s, out_i, [&](const Search& sub, const int64_t* ex, float* os, int64_t* oi) {
    detail::topk_canonical(sub, k, ex, m, os, oi);
    return std::vector<int64_t>{};
  });
}

void positive_ranks(const Search& s, const int64_t* host_positive, const int64_t* host_ignore, int64_t m, int64_t* out,
                    Mode mode) {
  g_stats = Stats{};
  g_stats.queries = s.nq;
  if (s.nq == 0) return;
  if (mode == Mode::kCanonical || !blas::available() || s.n == 0 || !fits_int(s)) {
    g_stats.path = "canonical";
    detail::ranks_canonical(s, host_positive, host_ignore, m, out);
    return;
  }
  g_stats.path = "filter";
  Buf pos(s.nq * sizeof(float)), counts(s.nq * sizeof(unsigned long long)), overflow(s.nq * sizeof(int));
  detail::positive_scores(s, host_positive, pos.as<float>());
  std::vector<float> h_pos(s.nq);
  download(h_pos.data(), pos.p, s.nq, "download");
  check(cudaMemset(counts.p, 0, s.nq * sizeof(unsigned long long)), "cudaMemset");
  check(cudaMemset(overflow.p, 0, s.nq * sizeof(int)), "cudaMemset");
  const RefBound rb = ref_bound(s);
  const int64_t block = 65536;
  for (int64_t q0 = 0; q0 < s.nq; q0 += block) {
    const int64_t nb = std::min(block, s.nq - q0);
    const std::vector<float> hp(h_pos.begin() + q0, h_pos.begin() + q0 + nb);
    ranks_block(with_queries(s, s.q + q0 * s.ldq, nb, s.ldq), rb, pos.as<float>() + q0, hp, mode,
                counts.as<unsigned long long>() + q0, overflow.as<int>() + q0);
  }
  std::vector<unsigned long long> hc(s.nq);
  std::vector<int> ho(s.nq);
  download(hc.data(), counts.p, s.nq, "download");
  download(ho.data(), overflow.p, s.nq, "download");
  std::vector<int64_t> redo;
  for (int64_t q = 0; q < s.nq; ++q)
    if (ho[q]) redo.push_back(q);
  g_stats.band_overflow = (int64_t)redo.size();
  if (!redo.empty()) {  // their bands did not fit: count them canonically
    const int64_t f = (int64_t)redo.size();
    Buf dids(f * 8), qs(f * s.d * sizeof(float)), sp(f * sizeof(float)), sc(f * sizeof(unsigned long long));
    upload(dids.p, redo.data(), f, "upload");
    gather_rows_kernel<<<blocks_for(f * s.d, 256), 256>>>(s.q, s.ldq, dids.as<int64_t>(), f, s.d, qs.as<float>());
    std::vector<float> hsp(f);
    for (int64_t t = 0; t < f; ++t) hsp[t] = h_pos[redo[t]];
    upload(sp.p, hsp.data(), f, "upload");
    check_launch("gather_rows_kernel");
    detail::count_above_canonical(with_queries(s, qs.as<float>(), f, s.d), sp.as<float>(), sc.as<unsigned long long>());
    std::vector<unsigned long long> hsc(f);
    download(hsc.data(), sc.p, f, "download");
    for (int64_t t = 0; t < f; ++t) hc[redo[t]] = hsc[t];
  }
  detail::finish_ranks(s, host_positive, host_ignore, m, pos.as<float>(), hc, out);
}

}  // namespace s4g::cuda
