// Polar transform (docs/METHOD.md §9) and its inverse on the CPU.
//
// Why not cv2.remap: the engine must not need OpenCV, and fusing the uint8→float conversion and the
// per-channel normalisation into the gather saves two extra passes over the output. The sampling map
// depends only on (A, H, W): it is computed once with the shared maths of polar_math.h and cached, so a
// batch costs one gather per output value. uint8 input with C ≤ 4 on AVX2 takes the gather path of
// polar_avx2.cpp (8 pixels per step, the next image prefetched meanwhile — the profile showed the time
// going to cache misses along the sampling circles, not to arithmetic); the rest is the scalar path.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "s4g/cpu_gemm.h"
#include "s4g/kernels.h"
#include "s4g/polar_math.h"

namespace s4g::cpu {

void polar_u8_groups_avx2(const uint8_t* img, int64_t A, int64_t C, const int32_t* base, const float* fx,
                          const float* fy, const uint8_t* safe, int64_t g0, int64_t g1, const float* scale,
                          const float* bias, float* out, const uint8_t* next, int64_t next_bytes);
bool polar_avx2_compiled();

namespace {

struct Tap {
  int32_t idx[4];  // pixel index row*A + col (A*A < 2^31 is checked by the façade)
  float w[4];
};

struct PolarMap {
  std::vector<Tap> taps;  // H*W, the scalar path
  // The gather path, per output pixel (flat index, padded to groups of 8): the top-left tap's pixel
  // index and the fractional column/row of the sample (weights (1−fx)(1−fy), fx(1−fy), (1−fx)fy, fx·fy);
  // per group of 8: all four taps of every pixel inside the image, and the largest tap pixel index.
  std::vector<int32_t> base;
  std::vector<float> fx, fy;
  std::vector<uint8_t> inside;
  std::vector<int64_t> max_pixel;
};

std::mutex g_mutex;
std::map<std::tuple<int64_t, int64_t, int64_t>, std::shared_ptr<const PolarMap>> g_cache;
constexpr size_t kMaxCached = 16;

std::shared_ptr<const PolarMap> polar_map(int64_t A, int64_t H, int64_t W) {
  const auto key = std::make_tuple(A, H, W);
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_cache.find(key);
    if (it != g_cache.end()) return it->second;
  }
  auto map = std::make_shared<PolarMap>();
  const int64_t P = H * W, G = (P + 7) / 8;
  map->taps.resize(P);
  map->base.assign(G * 8, 0);
  map->fx.assign(G * 8, 0.0f);
  map->fy.assign(G * 8, 0.0f);
  map->inside.assign(G, 1);
  map->max_pixel.assign(G, 0);
  std::vector<uint8_t> in_px(P);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < H; ++i) {
    for (int64_t j = 0; j < W; ++j) {
      double row, col;
      polar_source<double>(i, j, A, H, W, &row, &col);
      const Taps4 t = bilinear_taps<double>(row, col, A, A);
      const int64_t p = i * W + j;
      Tap& o = map->taps[p];
      for (int q = 0; q < 4; ++q) { o.idx[q] = (int32_t)t.idx[q]; o.w[q] = t.w[q]; }
      const double r0 = std::floor(row), c0 = std::floor(col);
      map->fx[p] = float(col - c0);
      map->fy[p] = float(row - r0);
      in_px[p] = r0 >= 0 && c0 >= 0 && r0 + 1 < A && c0 + 1 < A;
      map->base[p] = in_px[p] ? int32_t(int64_t(r0) * A + int64_t(c0)) : 0;
    }
  }
  for (int64_t p = 0; p < P; ++p) {  // group flags (serial: groups straddle rows)
    if (!in_px[p]) map->inside[p / 8] = 0;
    else map->max_pixel[p / 8] = std::max<int64_t>(map->max_pixel[p / 8], int64_t(map->base[p]) + A + 1);
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_cache.size() >= kMaxCached) g_cache.clear();
  g_cache[key] = map;
  return map;
}

template <int kC, class T>
inline void gather_pixel(const T* img, const Tap& t, int64_t C, const float* scale, const float* bias, float* out) {
  const int64_t c_n = kC > 0 ? kC : C;
  for (int64_t c = 0; c < c_n; ++c) {
    const float v = t.w[0] * float(img[int64_t(t.idx[0]) * c_n + c]) + t.w[1] * float(img[int64_t(t.idx[1]) * c_n + c]) +
                    t.w[2] * float(img[int64_t(t.idx[2]) * c_n + c]) + t.w[3] * float(img[int64_t(t.idx[3]) * c_n + c]);
    out[c] = v * scale[c] + bias[c];
  }
}

bool use_gather() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = polar_avx2_compiled() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  // The search's SIMD level (S4G_SIMD, set_simd_level) also decides here, so tests reach both paths.
  return ok && std::strcmp(active_simd_level(), "generic") != 0;
#else
  return false;
#endif
}

// uint8, C ≤ 4, AVX2: whole images per work item when the batch has enough of them (each thread then
// prefetches its next image while sampling the current one), else parts of an image per item. Unsafe
// groups (a tap outside the image, or a 4-byte read past its end) and the tail use the scalar path.
template <int kC>
void polar_u8_gather(const uint8_t* aerial, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                     const float* scale, const float* bias, float* out) {
  const auto map = polar_map(A, H, W);
  const int64_t P = H * W, G = (P + 7) / 8, full = P / 8, img_bytes = A * A * C;
  std::vector<uint8_t> safe(G);
  for (int64_t g = 0; g < G; ++g) safe[g] = map->inside[g] && map->max_pixel[g] * C + 4 <= img_bytes;
  const int threads = omp_get_max_threads();
  const int64_t parts = B >= threads ? 1 : (threads + B - 1) / B, items = B * parts;
#pragma omp parallel
  {
    bool first = true;
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / parts, part = item % parts;
      const uint8_t* img = aerial + b * img_bytes;
      float* o = out + b * P * C;
      const int64_t g0 = full * part / parts, g1 = full * (part + 1) / parts;
      if (first) {  // nothing prefetched this image for us yet: stream it in once, in address order
        for (int64_t off = 0; off < img_bytes; off += 64) __builtin_prefetch(img + off, 0, 2);
        first = false;
      }
      const bool next = parts == 1 && b + 1 < B;
      polar_u8_groups_avx2(img, A, C, map->base.data(), map->fx.data(), map->fy.data(), safe.data(), g0, g1, scale,
                           bias, o, next ? img + img_bytes : img, next ? img_bytes : 0);
      const int64_t gend = part + 1 == parts ? G : g1;
      for (int64_t g = g0; g < gend; ++g) {
        if (g < full && safe[g]) continue;
        for (int64_t p = g * 8; p < (g + 1) * 8 && p < P; ++p)
          gather_pixel<kC, uint8_t>(img, map->taps[p], C, scale, bias, o + p * C);
      }
    }
  }
}

template <int kC, class T>
void polar_impl(const T* aerial, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W, const float* scale,
                const float* bias, float* out) {
  const auto map = polar_map(A, H, W);
  const Tap* taps = map->taps.data();
  const int64_t img_stride = A * A * C;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < H; ++i) {
      const T* img = aerial + b * img_stride;
      float* o = out + ((b * H + i) * W) * C;
      const Tap* t = taps + i * W;
      for (int64_t j = 0; j < W; ++j) gather_pixel<kC, T>(img, t[j], C, scale, bias, o + j * C);
    }
  }
}

template <class T>
void polar_dispatch(const T* aerial, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W, const float* scale,
                    const float* bias, float* out) {
  if (B == 0 || H == 0 || W == 0) return;
  if constexpr (sizeof(T) == 1) {
    if (C <= 4 && A * A * C + 4 < (int64_t(1) << 31) && use_gather()) {
      switch (C) {
        case 1: polar_u8_gather<1>(aerial, B, A, C, H, W, scale, bias, out); return;
        case 3: polar_u8_gather<3>(aerial, B, A, C, H, W, scale, bias, out); return;
        case 4: polar_u8_gather<4>(aerial, B, A, C, H, W, scale, bias, out); return;
        default: polar_u8_gather<0>(aerial, B, A, C, H, W, scale, bias, out); return;
      }
    }
  }
  switch (C) {
    case 1: polar_impl<1, T>(aerial, B, A, C, H, W, scale, bias, out); break;
    case 3: polar_impl<3, T>(aerial, B, A, C, H, W, scale, bias, out); break;
    case 4: polar_impl<4, T>(aerial, B, A, C, H, W, scale, bias, out); break;
    default: polar_impl<0, T>(aerial, B, A, C, H, W, scale, bias, out); break;
  }
}

}  // namespace

void polar_transform_u8(const uint8_t* aerial, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                        const float* scale, const float* bias, float* out) {
  polar_dispatch<uint8_t>(aerial, B, A, C, H, W, scale, bias, out);
}

void polar_transform_f32(const float* aerial, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                         const float* scale, const float* bias, float* out) {
  polar_dispatch<float>(aerial, B, A, C, H, W, scale, bias, out);
}

int64_t polar_cache_size() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return (int64_t)g_cache.size();
}

void inverse_polar(const float* polar, int64_t H, int64_t W, int64_t C, int64_t A, float fill, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < A; ++row) {
    for (int64_t col = 0; col < A; ++col) {
      float* o = out + (row * A + col) * C;
      double i, j;
      if (!polar_inverse<double>(row, col, A, H, W, &i, &j)) {
        for (int64_t c = 0; c < C; ++c) o[c] = fill;
        continue;
      }
      const Taps4 t = polar_taps<double>(i, j, H, W);
      for (int64_t c = 0; c < C; ++c)
        o[c] = t.w[0] * polar[t.idx[0] * C + c] + t.w[1] * polar[t.idx[1] * C + c] + t.w[2] * polar[t.idx[2] * C + c] +
               t.w[3] * polar[t.idx[3] * C + c];
    }
  }
}

}  // namespace s4g::cpu
