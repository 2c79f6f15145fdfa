// Synthetic-world renderer: an orthographic satellite tile and a 360-degree equirectangular ground
// panorama ray-marched through a raster height field, for the synthetic world (s4g_synth). Pure C++ (no
// Python); the bindings in csrc/synth/bind_render.cpp (the module s4g_synth._render) validate inputs,
// release the GIL and call these functions. Not part of the production core s4g_engine._core.
//
// World raster (row 0 = north edge, column 0 = west edge), cell size `res` metres:
//   cell (r, c) covers x in [x0 + c*res, x0 + (c+1)*res), y in (y0 - (r+1)*res, y0 - r*res]
//   (x = east, y = north, metres). Points outside the raster are clamped to the nearest edge cell.
// Arrays: height float32 (R, C) metres; albedo uint8 (R, C, 3) top colour; facade uint8 (R, C, 3) wall
// colour; material uint8 (R, C) class id (< n_materials) indexing `gain` float32 (n_materials, 3).
//
// The exact maths is mirrored by the float64 NumPy reference s4g_synth/reference.py (parity test).
#pragma once
#include <cstdint>

namespace s4g::render {

// Material ids that the renderer treats specially (the rest are plain surfaces).
constexpr int kMaterialBuilding = 9;  // walls get a window pattern

struct World {
  const float* height = nullptr;     // (rows, cols)
  const uint8_t* albedo = nullptr;   // (rows, cols, 3)
  const uint8_t* facade = nullptr;   // (rows, cols, 3)
  const uint8_t* material = nullptr; // (rows, cols)
  int64_t rows = 0, cols = 0;
  double res = 0.5;   // metres per cell
  double x0 = 0.0;    // x of the west edge
  double y0 = 0.0;    // y of the north edge
  double hmax = 0.0;  // max(height), used to stop shadow rays early
};

struct Light {
  const float* gain = nullptr;  // (n_materials, 3) colour gain per material (season, white balance)
  int n_materials = 0;
  double sun_azimuth = 2.4;     // radians, clockwise from north (east = pi/2)
  double sun_elevation = 0.8;   // radians above the horizon, > 0
  double ambient = 0.55;        // light in full shadow (fraction of direct light)
  double shadow_step = 1.0;     // metres per shadow-ray step
  double shadow_max = 60.0;     // longest shadow ray, metres
};

struct PanoParams {
  double cam_x = 0.0, cam_y = 0.0, cam_z = 2.5;  // camera position (metres; z above ground 0)
  int height = 128, width = 512;                 // output size
  double elev_top = 0.785398, elev_bottom = -0.785398;  // elevation (rad) of the top/bottom image edges
  const double* dist = nullptr;  // (n_dist,) increasing horizontal sample distances, metres
  int64_t n_dist = 0;
  uint8_t sky_horizon[3] = {200, 215, 230};
  uint8_t sky_zenith[3] = {90, 140, 210};
  uint8_t far_ground[3] = {120, 120, 110};
  double floor_height = 3.2;     // window pattern: storey height (m)
  double window_width = 2.6;     // window pattern: bay width (m)
};

struct TileParams {
  double center_x = 0.0, center_y = 0.0;  // tile centre (metres)
  int size = 256;                         // output size (pixels, square)
  double res = 0.5;                       // metres per output pixel
};

// max(height[0:n]) (0 for n == 0) and max(material[0:n]): used by the bindings for validation.
double max_height(const float* height, int64_t n);
uint8_t max_material(const uint8_t* material, int64_t n);

// Elevation of panorama row i: elev_top - (i + 0.5) * (elev_top - elev_bottom) / height.
// Azimuth of column j: theta = 2*pi*j/width; horizontal direction (east, north) = (-sin theta, -cos theta)
// (column 0 faces south, width/4 west, width/2 north, 3*width/4 east: the panorama convention of
// docs/METHOD.md §9).
// out: (height, width, 3) uint8. threads <= 0: OpenMP default.
void render_panorama(const World& w, const Light& l, const PanoParams& p, uint8_t* out, int threads);

// North-up orthographic tile: out (size, size, 3) uint8, Lambert shading from the height gradient and
// cast shadows toward the sun.
void render_tile(const World& w, const Light& l, const TileParams& p, uint8_t* out, int threads);

}  // namespace s4g::render
