// Bindings: polar_transform, inverse_polar (no maths here: checks, GIL release, call csrc/cpu/polar.cpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "s4g/bind_util.h"
#include "s4g/kernels.h"

namespace py = pybind11;

namespace s4g::bind {

namespace {

py::array_t<float> polar_transform(const py::array& aerial, int64_t height, int64_t width,
                                   const py::array_t<float, py::array::c_style>& scale,
                                   const py::array_t<float, py::array::c_style>& bias) {
  require_ndim(aerial, 4, "aerial");
  require_c_contiguous(aerial, "aerial");
  const int64_t B = aerial.shape(0), A = aerial.shape(1), C = aerial.shape(3);
  require(aerial.shape(2) == A, "aerial: expected square tiles (B, A, A, C), got " + shape_str(aerial));
  require(A * A < (int64_t(1) << 31), "aerial: tile side must be < 46341 pixels");
  require(height > 0 && width > 0, "height and width must be positive");
  require(scale.ndim() == 1 && scale.shape(0) == C && bias.ndim() == 1 && bias.shape(0) == C,
          "scale/bias: expected shape (C,) matching the channel count");
  const bool u8 = is_dtype<uint8_t>(aerial);
  require(u8 || is_dtype<float>(aerial), "aerial: expected uint8 or float32");
  py::array_t<float> out({B, height, width, C});
  const float* sc = scale.data();
  const float* bi = bias.data();
  float* o = out.mutable_data();
  const void* src = aerial.data();
  {
    py::gil_scoped_release release;
    if (u8) cpu::polar_transform_u8(static_cast<const uint8_t*>(src), B, A, C, height, width, sc, bi, o);
    else cpu::polar_transform_f32(static_cast<const float*>(src), B, A, C, height, width, sc, bi, o);
  }
  return out;
}

py::array_t<float> inverse_polar(const py::array_t<float, py::array::c_style>& polar, int64_t size, float fill) {
  require_ndim(polar, 3, "polar");
  require(size > 0, "size must be positive");
  const int64_t H = polar.shape(0), W = polar.shape(1), C = polar.shape(2);
  require(H > 0 && W > 0, "polar: expected a non-empty (Hp, Wp, C) map, got " + shape_str(polar));
  py::array_t<float> out({size, size, C});
  const float* src = polar.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::inverse_polar(src, H, W, C, size, fill, o);
  }
  return out;
}

}  // namespace

void register_polar(py::module_& m) {
  m.def("polar_transform", &polar_transform, py::arg("aerial"), py::arg("height"), py::arg("width"),
        py::arg("scale"), py::arg("bias"),
        "aerial (B, A, A, C) uint8|float32 C-contiguous → (B, height, width, C) float32; "
        "out = bilinear sample · scale[c] + bias[c]. Use s4g_engine.polar_transform.");
  m.def("inverse_polar", &inverse_polar, py::arg("polar"), py::arg("size"), py::arg("fill"),
        "polar (Hp, Wp, C) float32 → (size, size, C) float32. Use s4g_engine.inverse_polar.");
  m.def("polar_cache_size", &cpu::polar_cache_size, "Number of cached polar sampling maps.");
}

}  // namespace s4g::bind
