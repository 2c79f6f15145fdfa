// Polar transform (SPEC §9) and its inverse on the CPU.
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
namespace {

struct Tap {
  int32_t idx[4];  // pixel index row*A + col (A*A < 2^31 is checked by the façade)
  float w[4];
};

struct PolarMap {
  std::vector<Tap> taps;  // H*W
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
