// Placeholder: filled in by the component that owns it.
#include <pybind11/pybind11.h>
namespace py = pybind11;
namespace s4g::bind {
void register_render(py::module_& m) { (void)m; }
}  // namespace s4g::bind
