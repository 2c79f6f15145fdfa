// Polar transform (docs/METHOD.md §9) and its inverse on the CPU.
//
// Why not cv2.remap: the engine must not need OpenCV, and fusing the uint8→float conversion and the
// per-channel normalisation into the gather saves two extra passes over the output. The sampling map
// (4 taps + 4 weights per output pixel) depends only on (A, H, W): it is computed once with the shared
// maths of polar_math.h and cached, so a batch costs one gather per output value.
#include <omp.h>

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "s4g/kernels.h"
#include "s4g/polar_math.h"

namespace s4g::cpu {

void polar_u8_groups_avx2(const uint8_t* img, int64_t C, const int32_t* idx, const float* w, const uint8_t* safe,
                          int64_t g0, int64_t g1, const float* scale, const float* bias, float* out);
bool polar_avx2_compiled();

namespace {

struct Tap {
  int32_t idx[4];  // pixel index row*A + col (A*A < 2^31 is checked by the façade)
  float w[4];
};

struct PolarMap {
  std::vector<Tap> taps;  // H*W
  // The same taps for the AVX2 gather path, per group of 8 consecutive output pixels (flat index):
  // gidx[g][t][8] pixel indices, gw[g][t][8] weights (tail padded with weight 0), gsafe[g] = every
  // 4-byte gather of the group stays inside the image (else the scalar path does the group).
  std::vector<int32_t> gidx;
  std::vector<float> gw;
  std::vector<uint8_t> gsafe;
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
  map->taps.resize(H * W);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < H; ++i) {
    for (int64_t j = 0; j < W; ++j) {
      double row, col;
      polar_source<double>(i, j, A, H, W, &row, &col);
      const Taps4 t = bilinear_taps<double>(row, col, A, A);
      Tap& o = map->taps[i * W + j];
      for (int q = 0; q < 4; ++q) { o.idx[q] = (int32_t)t.idx[q]; o.w[q] = t.w[q]; }
    }
  }
  const int64_t P = H * W, G = (P + 7) / 8;
  map->gidx.assign(G * 32, 0);
  map->gw.assign(G * 32, 0.0f);
  map->gsafe.assign(G, 1);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t g = p / 8, l = p % 8;
    for (int t = 0; t < 4; ++t) {
      map->gidx[g * 32 + t * 8 + l] = map->taps[p].idx[t];
      map->gw[g * 32 + t * 8 + l] = map->taps[p].w[t];
      if (map->taps[p].idx[t] == A * A - 1) map->gsafe[g] = 0;  // a 4-byte read could pass the image end
    }
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

bool use_avx2() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = polar_avx2_compiled() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// uint8, C <= 4 on AVX2: gather groups of 8 pixels; unsafe groups and the tail go through the scalar path.
template <int kC>
void polar_u8_gather(const uint8_t* aerial, int64_t B, int64_t A, int64_t C, int64_t H, int64_t W,
                     const float* scale, const float* bias, float* out) {
  const auto map = polar_map(A, H, W);
  const int64_t P = H * W, G = (P + 7) / 8, full = P / 8;
  // byte offsets pixel·C for the gathers (scaled copy of gidx, cached per call: cheap next to the batch)
  std::vector<int32_t> off(map->gidx.size());
  for (size_t e = 0; e < off.size(); ++e) off[e] = map->gidx[e] * (int32_t)C;
  constexpr int64_t kGroupsPerTask = 256;
  const int64_t tasks = (G + kGroupsPerTask - 1) / kGroupsPerTask;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t task = 0; task < tasks; ++task) {
      const uint8_t* img = aerial + b * A * A * C;
      float* o = out + b * P * C;
      const int64_t g0 = task * kGroupsPerTask, g1 = g0 + kGroupsPerTask < full ? g0 + kGroupsPerTask : full;
      if (g0 < g1)
        polar_u8_groups_avx2(img, C, off.data(), map->gw.data(), map->gsafe.data(), g0, g1, scale, bias, o);
      const int64_t gend = g0 + kGroupsPerTask < G ? g0 + kGroupsPerTask : G;
      for (int64_t g = g0; g < gend; ++g) {
        if (g < full && map->gsafe[g]) continue;
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
    if (C <= 4 && use_avx2()) {
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
