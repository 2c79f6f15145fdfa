// Small argument checks shared by the bindings (the façade s4g_engine/kernels.py gives the user-facing
// messages; these guard the C++ against misuse of the private _core functions). Header-only, no maths.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace s4g::bind {
namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

inline void require_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  require(a.ndim() == ndim, std::string(name) + ": expected " + std::to_string(ndim) + " dimensions, got shape " +
                                shape_str(a));
}

// Row stride (in elements) of a 2-D array whose rows are contiguous; throws otherwise.
inline int64_t row_stride(const py::array& a, const char* name) {
  const py::ssize_t item = a.itemsize();
  require(a.ndim() == 2, std::string(name) + ": expected a 2-D array, got shape " + shape_str(a));
  if (a.shape(0) == 0) return a.shape(1);
  require(a.shape(1) <= 1 || a.strides(1) == item,
          std::string(name) + ": rows must be contiguous (use np.ascontiguousarray)");
  require(a.strides(0) >= 0 && a.strides(0) % item == 0,
          std::string(name) + ": row stride must be a non-negative multiple of the item size");
  return a.shape(0) <= 1 ? a.shape(1) : a.strides(0) / item;
}

inline void require_c_contiguous(const py::array& a, const char* name) {
  require((a.flags() & py::array::c_style) != 0, std::string(name) + ": expected a C-contiguous array");
}

template <class T>
inline bool is_dtype(const py::array& a) {
  return a.dtype().is(py::dtype::of<T>());
}

inline bool is_float16(const py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 2; }

}  // namespace s4g::bind
