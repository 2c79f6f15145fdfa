// s4g_synth._render: Python bindings of the synthetic-world renderer (csrc/synth/render.cpp): validate,
// release the GIL, call. Its own module so the production core s4g_engine._core holds only production
// kernels; the typed stub is s4g_synth/_render.pyi.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <optional>
#include <sstream>
#include <string>

#include "render.h"

namespace py = pybind11;

namespace s4g::synth_bind {
namespace {

std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) os << (i ? ", " : "") << a.shape(i);
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}

template <typename T>
void check_array(const py::array& a, const char* name, const char* dtype_name, int ndim) {
  if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().is(py::dtype::of<T>()))
    throw py::value_error(std::string(name) + ": expected dtype " + dtype_name + ", got " +
                          std::string(py::str(a.dtype())) + " (convert with .astype(np." + dtype_name + "))");
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) + " dimensions, got shape " +
                          shape_str(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array (use np.ascontiguousarray)");
}

void check_finite(double v, const char* name) {
  if (!std::isfinite(v)) throw py::value_error(std::string(name) + " must be finite, got " + std::to_string(v));
}

// Validates the world arrays against each other and fills a render::World.
render::World make_world(const py::array& height, const py::array& albedo, const py::array& facade,
                         const py::array& material, double res, double x0, double y0, std::optional<double> hmax) {
  check_array<float>(height, "height", "float32", 2);
  check_array<uint8_t>(albedo, "albedo", "uint8", 3);
  check_array<uint8_t>(facade, "facade", "uint8", 3);
  check_array<uint8_t>(material, "material", "uint8", 2);
  const py::ssize_t R = height.shape(0), C = height.shape(1);
  if (R < 1 || C < 1) throw py::value_error("height: empty world raster, got shape " + shape_str(height));
  for (const auto* pa : {&albedo, &facade}) {
    if (pa->shape(0) != R || pa->shape(1) != C || pa->shape(2) != 3)
      throw py::value_error("albedo/facade: expected shape (" + std::to_string(R) + ", " + std::to_string(C) +
                            ", 3) to match height, got " + shape_str(*pa));
  }
  if (material.shape(0) != R || material.shape(1) != C)
    throw py::value_error("material: expected shape (" + std::to_string(R) + ", " + std::to_string(C) +
                          ") to match height, got " + shape_str(material));
  if (!(res > 0.0) || !std::isfinite(res)) throw py::value_error("res (metres per cell) must be > 0, got " + std::to_string(res));
  check_finite(x0, "x0");
  check_finite(y0, "y0");
  render::World w;
  w.height = static_cast<const float*>(height.data());
  w.albedo = static_cast<const uint8_t*>(albedo.data());
  w.facade = static_cast<const uint8_t*>(facade.data());
  w.material = static_cast<const uint8_t*>(material.data());
  w.rows = R;
  w.cols = C;
  w.res = res;
  w.x0 = x0;
  w.y0 = y0;
  w.hmax = hmax.has_value() ? *hmax : render::max_height(w.height, R * C);
  check_finite(w.hmax, "hmax");
  return w;
}

render::Light make_light(const py::array& material, const py::array& gain, double sun_azimuth, double sun_elevation,
                         double ambient, double shadow_step, double shadow_max) {
  check_array<float>(gain, "gain", "float32", 2);
  if (gain.shape(1) != 3 || gain.shape(0) < 1 || gain.shape(0) > 256)
    throw py::value_error("gain: expected shape (n_materials, 3) with 1 <= n_materials <= 256, got " + shape_str(gain));
  render::Light l;
  l.gain = static_cast<const float*>(gain.data());
  l.n_materials = static_cast<int>(gain.shape(0));
  const uint8_t mmax = render::max_material(static_cast<const uint8_t*>(material.data()), material.size());
  if (mmax >= l.n_materials)
    throw py::value_error("material: ids must be < gain.shape[0] = " + std::to_string(l.n_materials) + ", found id " +
                          std::to_string(mmax) + " (give a gain row per material)");
  check_finite(sun_azimuth, "sun_azimuth");
  if (!(sun_elevation > 0.01 && sun_elevation < 1.5707))
    throw py::value_error("sun_elevation must be in (0.01, pi/2) radians, got " + std::to_string(sun_elevation));
  if (!(ambient >= 0.0 && ambient <= 1.0)) throw py::value_error("ambient must be in [0, 1], got " + std::to_string(ambient));
  if (!(shadow_step > 0.0) || !(shadow_max >= 0.0) || !std::isfinite(shadow_max) || shadow_max / shadow_step > 1e6)
    throw py::value_error("shadow_step must be > 0 and shadow_max >= 0 (and shadow_max/shadow_step <= 1e6)");
  l.sun_azimuth = sun_azimuth;
  l.sun_elevation = sun_elevation;
  l.ambient = ambient;
  l.shadow_step = shadow_step;
  l.shadow_max = shadow_max;
  return l;
}

void copy_rgb(const std::array<int, 3>& src, uint8_t* dst, const char* name) {
  for (int c = 0; c < 3; ++c) {
    if (src[c] < 0 || src[c] > 255) throw py::value_error(std::string(name) + ": RGB values must be in [0, 255]");
    dst[c] = static_cast<uint8_t>(src[c]);
  }
}

}  // namespace

void register_render(py::module_& m) {
  m.def(
      "render_panorama",
      [](const py::array& height, const py::array& albedo, const py::array& facade, const py::array& material,
         const py::array& gain, const py::array& dist, double res, double x0, double y0,
         std::array<double, 3> camera, std::array<int, 2> size, double elev_top, double elev_bottom,
         double sun_azimuth, double sun_elevation, double ambient, double shadow_step, double shadow_max,
         std::array<int, 3> sky_horizon, std::array<int, 3> sky_zenith, std::array<int, 3> far_ground,
         double floor_height, double window_width, std::optional<double> hmax, int threads) {
        render::World w = make_world(height, albedo, facade, material, res, x0, y0, hmax);
        render::Light l = make_light(material, gain, sun_azimuth, sun_elevation, ambient, shadow_step, shadow_max);
        check_array<double>(dist, "dist", "float64", 1);
        if (dist.shape(0) < 1) throw py::value_error("dist: expected at least one sample distance");
        const double* dp = static_cast<const double*>(dist.data());
        for (py::ssize_t k = 0; k < dist.shape(0); ++k) {
          if (!(dp[k] > 0.0) || !std::isfinite(dp[k]) || (k > 0 && !(dp[k] > dp[k - 1])))
            throw py::value_error("dist: expected finite, positive, strictly increasing distances (metres)");
        }
        if (size[0] < 1 || size[1] < 1 || size[0] > 16384 || size[1] > 65536)
          throw py::value_error("size: expected (height, width) >= 1, got (" + std::to_string(size[0]) + ", " +
                                std::to_string(size[1]) + ")");
        if (!(elev_top > elev_bottom) || elev_top >= 1.5707 || elev_bottom <= -1.5707)
          throw py::value_error("elevations: expected pi/2 > elev_top > elev_bottom > -pi/2 (radians)");
        for (int c = 0; c < 3; ++c) check_finite(camera[c], "camera");
        if (!(floor_height > 0.0) || !(window_width > 0.0))
          throw py::value_error("floor_height and window_width must be > 0");
        render::PanoParams p;
        p.cam_x = camera[0];
        p.cam_y = camera[1];
        p.cam_z = camera[2];
        p.height = size[0];
        p.width = size[1];
        p.elev_top = elev_top;
        p.elev_bottom = elev_bottom;
        p.dist = dp;
        p.n_dist = dist.shape(0);
        copy_rgb(sky_horizon, p.sky_horizon, "sky_horizon");
        copy_rgb(sky_zenith, p.sky_zenith, "sky_zenith");
        copy_rgb(far_ground, p.far_ground, "far_ground");
        p.floor_height = floor_height;
        p.window_width = window_width;
        py::array_t<uint8_t> out({static_cast<py::ssize_t>(size[0]), static_cast<py::ssize_t>(size[1]),
                                  static_cast<py::ssize_t>(3)});
        uint8_t* op = out.mutable_data();
        {
          py::gil_scoped_release release;
          render::render_panorama(w, l, p, op, threads);
        }
        return out;
      },
      py::arg("height"), py::arg("albedo"), py::arg("facade"), py::arg("material"), py::arg("gain"), py::arg("dist"),
      py::kw_only(), py::arg("res"), py::arg("x0"), py::arg("y0"), py::arg("camera"), py::arg("size"),
      py::arg("elev_top") = 0.7853981633974483, py::arg("elev_bottom") = -0.7853981633974483,
      py::arg("sun_azimuth") = 2.4, py::arg("sun_elevation") = 0.8, py::arg("ambient") = 0.55,
      py::arg("shadow_step") = 1.0, py::arg("shadow_max") = 60.0,
      py::arg("sky_horizon") = std::array<int, 3>{200, 215, 230},
      py::arg("sky_zenith") = std::array<int, 3>{90, 140, 210},
      py::arg("far_ground") = std::array<int, 3>{120, 120, 110}, py::arg("floor_height") = 3.2,
      py::arg("window_width") = 2.6, py::arg("hmax") = py::none(), py::arg("threads") = 0,
      R"doc(Ray-march a 360-degree equirectangular panorama through a raster height field.

height float32 (R, C) metres, albedo/facade uint8 (R, C, 3), material uint8 (R, C), gain float32 (M, 3),
dist float64 (K,) increasing horizontal sample distances (m). Row 0 of the world is its north edge at
y0, column 0 its west edge at x0; cells are `res` metres. camera = (x east, y north, z) metres.
Returns uint8 (H, W, 3); column j looks toward azimuth 2*pi*j/W measured from south through west
(W/2 = north, 3W/4 = east), rows span elev_top..elev_bottom radians. Releases the GIL.)doc");

  m.def(
      "render_tile",
      [](const py::array& height, const py::array& albedo, const py::array& facade, const py::array& material,
         const py::array& gain, double res, double x0, double y0, std::array<double, 2> center, int size,
         double tile_res, double sun_azimuth, double sun_elevation, double ambient, double shadow_step,
         double shadow_max, std::optional<double> hmax, int threads) {
        render::World w = make_world(height, albedo, facade, material, res, x0, y0, hmax);
        render::Light l = make_light(material, gain, sun_azimuth, sun_elevation, ambient, shadow_step, shadow_max);
        if (size < 1 || size > 16384) throw py::value_error("size: expected 1..16384 pixels, got " + std::to_string(size));
        if (!(tile_res > 0.0) || !std::isfinite(tile_res))
          throw py::value_error("tile_res (metres per tile pixel) must be > 0, got " + std::to_string(tile_res));
        check_finite(center[0], "center");
        check_finite(center[1], "center");
        render::TileParams p;
        p.center_x = center[0];
        p.center_y = center[1];
        p.size = size;
        p.res = tile_res;
        py::array_t<uint8_t> out({static_cast<py::ssize_t>(size), static_cast<py::ssize_t>(size), static_cast<py::ssize_t>(3)});
        uint8_t* op = out.mutable_data();
        {
          py::gil_scoped_release release;
          render::render_tile(w, l, p, op, threads);
        }
        return out;
      },
      py::arg("height"), py::arg("albedo"), py::arg("facade"), py::arg("material"), py::arg("gain"), py::kw_only(),
      py::arg("res"), py::arg("x0"), py::arg("y0"), py::arg("center"), py::arg("size"), py::arg("tile_res"),
      py::arg("sun_azimuth") = 2.4, py::arg("sun_elevation") = 0.8, py::arg("ambient") = 0.55,
      py::arg("shadow_step") = 1.0, py::arg("shadow_max") = 60.0, py::arg("hmax") = py::none(), py::arg("threads") = 0,
      R"doc(Render a north-up orthographic tile (size, size, 3) uint8 centred at center = (x, y) metres with
tile_res metres per pixel: albedo x material gain x (Lambert shading + cast shadows). Releases the GIL.)doc");
}

}  // namespace s4g::synth_bind

PYBIND11_MODULE(_render, m) {
  m.doc() = "s4g synthetic-world renderer (C++17, OpenMP): render_panorama, render_tile";
  s4g::synth_bind::register_render(m);
}
