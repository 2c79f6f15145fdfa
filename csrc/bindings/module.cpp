// s4g_engine._core: the module definition. Each component registers its own functions from its own
// binding file (bindings contain no maths: they validate, release the GIL and call csrc/cpu/*).
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace s4g::bind {
void register_polar(py::module_& m);    // bind_polar.cpp   : polar_transform, inverse_polar
void register_search(py::module_& m);   // bind_search.cpp  : topk_similarity, positive_ranks
void register_info(py::module_& m);     // bind_info.cpp    : build_info
}  // namespace s4g::bind

PYBIND11_MODULE(_core, m) {
  m.doc() = "s4g compiled core (C++17, OpenMP): polar transform, exact top-k, rank metrics";
  s4g::bind::register_info(m);
  s4g::bind::register_polar(m);
  s4g::bind::register_search(m);
}
