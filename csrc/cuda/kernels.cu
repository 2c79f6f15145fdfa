// CUDA kernels of s4g_engine._core_cuda. The per-element maths is shared with the CPU kernels through
// s4g/polar_math.h and s4g/search_math.h (__host__ __device__): same sampling coordinates and taps, same
// canonical dot product (so GPU scores are bit-identical to the CPU's), same ranking order and heap.
//
// Canonical search (the reference, and the fallback of the filtered search in search_filter.cu):
// references are processed in chunks; a tiled kernel writes the chunk's Q×Nc canonical scores (bounded
// buffer), then one thread per (query, segment) keeps a bounded heap over its segment; the segments'
// heaps are merged per query at the end. positive_ranks counts scores strictly above the positive's.
// Polar: a cached per-device sampling map (pixel index + fractions), one thread per output pixel.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <stdexcept>
#include <string>
#include <vector>

#include "s4g/cuda_api.h"
#include "s4g/cuda_search.h"
#include "s4g/cuda_util.cuh"
#include "s4g/polar_math.h"
#include "s4g/search_math.h"

namespace s4g::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------
// polar
// ---------------------------------------------------------------------------------------------------
// The sampling map of (A, H, W), computed once per device in double precision (like the CPU's map) and
// cached: per output pixel the top-left tap's pixel index (−1 when a tap falls outside the image: those
// pixels take the per-pixel path) and the sample's fractional column and row.
__global__ void polar_map_kernel(int64_t A, int64_t H, int64_t W, int* base, float2* frac) {
  const int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (p >= H * W) return;
  double row, col;
  polar_source<double>(p / W, p % W, A, H, W, &row, &col);
  const double r0 = floor(row), c0 = floor(col);
  const bool inside = r0 >= 0 && c0 >= 0 && r0 + 1 < A && c0 + 1 < A;
  base[p] = inside ? int(int64_t(r0) * A + int64_t(c0)) : -1;
  frac[p] = make_float2(float(col - c0), float(row - r0));
}

// One thread per output pixel, looping over the images of its grid row: the map entry is read once and
// the weights stay in registers; a warp writes 32 consecutive pixels (coalesced), and the images of one
// grid row are sampled by neighbouring blocks at the same time (their lines shared through L2).
template <class T, int kC>
__global__ void polar_kernel(const T* __restrict__ in, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                             const int* __restrict__ base, const float2* __restrict__ frac,
                             const float* __restrict__ scale, const float* __restrict__ bias, float* __restrict__ out) {
  const int64_t P = H * W, p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (p >= P) return;
  const int64_t cn = kC > 0 ? kC : C;
  int64_t idx[4];
  float w[4];
  const int b0 = base[p];
  if (b0 >= 0) {
    const float2 f = frac[p];
    idx[0] = b0; idx[1] = b0 + 1; idx[2] = b0 + A; idx[3] = b0 + A + 1;
    w[0] = (1.0f - f.x) * (1.0f - f.y); w[1] = f.x * (1.0f - f.y); w[2] = (1.0f - f.x) * f.y; w[3] = f.x * f.y;
  } else {  // a tap outside the image: the shared maths (zero weight outside)
    double row, col;
    polar_source<double>(p / W, p % W, A, H, W, &row, &col);
    const Taps4 t = bilinear_taps<double>(row, col, A, A);
    for (int q = 0; q < 4; ++q) { idx[q] = t.idx[q]; w[q] = t.w[q]; }
  }
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const T* img = in + b * A * A * cn;
    float* o = out + (b * P + p) * cn;
    for (int64_t c = 0; c < cn; ++c) {
      const float v = w[0] * float(img[idx[0] * cn + c]) + w[1] * float(img[idx[1] * cn + c]) +
                      w[2] * float(img[idx[2] * cn + c]) + w[3] * float(img[idx[3] * cn + c]);
      o[c] = v * scale[c] + bias[c];
    }
  }
}

struct PolarMapDev {
  Buf base, frac;
};

std::mutex g_map_mutex;
std::map<std::tuple<int, int64_t, int64_t, int64_t>, std::shared_ptr<PolarMapDev>> g_maps;

std::shared_ptr<PolarMapDev> polar_map(int64_t A, int64_t H, int64_t W) {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  const auto key = std::make_tuple(dev, A, H, W);
  std::lock_guard<std::mutex> lock(g_map_mutex);
  auto it = g_maps.find(key);
  if (it != g_maps.end()) return it->second;
  auto m = std::make_shared<PolarMapDev>();
  m->base.resize(H * W * sizeof(int));
  m->frac.resize(H * W * sizeof(float2));
  polar_map_kernel<<<blocks_for(H * W, 256), 256>>>(A, H, W, m->base.as<int>(), m->frac.as<float2>());
  check_launch("polar_map_kernel");
  if (g_maps.size() >= 16) g_maps.clear();  // callers hold their own reference
  g_maps[key] = m;
  return m;
}

template <class T>
void launch_polar(const T* in, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W, const float* scale,
                  const float* bias, float* out) {
  const auto map = polar_map(A, H, W);
  const dim3 grid(blocks_for(H * W, 256), (unsigned)std::min<int64_t>(B, 4096));
  const int* bs = map->base.as<int>();
  const float2* fr = map->frac.as<float2>();
  switch (C) {
    case 1: polar_kernel<T, 1><<<grid, 256>>>(in, B, A, C, H, W, bs, fr, scale, bias, out); break;
    case 3: polar_kernel<T, 3><<<grid, 256>>>(in, B, A, C, H, W, bs, fr, scale, bias, out); break;
    case 4: polar_kernel<T, 4><<<grid, 256>>>(in, B, A, C, H, W, bs, fr, scale, bias, out); break;
    default: polar_kernel<T, 0><<<grid, 256>>>(in, B, A, C, H, W, bs, fr, scale, bias, out); break;
  }
  check_launch("polar_kernel");
}

__global__ void inverse_kernel(const float* __restrict__ polar, int64_t H, int64_t W, int64_t C, int64_t A, float fill,
                               float* __restrict__ out) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < A * A; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = t / A, col = t % A;
    float* o = out + t * C;
    double i, j;  // double like the CPU kernel (one evaluation per aerial pixel)
    if (!polar_inverse<double>(row, col, A, H, W, &i, &j)) {
      for (int64_t c = 0; c < C; ++c) o[c] = fill;
      continue;
    }
    const Taps4 tp = polar_taps<double>(i, j, H, W);
    for (int64_t c = 0; c < C; ++c)
      o[c] = tp.w[0] * polar[tp.idx[0] * C + c] + tp.w[1] * polar[tp.idx[1] * C + c] +
             tp.w[2] * polar[tp.idx[2] * C + c] + tp.w[3] * polar[tp.idx[3] * C + c];
  }
}

template <class T>
__global__ void nonfinite_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int64_t ld,
                                 unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < rows * cols; t += (int64_t)gridDim.x * blockDim.x) {
    const float v = to_float(x[(t / cols) * ld + t % cols]);
    local += !isfinite(v);
  }
  if (local) atomicAdd(count, local);
}

// ---------------------------------------------------------------------------------------------------
// search
// ---------------------------------------------------------------------------------------------------
constexpr int kTile = 64;   // queries × references per block
constexpr int kKTile = 16;  // depth per shared-memory step (divides kDotChunk)
static_assert(kDotChunk % kKTile == 0, "depth tile must divide the canonical chunk");

// S[q*ldS + (n - n0)] = canonical score(q, n) for q < nq, n0 <= n < n0 + nc.
template <class R>
__global__ void scores_kernel(const float* __restrict__ Q, int64_t nq, int64_t ldq, const R* __restrict__ Rm, int64_t n0,
                              int64_t nc, int64_t ldr, int64_t d, float* __restrict__ S, int64_t ldS) {
  __shared__ float As[kKTile][kTile + 1];
  __shared__ float Bs[kKTile][kTile + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 256 threads, 4×4 outputs each
  const int64_t qb = (int64_t)blockIdx.y * kTile, nb = (int64_t)blockIdx.x * kTile;
  float acc[4][4], total[4][4];
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b) acc[a][b] = total[a][b] = 0.0f;
  bool first = true;
  for (int64_t k0 = 0; k0 < d; k0 += kKTile) {
    for (int e = threadIdx.x; e < kKTile * kTile; e += blockDim.x) {
      const int kk = e % kKTile, rr = e / kKTile;
      const int64_t k = k0 + kk, q = qb + rr, n = nb + rr;
      As[kk][rr] = (k < d && q < nq) ? Q[q * ldq + k] : 0.0f;
      Bs[kk][rr] = (k < d && n < nc) ? to_float(Rm[(n0 + n) * ldr + k]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kKTile; ++kk) {
      float av[4], bv[4];
      for (int a = 0; a < 4; ++a) av[a] = As[kk][ty * 4 + a];
      for (int b = 0; b < 4; ++b) bv[b] = Bs[kk][tx * 4 + b];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(av[a], bv[b], acc[a][b]);
    }
    __syncthreads();
    if ((k0 + kKTile) % kDotChunk == 0 || k0 + kKTile >= d) {  // end of a canonical chunk
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          total[a][b] = first ? acc[a][b] : total[a][b] + acc[a][b];
          acc[a][b] = 0.0f;
        }
      first = false;
    }
  }
  for (int a = 0; a < 4; ++a) {
    const int64_t q = qb + ty * 4 + a;
    if (q >= nq) continue;
    for (int b = 0; b < 4; ++b) {
      const int64_t n = nb + tx * 4 + b;
      if (n < nc) S[q * ldS + n] = total[a][b];
    }
  }
}

// Thread (q, s) offers the chunk's scores of segment s to its own heap.
__global__ void heap_update_kernel(const float* __restrict__ S, int64_t ldS, int64_t nq, int64_t n0, int64_t nc,
                                   int64_t segs, float* hs, int64_t* hi, int64_t* hsize, int64_t cap,
                                   const int64_t* __restrict__ ex, const int64_t* __restrict__ exn, int64_t m) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= nq * segs) return;
  const int64_t q = t / segs, s = t % segs;
  const int64_t b = nc * s / segs, e = nc * (s + 1) / segs;
  TopkHeap h{hs + t * cap, hi + t * cap, hsize[t], cap};
  float thr = h.threshold();
  const float* row = S + q * ldS;
  for (int64_t j = b; j < e; ++j) {
    const float v = row[j];
    if (!(v > thr)) continue;  // indices only grow within a segment: a tie never displaces an earlier one
    const int64_t n = n0 + j;
    if (m > 0 && sorted_contains(ex + q * m, exn[q], n)) continue;
    h.push(v, n);
    thr = h.threshold();
  }
  hsize[t] = h.size;
}

__global__ void heap_merge_kernel(int64_t nq, int64_t segs, const float* hs, const int64_t* hi, const int64_t* hsize,
                                  int64_t cap, int64_t k, float* out_s, int64_t* out_i) {
  const int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (q >= nq) return;
  const int64_t kk = k < cap * segs ? k : cap * segs;
  TopkHeap h{out_s + q * k, out_i + q * k, 0, kk};
  for (int64_t s = 0; s < segs; ++s) {
    const int64_t t = q * segs + s;
    for (int64_t e = 0; e < hsize[t]; ++e) h.push(hs[t * cap + e], hi[t * cap + e]);
  }
  h.sort_and_pad();
  for (int64_t p = kk; p < k; ++p) { out_s[q * k + p] = -INFINITY; out_i[q * k + p] = -1; }
}

template <class R>
__global__ void pair_scores_kernel(const float* __restrict__ Q, int64_t ldq, const R* __restrict__ Rm, int64_t ldr,
                                   int64_t d, const int64_t* __restrict__ qi, const int64_t* __restrict__ ri,
                                   int64_t pairs, float* out) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t < pairs) out[t] = dot_canonical(Q + qi[t] * ldq, Rm + ri[t] * ldr, d);
}

__global__ void count_above_kernel(const float* __restrict__ S, int64_t ldS, int64_t nq, int64_t nc, int64_t per_block,
                                   const float* __restrict__ pos, unsigned long long* counts) {
  const int64_t blocks_per_q = (nc + per_block - 1) / per_block;
  const int64_t q = blockIdx.x / blocks_per_q, part = blockIdx.x % blocks_per_q;
  if (q >= nq) return;
  const int64_t b = part * per_block, e = (nc < b + per_block) ? nc : b + per_block;
  const float p = pos[q];
  unsigned long long c = 0;
  for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) c += S[q * ldS + j] > p;
  for (int off = 16; off > 0; off /= 2) c += __shfl_down_sync(0xffffffffu, c, off);
  if ((threadIdx.x & 31) == 0 && c) atomicAdd(counts + q, c);
}

int64_t chunk_refs(int64_t nq, int64_t n) {
  const int64_t budget = int64_t(64) << 20;  // floats in the score buffer (256 MB)
  int64_t nc = std::max<int64_t>(kTile, budget / std::max<int64_t>(nq, 1));
  nc = std::min(nc, n);
  return std::max<int64_t>(1, nc);
}

template <class R>
void launch_scores(const Search& s, int64_t n0, int64_t nc, float* S, int64_t ldS) {
  const dim3 grid((unsigned)((nc + kTile - 1) / kTile), (unsigned)((s.nq + kTile - 1) / kTile));
  scores_kernel<R><<<grid, 256>>>(s.q, s.nq, s.ldq, static_cast<const R*>(s.r), n0, nc, s.ldr, s.d, S, ldS);
  check_launch("scores_kernel");
}

void scores(const Search& s, int64_t n0, int64_t nc, float* S, int64_t ldS) {
  if (s.r_half) launch_scores<uint16_t>(s, n0, nc, S, ldS);
  else launch_scores<float>(s, n0, nc, S, ldS);
}

}  // namespace

namespace detail {
// Sorted, de-duplicated valid ids per row (−1 and `drop[q]` removed), uploaded with their counts.
void upload_id_lists(const int64_t* host, int64_t nq, int64_t m, const int64_t* drop, Buf& ids, Buf& counts,
                     std::vector<int64_t>* host_ids, std::vector<int64_t>* host_cnt) {
  std::vector<int64_t> v(nq * m, 0), c(nq, 0);
  for (int64_t q = 0; q < nq; ++q) {
    int64_t k = 0;
    for (int64_t t = 0; t < m; ++t) {
      const int64_t id = host[q * m + t];
      if (id >= 0 && !(drop && id == drop[q])) v[q * m + k++] = id;
    }
    std::sort(v.begin() + q * m, v.begin() + q * m + k);
    c[q] = std::unique(v.begin() + q * m, v.begin() + q * m + k) - (v.begin() + q * m);
  }
  check(cudaMemcpy(ids.p, v.data(), v.size() * 8, cudaMemcpyHostToDevice), "upload ids");
  check(cudaMemcpy(counts.p, c.data(), c.size() * 8, cudaMemcpyHostToDevice), "upload counts");
  if (host_ids) *host_ids = std::move(v);
  if (host_cnt) *host_cnt = std::move(c);
}
}  // namespace detail

namespace {
using detail::upload_id_lists;
}  // namespace

// ---------------------------------------------------------------------------------------------------
// host API
// ---------------------------------------------------------------------------------------------------
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::vector<DeviceInfo> devices() {
  std::vector<DeviceInfo> out;
  for (int i = 0; i < device_count(); ++i) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    out.push_back(DeviceInfo{p.name, p.major, p.minor, (int64_t)p.totalGlobalMem});
  }
  return out;
}

int device_of(const void* ptr) {
  cudaPointerAttributes a;
  check(cudaPointerGetAttributes(&a, ptr), "cudaPointerGetAttributes");
  if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
    throw std::invalid_argument("expected a CUDA device pointer (got host memory)");
  return a.device;
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

void* alloc(int64_t bytes, int device) {
  set_device(device);
  void* p = nullptr;
  check(cudaMalloc(&p, std::max<int64_t>(bytes, 1)), "cudaMalloc");
  return p;
}

void release(void* ptr, int device) noexcept {
  if (!ptr) return;
  int cur = 0;
  cudaGetDevice(&cur);
  cudaSetDevice(device);
  cudaFree(ptr);
  cudaSetDevice(cur);
}

void copy_to_host(void* host_dst, const void* src, int64_t bytes) {
  if (bytes > 0) check(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

void polar_transform(const void* aerial, bool u8, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                     const float* host_scale, const float* host_bias, float* out) {
  if (B * H * W == 0) return;
  Buf sb(2 * C * sizeof(float));
  check(cudaMemcpy(sb.as<float>(), host_scale, C * sizeof(float), cudaMemcpyHostToDevice), "upload scale");
  check(cudaMemcpy(sb.as<float>() + C, host_bias, C * sizeof(float), cudaMemcpyHostToDevice), "upload bias");
  if (u8) launch_polar(static_cast<const uint8_t*>(aerial), B, A, C, H, W, sb.as<float>(), sb.as<float>() + C, out);
  else launch_polar(static_cast<const float*>(aerial), B, A, C, H, W, sb.as<float>(), sb.as<float>() + C, out);
}

void inverse_polar(const float* polar, int64_t H, int64_t W, int64_t C, int64_t A, float fill, float* out) {
  inverse_kernel<<<blocks_for(A * A, 256), 256>>>(polar, H, W, C, A, fill, out);
  check_launch("inverse_kernel");
}

int64_t count_nonfinite(const void* x, bool half, int64_t rows, int64_t cols, int64_t ld) {
  if (rows * cols == 0) return 0;
  Buf c(sizeof(unsigned long long));
  check(cudaMemset(c.p, 0, sizeof(unsigned long long)), "cudaMemset");
  const unsigned g = blocks_for(rows * cols, 256);
  if (half) nonfinite_kernel<uint16_t><<<g, 256>>>(static_cast<const uint16_t*>(x), rows, cols, ld, c.as<unsigned long long>());
  else nonfinite_kernel<float><<<g, 256>>>(static_cast<const float*>(x), rows, cols, ld, c.as<unsigned long long>());
  check_launch("nonfinite_kernel");
  unsigned long long h = 0;
  copy_to_host(&h, c.p, sizeof(h));
  return (int64_t)h;
}

namespace detail {

void topk_canonical(const Search& s, int64_t k, const int64_t* host_exclude, int64_t m, float* out_s, int64_t* out_i) {
  if (s.nq == 0) return;
  const int64_t cap = std::min(k, s.n);
  // Segments per query: enough threads to fill the GPU, bounded heap memory (≤ 512 MB).
  int64_t segs = std::max<int64_t>(1, std::min<int64_t>(64, 16384 / s.nq));
  if (cap > 0) segs = std::max<int64_t>(1, std::min<int64_t>(segs, (int64_t(512) << 20) / (s.nq * cap * 12)));
  const int64_t nc = chunk_refs(s.nq, s.n);
  Buf S(s.n ? s.nq * nc * sizeof(float) : 0);
  Buf hs(s.nq * segs * std::max<int64_t>(cap, 1) * sizeof(float));
  Buf hi(s.nq * segs * std::max<int64_t>(cap, 1) * sizeof(int64_t));
  Buf hsize(s.nq * segs * sizeof(int64_t));
  check(cudaMemset(hsize.p, 0, s.nq * segs * sizeof(int64_t)), "cudaMemset");
  Buf ex(m > 0 ? s.nq * m * 8 : 0), exn(m > 0 ? s.nq * 8 : 0);
  if (m > 0) upload_id_lists(host_exclude, s.nq, m, nullptr, ex, exn);
  for (int64_t n0 = 0; n0 < s.n; n0 += nc) {
    const int64_t c = std::min(nc, s.n - n0);
    scores(s, n0, c, S.as<float>(), nc);
    heap_update_kernel<<<blocks_for(s.nq * segs, 128), 128>>>(S.as<float>(), nc, s.nq, n0, c, segs, hs.as<float>(),
                                                              hi.as<int64_t>(), hsize.as<int64_t>(), cap,
                                                              ex.as<int64_t>(), exn.as<int64_t>(), m);
    check_launch("heap_update_kernel");
  }
  heap_merge_kernel<<<blocks_for(s.nq, 128), 128>>>(s.nq, segs, hs.as<float>(), hi.as<int64_t>(), hsize.as<int64_t>(),
                                                    cap, k, out_s, out_i);
  check_launch("heap_merge_kernel");
}

void pair_scores(const Search& s, const int64_t* dq, const int64_t* dr, int64_t pairs, float* dst) {
  if (pairs <= 0) return;
  if (s.r_half)
    pair_scores_kernel<uint16_t><<<blocks_for(pairs, 128), 128>>>(s.q, s.ldq, static_cast<const uint16_t*>(s.r), s.ldr,
                                                                   s.d, dq, dr, pairs, dst);
  else
    pair_scores_kernel<float><<<blocks_for(pairs, 128), 128>>>(s.q, s.ldq, static_cast<const float*>(s.r), s.ldr, s.d,
                                                                dq, dr, pairs, dst);
  check_launch("pair_scores_kernel");
}

void positive_scores(const Search& s, const int64_t* host_positive, float* dev_pos) {
  Buf qi(s.nq * 8), ri(s.nq * 8);
  std::vector<int64_t> iota(s.nq);
  for (int64_t q = 0; q < s.nq; ++q) iota[q] = q;
  upload(qi.p, iota.data(), s.nq, "upload");
  upload(ri.p, host_positive, s.nq, "upload");
  pair_scores(s, qi.as<int64_t>(), ri.as<int64_t>(), s.nq, dev_pos);
}

void count_above_canonical(const Search& s, const float* dev_pos, unsigned long long* dev_counts) {
  check(cudaMemset(dev_counts, 0, s.nq * sizeof(unsigned long long)), "cudaMemset");
  if (s.nq == 0 || s.n == 0) return;
  const int64_t nc = chunk_refs(s.nq, s.n);
  Buf S(s.nq * nc * sizeof(float));
  const int64_t per_block = 4096;
  for (int64_t n0 = 0; n0 < s.n; n0 += nc) {
    const int64_t c = std::min(nc, s.n - n0);
    scores(s, n0, c, S.as<float>(), nc);
    const int64_t blocks = s.nq * ((c + per_block - 1) / per_block);
    count_above_kernel<<<(unsigned)blocks, 256>>>(S.as<float>(), nc, s.nq, c, per_block, dev_pos, dev_counts);
    check_launch("count_above_kernel");
  }
}

void finish_ranks(const Search& s, const int64_t* host_positive, const int64_t* host_ignore, int64_t m,
                  const float* dev_pos, std::vector<unsigned long long>& hc, int64_t* out) {
  if (m > 0) {  // ignored ids that were counted (their canonical score is the one the count used)
    Buf ids(s.nq * m * 8), cnt(s.nq * 8);
    std::vector<int64_t> v, c;
    upload_id_lists(host_ignore, s.nq, m, host_positive, ids, cnt, &v, &c);
    std::vector<int64_t> pq, pr;
    for (int64_t q = 0; q < s.nq; ++q)
      for (int64_t t = 0; t < c[q]; ++t) { pq.push_back(q); pr.push_back(v[q * m + t]); }
    if (!pq.empty()) {
      const int64_t P = (int64_t)pq.size();
      Buf dq(P * 8), dr(P * 8), ds(P * sizeof(float));
      upload(dq.p, pq.data(), P, "upload");
      upload(dr.p, pr.data(), P, "upload");
      pair_scores(s, dq.as<int64_t>(), dr.as<int64_t>(), P, ds.as<float>());
      std::vector<float> hs(P), hp(s.nq);
      download(hs.data(), ds.p, P, "download");
      download(hp.data(), dev_pos, s.nq, "download");
      for (int64_t t = 0; t < P; ++t)
        if (hs[t] > hp[pq[t]]) --hc[pq[t]];
    }
  }
  std::vector<int64_t> res(hc.begin(), hc.end());
  upload(out, res.data(), s.nq, "upload ranks");
}

void ranks_canonical(const Search& s, const int64_t* host_positive, const int64_t* host_ignore, int64_t m, int64_t* out) {
  if (s.nq == 0) return;
  Buf pos(s.nq * sizeof(float)), counts(s.nq * sizeof(unsigned long long));
  positive_scores(s, host_positive, pos.as<float>());
  count_above_canonical(s, pos.as<float>(), counts.as<unsigned long long>());
  std::vector<unsigned long long> hc(s.nq);
  download(hc.data(), counts.p, s.nq, "download counts");
  finish_ranks(s, host_positive, host_ignore, m, pos.as<float>(), hc, out);
}

}  // namespace detail

}  // namespace s4g::cuda
