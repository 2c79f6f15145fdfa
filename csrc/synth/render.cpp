// Synthetic-world renderer (see csrc/synth/render.h for the conventions).
//
// Panorama: for a plain height field, pixel (i, j) is first hit at the smallest sample k with
// cam_z + d_k * tan(elev_i) <= h(d_k). Because tan(elev_i) decreases with i, the pixels hit at step k
// form a run of rows just above the already-filled ones, so each column is one outward march with a
// "filled-from-the-bottom" frontier (the voxel-space / y-buffer scheme): O(width * n_dist + height * width)
// instead of a per-pixel march. s4g_synth/reference.py does the per-pixel march in float64 and
// the tests check that both agree.
#include "render.h"

#include <algorithm>
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace s4g::render {
namespace {

constexpr double kPi = 3.14159265358979323846;

struct Cell {
  int64_t r, c;
};

inline Cell lookup(const World& w, double x, double y) {
  int64_t c = static_cast<int64_t>(std::floor((x - w.x0) / w.res));
  int64_t r = static_cast<int64_t>(std::floor((w.y0 - y) / w.res));
  c = std::min<int64_t>(std::max<int64_t>(c, 0), w.cols - 1);
  r = std::min<int64_t>(std::max<int64_t>(r, 0), w.rows - 1);
  return {r, c};
}

inline double height_at(const World& w, int64_t r, int64_t c) {
  r = std::min<int64_t>(std::max<int64_t>(r, 0), w.rows - 1);
  c = std::min<int64_t>(std::max<int64_t>(c, 0), w.cols - 1);
  return static_cast<double>(w.height[r * w.cols + c]);
}

inline uint8_t to_u8(double v) {
  v = std::floor(v + 0.5);
  return static_cast<uint8_t>(std::min(255.0, std::max(0.0, v)));
}

// Sun geometry shared by tiles and panoramas.
struct Sun {
  double sx, sy;       // horizontal unit direction toward the sun (east, north)
  double cos_el, sin_el, tan_el;
};

inline Sun make_sun(const Light& l) {
  return {std::sin(l.sun_azimuth), std::cos(l.sun_azimuth), std::cos(l.sun_elevation),
          std::sin(l.sun_elevation), std::tan(l.sun_elevation)};
}

// True when the point (x, y, z) sees the sun (no height-field cell above the ray toward it).
inline bool sunlit(const World& w, const Light& l, const Sun& s, double x, double y, double z) {
  const int64_t n = static_cast<int64_t>(std::floor(l.shadow_max / l.shadow_step));
  for (int64_t k = 1; k <= n; ++k) {
    const double d = static_cast<double>(k) * l.shadow_step;
    const double zr = z + d * s.tan_el;
    if (zr > w.hmax) return true;
    const Cell c = lookup(w, x + d * s.sx, y + d * s.sy);
    if (height_at(w, c.r, c.c) > zr) return false;
  }
  return true;
}

// Light factor of a top surface at cell (r, c): Lambert from the central-difference normal, relative to
// flat ground, plus cast shadow.
inline double top_light(const World& w, const Light& l, const Sun& s, Cell cell, double x, double y) {
  const double gx = (height_at(w, cell.r, cell.c + 1) - height_at(w, cell.r, cell.c - 1)) / (2.0 * w.res);
  const double gy = (height_at(w, cell.r - 1, cell.c) - height_at(w, cell.r + 1, cell.c)) / (2.0 * w.res);
  const double norm = std::sqrt(gx * gx + gy * gy + 1.0);
  const double ndotl = (-gx * s.sx * s.cos_el - gy * s.sy * s.cos_el + s.sin_el) / norm;
  double diffuse = std::min(1.3, std::max(0.0, ndotl / s.sin_el));
  const double h = height_at(w, cell.r, cell.c);
  if (diffuse > 0.0 && !sunlit(w, l, s, x, y, h)) diffuse = 0.0;
  return l.ambient + (1.0 - l.ambient) * diffuse;
}

inline void shade(const float* gain, const uint8_t* base, double light, uint8_t* out) {
  for (int ch = 0; ch < 3; ++ch) out[ch] = to_u8(static_cast<double>(base[ch]) * gain[ch] * light);
}

inline int resolve_threads(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

inline double frac(double v) { return v - std::floor(v); }

// Highest cell of the raster window covering [xmin, xmax] × [ymin, ymax] (clamped to the raster, so it
// also covers the edge cells that clamped lookups return). Shadow rays above it cannot be blocked: using
// it instead of the world maximum stops them early without changing any result.
double local_max(const World& w, double xmin, double xmax, double ymin, double ymax) {
  const Cell a = lookup(w, xmin, ymax), b = lookup(w, xmax, ymin);
  float m = 0.0f;
  for (int64_t r = a.r; r <= b.r; ++r) {
    const float* row = w.height + r * w.cols;
    for (int64_t c = a.c; c <= b.c; ++c) m = std::max(m, row[c]);
  }
  return std::min(w.hmax, static_cast<double>(m));
}

}  // namespace

double max_height(const float* height, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, height[i]);
  return static_cast<double>(m);
}

uint8_t max_material(const uint8_t* material, int64_t n) {
  uint8_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, material[i]);
  return m;
}

void render_panorama(const World& world, const Light& l, const PanoParams& p, uint8_t* out, int threads) {
  const int H = p.height, W = p.width;
  World w = world;
  const double reach = (p.n_dist > 0 ? p.dist[p.n_dist - 1] : 0.0) + l.shadow_max + w.res;
  w.hmax = local_max(w, p.cam_x - reach, p.cam_x + reach, p.cam_y - reach, p.cam_y + reach);
  const Sun sun = make_sun(l);
  std::vector<double> tan_el(H), elev(H);
  const double step = (p.elev_top - p.elev_bottom) / static_cast<double>(H);
  for (int i = 0; i < H; ++i) {
    elev[i] = p.elev_top - (static_cast<double>(i) + 0.5) * step;
    tan_el[i] = std::tan(elev[i]);
  }
  // Background colours per row (sky above the horizon, far-field ground below).
  std::vector<uint8_t> background(static_cast<size_t>(H) * 3);
  for (int i = 0; i < H; ++i) {
    if (elev[i] > 0.0) {
      const double m = std::sqrt(std::min(1.0, std::max(0.0, elev[i] / (kPi / 2.0))));
      for (int ch = 0; ch < 3; ++ch)
        background[i * 3 + ch] = to_u8(p.sky_horizon[ch] + (p.sky_zenith[ch] - p.sky_horizon[ch]) * m);
    } else {
      for (int ch = 0; ch < 3; ++ch) background[i * 3 + ch] = p.far_ground[ch];
    }
  }
  const Cell cam_cell = lookup(w, p.cam_x, p.cam_y);
  const double cam_h = height_at(w, cam_cell.r, cam_cell.c);
  const int nt = resolve_threads(threads);

#pragma omp parallel for num_threads(nt) schedule(dynamic, 8)
  for (int j = 0; j < W; ++j) {
    const double theta = 2.0 * kPi * static_cast<double>(j) / static_cast<double>(W);
    const double ex = -std::sin(theta), ny = -std::cos(theta);
    int frontier = H;  // rows [frontier, H) are filled
    Cell prev = cam_cell;
    double prev_h = cam_h;
    for (int64_t k = 0; k < p.n_dist && frontier > 0; ++k) {
      const double d = p.dist[k];
      const double x = p.cam_x + d * ex, y = p.cam_y + d * ny;
      const Cell cell = lookup(w, x, y);
      const double h = height_at(w, cell.r, cell.c);
      int i = frontier - 1;
      while (i >= 0 && p.cam_z + d * tan_el[i] <= h) --i;
      const int first = i + 1;
      if (first < frontier) {
        const int64_t idx = cell.r * w.cols + cell.c;
        const uint8_t mat = w.material[idx];
        const float* gain = l.gain + 3 * static_cast<int64_t>(mat);
        if (h > prev_h) {
          // Wall: which cell boundary was crossed gives the wall normal; its along-wall coordinate
          // drives the window pattern.
          double nx = 0.0, nyw = 0.0, along;
          if (cell.c != prev.c) {
            nx = ex > 0.0 ? -1.0 : 1.0;
            along = y;
          } else {
            nyw = ny > 0.0 ? -1.0 : 1.0;
            along = x;
          }
          const double ndotl = (nx * sun.sx + nyw * sun.sy) * sun.cos_el;
          const double diffuse = std::min(1.3, std::max(0.0, ndotl / sun.sin_el));
          const double light = l.ambient + (1.0 - l.ambient) * diffuse;
          const uint8_t* fac = w.facade + 3 * idx;
          uint8_t window[3];
          for (int ch = 0; ch < 3; ++ch)
            window[ch] = static_cast<uint8_t>(std::floor(fac[ch] * 0.3 + (ch == 0 ? 35 : ch == 1 ? 45 : 60)));
          const double fs = frac(along / p.window_width);
          const bool bay = mat == kMaterialBuilding && fs >= 0.2 && fs < 0.75;
          for (int r = first; r < frontier; ++r) {
            const double z = p.cam_z + d * tan_el[r];
            const double fz = frac(z / p.floor_height);
            const bool win = bay && z > 1.0 && fz >= 0.35 && fz < 0.8;
            shade(gain, win ? window : fac, light, out + (static_cast<int64_t>(r) * W + j) * 3);
          }
        } else {
          const double light = top_light(w, l, sun, cell, x, y);
          uint8_t col[3];
          shade(gain, w.albedo + 3 * idx, light, col);
          for (int r = first; r < frontier; ++r) {
            uint8_t* o = out + (static_cast<int64_t>(r) * W + j) * 3;
            o[0] = col[0];
            o[1] = col[1];
            o[2] = col[2];
          }
        }
        frontier = first;
      }
      prev = cell;
      prev_h = h;
    }
    for (int r = 0; r < frontier; ++r) {
      uint8_t* o = out + (static_cast<int64_t>(r) * W + j) * 3;
      for (int ch = 0; ch < 3; ++ch) o[ch] = background[r * 3 + ch];
    }
  }
}

void render_tile(const World& world, const Light& l, const TileParams& p, uint8_t* out, int threads) {
  const int S = p.size;
  World w = world;
  const double reach = S / 2.0 * p.res + l.shadow_max + 2.0 * w.res;
  w.hmax = local_max(w, p.center_x - reach, p.center_x + reach, p.center_y - reach, p.center_y + reach);
  const Sun sun = make_sun(l);
  const int nt = resolve_threads(threads);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
  for (int u = 0; u < S; ++u) {
    const double y = p.center_y - (static_cast<double>(u) + 0.5 - S / 2.0) * p.res;
    for (int v = 0; v < S; ++v) {
      const double x = p.center_x + (static_cast<double>(v) + 0.5 - S / 2.0) * p.res;
      const Cell cell = lookup(w, x, y);
      const int64_t idx = cell.r * w.cols + cell.c;
      const double light = top_light(w, l, sun, cell, x, y);
      shade(l.gain + 3 * static_cast<int64_t>(w.material[idx]), w.albedo + 3 * idx, light,
            out + (static_cast<int64_t>(u) * S + v) * 3);
    }
  }
}

}  // namespace s4g::render
