// s4g_engine._core_cuda: bindings of the CUDA kernels (no maths, no CUDA headers: see s4g/cuda_api.h).
// Inputs are raw device pointers taken from __cuda_array_interface__ by s4g_engine/kernels.py; outputs
// are DeviceArray objects that own their memory and expose __cuda_array_interface__ (v3), so CuPy
// (cupy.asarray) and torch (torch.as_tensor) wrap them without a copy and keep them alive.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "s4g/cuda_api.h"

namespace py = pybind11;

#ifndef S4G_CUDA_ARCHS
#define S4G_CUDA_ARCHS ""
#endif

namespace {

struct DeviceArray {
  void* ptr = nullptr;
  int device = 0;
  std::vector<int64_t> shape;
  std::string typestr;
  int64_t itemsize = 0;

  DeviceArray(std::vector<int64_t> s, std::string ts, int64_t item, int dev)
      : device(dev), shape(std::move(s)), typestr(std::move(ts)), itemsize(item) {
    ptr = s4g::cuda::alloc(nbytes(), dev);
  }
  ~DeviceArray() { s4g::cuda::release(ptr, device); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  int64_t size() const {
    int64_t n = 1;
    for (auto v : shape) n *= v;
    return n;
  }
  int64_t nbytes() const { return size() * itemsize; }
};

using DA = std::shared_ptr<DeviceArray>;

py::dict cai(const DeviceArray& a) {
  py::tuple shape(a.shape.size());
  for (size_t i = 0; i < a.shape.size(); ++i) shape[i] = a.shape[i];
  py::dict d;
  d["shape"] = shape;
  d["typestr"] = a.typestr;
  d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(a.ptr), false);
  d["version"] = 3;
  d["strides"] = py::none();
  d["stream"] = py::none();  // results are complete (the device was synchronised) before they are returned
  return d;
}

int enter(uintptr_t ptr) {
  const int dev = s4g::cuda::device_of(reinterpret_cast<const void*>(ptr));
  s4g::cuda::set_device(dev);
  return dev;
}

s4g::cuda::Search search(uintptr_t qp, int64_t nq, int64_t ldq, uintptr_t rp, bool half, int64_t n, int64_t ldr,
                         int64_t d) {
  return s4g::cuda::Search{reinterpret_cast<const float*>(qp), nq, ldq, reinterpret_cast<const void*>(rp), half, n, ldr, d};
}

using Ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

s4g::cuda::Mode parse_mode(const std::string& mode) {
  if (mode == "exact") return s4g::cuda::Mode::kExact;
  if (mode == "canonical") return s4g::cuda::Mode::kCanonical;
  if (mode == "filter") return s4g::cuda::Mode::kFilterOnly;
  throw std::invalid_argument("mode: expected 'exact', 'canonical' or 'filter', got '" + mode + "'");
}

}  // namespace

PYBIND11_MODULE(_core_cuda, m) {
  m.doc() = "s4g compiled core, CUDA kernels (use the functions of s4g_engine, which dispatch here)";
  m.attr("archs") = S4G_CUDA_ARCHS;

  py::class_<DeviceArray, DA>(m, "DeviceArray", "Device memory owned by s4g; exposes __cuda_array_interface__.")
      .def_property_readonly("__cuda_array_interface__", &cai)
      .def_property_readonly("shape", [](const DeviceArray& a) { return py::tuple(py::cast(a.shape)); })
      .def_property_readonly("typestr", [](const DeviceArray& a) { return a.typestr; })
      .def_property_readonly("device", [](const DeviceArray& a) { return a.device; })
      .def("get", [](const DeviceArray& a) {
        py::array out(py::dtype(a.typestr), a.shape);
        s4g::cuda::copy_to_host(out.mutable_data(), a.ptr, a.nbytes());
        return out;
      }, "Copy to a NumPy array.");

  m.def("device_count", &s4g::cuda::device_count);
  m.def("devices", []() {
    py::list out;
    for (const auto& d : s4g::cuda::devices())
      out.append(py::dict(py::arg("name") = d.name, py::arg("compute_capability") = py::make_tuple(d.major, d.minor),
                          py::arg("memory") = d.memory));
    return out;
  });
  m.def("to_host", [](uintptr_t ptr, int64_t nbytes) {
    std::string buf(nbytes, '\0');
    if (nbytes) {
      enter(ptr);
      s4g::cuda::copy_to_host(buf.data(), reinterpret_cast<const void*>(ptr), nbytes);
    }
    return py::bytes(buf);
  });
  m.def("count_nonfinite", [](uintptr_t ptr, int64_t rows, int64_t cols, int64_t ld, bool half) {
    enter(ptr);
    py::gil_scoped_release r;
    return s4g::cuda::count_nonfinite(reinterpret_cast<const void*>(ptr), half, rows, cols, ld);
  });
  m.def("polar_transform", [](uintptr_t ptr, int64_t B, int64_t A, int64_t C, bool u8, int64_t H, int64_t W,
                              py::array_t<float, py::array::c_style | py::array::forcecast> scale,
                              py::array_t<float, py::array::c_style | py::array::forcecast> bias) {
    if (scale.size() != C || bias.size() != C) throw std::invalid_argument("scale/bias: expected C values");
    const int dev = B ? enter(ptr) : 0;
    auto out = std::make_shared<DeviceArray>(std::vector<int64_t>{B, H, W, C}, "<f4", 4, dev);
    const float* sc = scale.data();
    const float* bi = bias.data();
    {
      py::gil_scoped_release r;
      s4g::cuda::polar_transform(reinterpret_cast<const void*>(ptr), u8, B, A, C, H, W, sc, bi,
                                 static_cast<float*>(out->ptr));
    }
    return out;
  });
  m.def("inverse_polar", [](uintptr_t ptr, int64_t H, int64_t W, int64_t C, int64_t A, float fill) {
    const int dev = enter(ptr);
    auto out = std::make_shared<DeviceArray>(std::vector<int64_t>{A, A, C}, "<f4", 4, dev);
    py::gil_scoped_release r;
    s4g::cuda::inverse_polar(reinterpret_cast<const float*>(ptr), H, W, C, A, fill, static_cast<float*>(out->ptr));
    return out;
  });
  m.def("cublas_load", [](const std::vector<std::string>& candidates) {
    std::string error;
    std::string path;
    {
      py::gil_scoped_release r;
      path = s4g::cuda::cublas_load(candidates, &error);
    }
    return py::make_tuple(path, error);
  }, py::arg("candidates"),
        "Load cuBLAS from the first candidate that works → (path, error); '' when none (canonical kernels then).");
  m.def("cublas_path", &s4g::cuda::cublas_path, "The loaded cuBLAS library, or ''.");
  m.def("search_stats", []() {
    const s4g::cuda::Stats st = s4g::cuda::last_stats();
    py::dict d;
    d["path"] = st.path;
    d["queries"] = st.queries;
    d["certified"] = st.certified;
    d["retried"] = st.retried;
    d["fallback"] = st.fallback;
    d["band"] = st.band;
    d["band_overflow"] = st.band_overflow;
    return d;
  }, "Counters of the last search call (diagnostics, tests).");
  m.def("topk_similarity", [](uintptr_t qp, int64_t nq, int64_t ldq, uintptr_t rp, bool half, int64_t n, int64_t ldr,
                              int64_t d, int64_t k, std::optional<Ids> exclude, const std::string& mode) {
    if (k < 1) throw std::invalid_argument("k must be >= 1");
    const s4g::cuda::Mode md = parse_mode(mode);
    const int dev = nq ? enter(qp) : (n ? enter(rp) : 0);
    auto s = std::make_shared<DeviceArray>(std::vector<int64_t>{nq, k}, "<f4", 4, dev);
    auto i = std::make_shared<DeviceArray>(std::vector<int64_t>{nq, k}, "<i8", 8, dev);
    int64_t m = 0;
    const int64_t* ex = nullptr;
    if (exclude) {
      if (exclude->ndim() != 2 || exclude->shape(0) != nq) throw std::invalid_argument("exclude: expected (Q, m)");
      m = exclude->shape(1);
      ex = exclude->data();
    }
    {
      py::gil_scoped_release r;
      s4g::cuda::topk_similarity(search(qp, nq, ldq, rp, half, n, ldr, d), k, ex, m, static_cast<float*>(s->ptr),
                                 static_cast<int64_t*>(i->ptr), md);
    }
    return py::make_tuple(s, i);
  }, py::arg("qp"), py::arg("nq"), py::arg("ldq"), py::arg("rp"), py::arg("half"), py::arg("n"), py::arg("ldr"),
        py::arg("d"), py::arg("k"), py::arg("exclude"), py::arg("mode") = "exact");
  m.def("positive_ranks", [](uintptr_t qp, int64_t nq, int64_t ldq, uintptr_t rp, bool half, int64_t n, int64_t ldr,
                             int64_t d, Ids positive, std::optional<Ids> ignore, const std::string& mode) {
    const s4g::cuda::Mode md = parse_mode(mode);
    if (positive.ndim() != 1 || positive.shape(0) != nq) throw std::invalid_argument("positive: expected (Q,)");
    for (int64_t q = 0; q < nq; ++q)
      if (positive.data()[q] < 0 || positive.data()[q] >= n) throw std::invalid_argument("positive: ids must lie in [0, N)");
    const int dev = nq ? enter(qp) : 0;
    auto out = std::make_shared<DeviceArray>(std::vector<int64_t>{nq}, "<i8", 8, dev);
    int64_t m = 0;
    const int64_t* ig = nullptr;
    if (ignore) {
      if (ignore->ndim() != 2 || ignore->shape(0) != nq) throw std::invalid_argument("ignore: expected (Q, m)");
      m = ignore->shape(1);
      ig = ignore->data();
    }
    const int64_t* pos = positive.data();
    {
      py::gil_scoped_release r;
      s4g::cuda::positive_ranks(search(qp, nq, ldq, rp, half, n, ldr, d), pos, ig, m, static_cast<int64_t*>(out->ptr), md);
    }
    return out;
  }, py::arg("qp"), py::arg("nq"), py::arg("ldq"), py::arg("rp"), py::arg("half"), py::arg("n"), py::arg("ldr"),
        py::arg("d"), py::arg("positive"), py::arg("ignore"), py::arg("mode") = "exact");
}
