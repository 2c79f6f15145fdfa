// Binding: build_info (compiler, OpenMP, SIMD, BLAS, CUDA build flags). The façade adds CUDA devices.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "s4g/cpu_gemm.h"

namespace py = pybind11;

#ifndef S4G_COMPILER
#define S4G_COMPILER "unknown"
#endif
#ifndef S4G_CUDA_BUILT
#define S4G_CUDA_BUILT 0
#endif
#ifndef S4G_CUDA_ARCHS
#define S4G_CUDA_ARCHS ""
#endif

namespace s4g::bind {

namespace {
py::dict build_info() {
  py::dict d;
  d["compiler"] = S4G_COMPILER;
#if defined(_OPENMP)
  d["openmp"] = py::dict(py::arg("version") = _OPENMP, py::arg("threads") = omp_get_max_threads(),
                         py::arg("procs") = omp_get_num_procs());
#else
  d["openmp"] = py::none();
#endif
  std::vector<std::string> compiled;
  if (cpu::filter_avx512bf16()) compiled.push_back("avx512bf16");
  if (cpu::filter_avx512()) compiled.push_back("avx512");
  if (cpu::filter_avx2()) compiled.push_back("avx2");
  compiled.push_back("generic");
  const cpu::Filter& f = cpu::active_filter();
  d["simd"] = py::dict(py::arg("active") = std::string(cpu::active_simd_level()),
                       py::arg("compiled") = compiled,
                       py::arg("available") = std::string(cpu::available_simd_levels()),
                       py::arg("filter") = std::string(f.bf16 ? "bf16 (vdpbf16ps)" : "float32"));
  // No BLAS: the search filters are our own packed kernels (see csrc/cpu/search.cpp for why).
  d["blas"] = py::none();
  std::vector<int> archs;
  std::string a = S4G_CUDA_ARCHS;
  size_t pos = 0;
  while (pos < a.size()) {
    size_t e = a.find(',', pos);
    if (e == std::string::npos) e = a.size();
    if (e > pos) archs.push_back(std::stoi(a.substr(pos, e - pos)));
    pos = e + 1;
  }
  d["cuda"] = py::dict(py::arg("compiled") = bool(S4G_CUDA_BUILT), py::arg("archs") = archs);
  return d;
}
}  // namespace

void register_info(py::module_& m) {
  m.def("build_info", &build_info, "Build facts of the compiled core. Use s4g_engine.build_info().");
}

}  // namespace s4g::bind
