// Exact top-k and positive ranks on the GPU: filter with cuBLAS on tensor cores, prove the margin, refine
// canonically — the CPU's design (csrc/cpu/search.cpp) with the GPU's fastest product.
//
// Filter. Reference chunks × query blocks through cublasGemmEx: float32 references with TF32 tensor-core
// math (CUBLAS_COMPUTE_32F_FAST_TF32), float16 references against the queries rounded to float16
// (CUBLAS_COMPUTE_32F). The chunk's score matrix (≤ 1 GB) is then reduced per query by select_kernel to
// the approximate top-C (C = k + max(32, k)): one block per query keeps its C best (ŝ, index) in shared
// memory, admits a score only above the current C-th (at the first chunk: above the smallest of C + m
// group maxima, a bound that already C admissible scores reach), and merges by a bitonic sort when its
// buffer fills — a block-wide version of the threshold-and-merge selection of faiss's BlockSelect.
//
// Margin (s4g/search_bound.h, terms (A)–(C)). TF32: inputs rounded inside cuBLAS, so the input term uses
// the a-priori |x − x̂| ≤ 2⁻¹⁰|x| (10 explicit bits, truncation or nearest); float16: the query rounding
// is measured (we round), the references are exact. Tensor-core accumulation: a conservative model —
// each product exact, every addition of a partial sum with relative error ≤ 2⁻²² (4× the float32 unit:
// truncation instead of rounding, and the block alignment of the partial sums measured on Volta–Hopper),
// over ≤ d + 64 steps (cuBLAS's split-K reductions included): γ_{4(d+64)} in float32 units, times S = 2.
// NVIDIA does not specify the tensor cores' accumulation, so this term is a model of measured behaviour
// (Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ CS 2021), not a
// proof; tests/test_core_cuda.py checks the result against the canonical kernels on adversarial inputs. Subnormal
// inputs may be flushed: for float16 the flushed parts are measured and added to the input term.
// Refinement: per query one warp rescores the candidates canonically in ŝ order into an exact top-k and
// stops when ŝ_next + ε < s_k; otherwise the certificate t + ε < s_k of the CPU. Failing queries: a retry
// with 4× the extra candidates, then the canonical kernels. positive_ranks: ŝ > s_pos + ε counts,
// ŝ < s_pos − ε does not, the band between is scored canonically, pair by pair.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "s4g/cublas_dyn.h"
#include "s4g/cuda_api.h"
#include "s4g/cuda_search.h"
#include "s4g/cuda_util.cuh"
#include "s4g/search_bound.h"
#include "s4g/search_math.h"

namespace s4g::cuda {
namespace {

Stats g_stats;

constexpr int kSelThreads = 256;
constexpr int kTile = 1024;                  // scores a selection block examines per step
constexpr int kSelP = 2048;                  // shared sort size: the kept list + one step's admissions
constexpr int kMaxCap = kSelP - kTile;       // C ≤ 1024, i.e. k ≤ 512
constexpr int64_t kScoreBudget = int64_t(256) << 20;  // floats of one chunk's score matrix (1 GB)
constexpr int64_t kBandCap = int64_t(16) << 20;       // band pairs per chunk (positive_ranks)
constexpr int64_t kNoId = INT64_MAX;

__device__ double add_up_d(double a, double b) {  // ≥ a + b (see bound::add_up)
  const double s = a + b;
  return s + fabs(s) * 0x1p-52 + 0x1p-1074;
}

// Block-wide bitonic sort of P (power of 2) entries, best first (ranks_before); padding (−∞, kNoId).
__device__ void bitonic(float* s, int64_t* id, int P) {
  __syncthreads();
  for (int k = 2; k <= P; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int t = threadIdx.x; t < P; t += blockDim.x) {
        const int u = t ^ j;
        if (u <= t) continue;
        const bool up = (t & k) == 0;
        const bool swap = up ? ranks_before(s[u], id[u], s[t], id[t]) : ranks_before(s[t], id[t], s[u], id[u]);
        if (swap) {
          const float ts = s[t]; s[t] = s[u]; s[u] = ts;
          const int64_t ti = id[t]; id[t] = id[u]; id[u] = ti;
        }
      }
      __syncthreads();
    }
  }
}

struct SelShared {
  int n_new;
  int filling;  // 1 while fewer than C are kept: admit ŝ ≥ thr (the group-maximum bound), else ŝ > thr
  float thr;
};

// Sort kept + admitted, keep the best C, update the threshold. All threads; L updated identically.
__device__ void sel_merge(float* ss, int64_t* si, SelShared& sh, int& L, int C) {
  __syncthreads();
  const int total = L + sh.n_new;
  for (int t = total + threadIdx.x; t < kSelP; t += blockDim.x) { ss[t] = -INFINITY; si[t] = kNoId; }
  bitonic(ss, si, kSelP);
  L = min(C, total);
  if (threadIdx.x == 0) {
    sh.n_new = 0;
    if (L == C) { sh.thr = ss[C - 1]; sh.filling = 0; }
  }
  __syncthreads();
}

// One block per query: fold this chunk's scores S[q, 0..nc) (references n0..) into the kept list.
__global__ void select_kernel(const float* __restrict__ S, int64_t ldS, int64_t nc, int64_t n0, int64_t nq,
                              float* cs, int64_t* ci, int* ccount, int C, const int64_t* __restrict__ ex,
                              const int64_t* __restrict__ exn, int64_t m, int64_t ex_q0) {
  extern __shared__ unsigned char smem[];
  float* ss = reinterpret_cast<float*>(smem);
  int64_t* si = reinterpret_cast<int64_t*>(smem + kSelP * sizeof(float));
  __shared__ SelShared sh;
  __shared__ float red[kSelThreads / 32];
  for (int64_t q = blockIdx.x; q < nq; q += gridDim.x) {
    const float* row = S + q * ldS;
    int L = ccount[q];
    for (int t = threadIdx.x; t < L; t += blockDim.x) { ss[t] = cs[q * C + t]; si[t] = ci[q * C + t]; }
    __syncthreads();  // the kept list is read below (ss[C − 1]) by other threads than those that loaded it
    if (L < C) {
      // Smallest of G = C + m group maxima: G distinct scores ≥ it, at most m of them excluded.
      const int64_t G = C + m;
      float v = INFINITY;
      if (nc >= G) {
        for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
          float mx = -INFINITY;
          for (int64_t i = nc * g / G; i < nc * (g + 1) / G; ++i) mx = fmaxf(mx, row[i]);
          v = fminf(v, mx);
        }
      } else {
        v = -INFINITY;
      }
      for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
      if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
      __syncthreads();
      if (threadIdx.x == 0) {
        float t = red[0];
        for (int w = 1; w < blockDim.x / 32; ++w) t = fminf(t, red[w]);
        sh.thr = t;
        sh.filling = 1;
        sh.n_new = 0;
      }
    } else if (threadIdx.x == 0) {
      sh.thr = ss[C - 1];
      sh.filling = 0;
      sh.n_new = 0;
    }
    __syncthreads();
    const int64_t* exq = m > 0 ? ex + (ex_q0 + q) * m : nullptr;
    const int64_t exc = m > 0 ? exn[ex_q0 + q] : 0;
    for (int64_t base = 0; base < nc; base += kTile) {
      if (L + sh.n_new + kTile > kSelP) sel_merge(ss, si, sh, L, C);
      const float thr = sh.thr;
      const bool filling = sh.filling;
      for (int e = threadIdx.x; e < kTile && base + e < nc; e += blockDim.x) {
        const float v = row[base + e];
        if (!(filling ? v >= thr : v > thr)) continue;  // NaN never admitted (the margin is +∞ then)
        if (exc > 0 && sorted_contains(exq, exc, n0 + base + e)) continue;
        const int p = atomicAdd(&sh.n_new, 1);
        ss[L + p] = v;
        si[L + p] = n0 + base + e;
      }
      __syncthreads();
    }
    sel_merge(ss, si, sh, L, C);
    for (int t = threadIdx.x; t < L; t += blockDim.x) { cs[q * C + t] = ss[t]; ci[q * C + t] = si[t]; }
    if (threadIdx.x == 0) ccount[q] = L;
    __syncthreads();
  }
}

// One warp per query: rescore the kept candidates canonically in ŝ order into the exact top-k (see the
// file note); writes the output row or flags the query as failed.
template <class R>
__global__ void refine_kernel(const float* __restrict__ Q, int64_t ldq, const R* __restrict__ Rm, int64_t ldr, int64_t d,
                              int64_t q0, int64_t nq, const float* cs, const int64_t* ci, const int* ccount, int C,
                              int64_t k, int64_t n, int P2, const double* eps, int filter_only, float* out_s,
                              int64_t* out_i, int* failed) {
  extern __shared__ unsigned char smem[];
  float* es = reinterpret_cast<float*>(smem);
  int64_t* ei = reinterpret_cast<int64_t*>(smem + P2 * sizeof(float));
  const int lane = threadIdx.x;
  const int64_t kk = k < n ? k : n;
  for (int64_t q = blockIdx.x; q < nq; q += gridDim.x) {
    const int L = ccount[q];
    const float* cq = cs + q * C;
    const int64_t* iq = ci + q * C;
    float* os = out_s + (q0 + q) * k;
    int64_t* oi = out_i + (q0 + q) * k;
    if (filter_only) {
      for (int64_t t = lane; t < k; t += 32) { os[t] = t < L ? cq[t] : -INFINITY; oi[t] = t < L ? iq[t] : -1; }
      continue;
    }
    for (int t = lane; t < P2; t += 32) { es[t] = -INFINITY; ei[t] = kNoId; }
    __syncthreads();
    int64_t nE = 0;
    bool cert = false;
    for (int base = 0; base < L; base += 32) {
      if (nE == kk && kk > 0 && add_up_d(cq[base], eps[q]) < double(es[kk - 1])) { cert = true; break; }
      const int t = base + lane;
      float s = -INFINITY;
      int64_t id = kNoId;
      if (t < L) {
        id = iq[t];
        s = dot_canonical(Q + (q0 + q) * ldq, Rm + id * ldr, d);
      }
      es[kk + lane] = s;
      ei[kk + lane] = id;
      bitonic(es, ei, P2);
      for (int u = kk + lane; u < P2; u += 32) { es[u] = -INFINITY; ei[u] = kNoId; }
      nE = min(kk, nE + (int64_t)min(32, L - base));
      __syncthreads();
    }
    if (!cert) cert = L < C || (nE == kk && kk > 0 && add_up_d(cq[C - 1], eps[q]) < double(es[kk - 1]));
    if (cert) {
      for (int64_t t = lane; t < k; t += 32) { os[t] = t < nE ? es[t] : -INFINITY; oi[t] = t < nE ? ei[t] : -1; }
    } else if (lane == 0) {
      failed[q] = 1;
    }
    __syncthreads();
  }
}

// ---- norms for the margin -----------------------------------------------------------------------------
// Per query (one warp): out[4q..] = Σx², Σx̂², Σ(x − x̂)², Σ x̂² over float16-subnormal x̂ (double sums of
// exact squares). With qh: x̂ = float16(x) written to qh (row stride d); overflow → *bad = 1.
__global__ void query_prep_kernel(const float* __restrict__ Q, int64_t ldq, int64_t nq, int64_t d, __half* qh,
                                  double* out, int* bad) {
  const int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (w >= nq) return;
  double a = 0, b = 0, e = 0, sub = 0;
  for (int64_t k = lane; k < d; k += 32) {
    const float x = Q[w * ldq + k];
    a += double(x) * x;
    if (qh) {
      const __half h = __float2half_rn(x);
      const float xh = __half2float(h);
      if (isinf(xh)) *bad = 1;
      qh[w * d + k] = h;
      b += double(xh) * xh;
      e += (double(x) - xh) * (double(x) - xh);
      if (fabsf(xh) < 6.103515625e-05f) sub += double(xh) * xh;  // below the float16 normal range
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
    e += __shfl_xor_sync(0xffffffffu, e, o);
    sub += __shfl_xor_sync(0xffffffffu, sub, o);
  }
  if (lane == 0) { out[4 * w] = a; out[4 * w + 1] = b; out[4 * w + 2] = e; out[4 * w + 3] = sub; }
}

// Per block: the largest Σr² and Σ(float16-subnormal parts)² of its reference rows (one warp per row).
template <class R>
__global__ void ref_norms_kernel(const R* __restrict__ Rm, int64_t n, int64_t ldr, int64_t d, double* out) {
  __shared__ double m1[8], m2[8];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  double best1 = 0, best2 = 0;
  for (int64_t row = blockIdx.x * 8 + wib; row < n; row += (int64_t)gridDim.x * 8) {
    double a = 0, sub = 0;
    for (int64_t k = lane; k < d; k += 32) {
      const float x = to_float(Rm[row * ldr + k]);
      a += double(x) * x;
      if (sizeof(R) == 2 && fabsf(x) < 6.103515625e-05f) sub += double(x) * x;
    }
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_xor_sync(0xffffffffu, a, o);
      sub += __shfl_xor_sync(0xffffffffu, sub, o);
    }
    best1 = fmax(best1, a);
    best2 = fmax(best2, sub);
  }
  if (lane == 0) { m1[wib] = best1; m2[wib] = best2; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < 8; ++w) { best1 = fmax(best1, m1[w]); best2 = fmax(best2, m2[w]); }
    out[2 * blockIdx.x] = fmax(best1, m1[0]);
    out[2 * blockIdx.x + 1] = fmax(best2, m2[0]);
  }
}

// ---- positive_ranks: count above the band, collect the band ---------------------------------------
__global__ void count_band_kernel(const float* __restrict__ S, int64_t ldS, int64_t nc, int64_t nq, int64_t per,
                                  const float* __restrict__ hi, const float* __restrict__ lo, unsigned long long* counts,
                                  int* band_q, int* band_r, unsigned long long* nband, int64_t cap, int* overflow,
                                  int filter_only) {
  const int64_t segs = (nc + per - 1) / per;
  const int64_t q = blockIdx.x / segs, part = blockIdx.x % segs;
  if (q >= nq) return;
  const float h = hi[q], l = lo[q];
  const float* row = S + q * ldS;
  unsigned long long c = 0;
  const int64_t e = min(nc, (part + 1) * per);
  for (int64_t j = part * per + threadIdx.x; j < e; j += blockDim.x) {
    const float v = row[j];
    c += v > h;
    if (filter_only || v > h || v < l) continue;  // NaN (an overflowed ŝ) falls in the band
    const unsigned long long slot = atomicAdd(nband, 1ull);
    if (slot < (unsigned long long)cap) { band_q[slot] = (int)q; band_r[slot] = (int)j; }
    else overflow[q] = 1;
  }
  for (int o = 16; o > 0; o >>= 1) c += __shfl_down_sync(0xffffffffu, c, o);
  if ((threadIdx.x & 31) == 0 && c) atomicAdd(counts + q, c);
}

// The band pairs of a chunk (references n0..), scored canonically against the positive's score.
template <class R>
__global__ void band_kernel(const float* __restrict__ Q, int64_t ldq, const R* __restrict__ Rm, int64_t ldr, int64_t d,
                            int64_t n0, const int* band_q, const int* band_r, int64_t nb, const float* pos,
                            unsigned long long* counts) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= nb) return;
  const int64_t q = band_q[t];
  if (dot_canonical(Q + q * ldq, Rm + (n0 + band_r[t]) * ldr, d) > pos[q]) atomicAdd(counts + q, 1ull);
}

// ---- subsets (retries and fallbacks) --------------------------------------------------------------------
__global__ void gather_rows_kernel(const float* src, int64_t ld, const int64_t* ids, int64_t count, int64_t d,
                                   float* dst) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < count * d; t += (int64_t)gridDim.x * blockDim.x)
    dst[t] = src[ids[t / d] * ld + t % d];
}

template <class T>
__global__ void scatter_rows_kernel(const T* src, int64_t cols, const int64_t* ids, int64_t count, T* dst) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < count * cols; t += (int64_t)gridDim.x * blockDim.x)
    dst[ids[t / cols] * cols + t % cols] = src[t];
}

}  // namespace
}  // namespace s4g::cuda

// The host side (same translation unit, so that the kernels above stay file-local).
#include "search_filter_host.inl"
