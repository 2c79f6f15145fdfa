// Bindings: topk_similarity, positive_ranks and helpers (no maths: checks, GIL release, csrc/cpu/search*.cpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "s4g/bind_util.h"
#include "s4g/cpu_gemm.h"
#include "s4g/kernels.h"
#include "s4g/search_cpu.h"

namespace py = pybind11;

namespace s4g::bind {

namespace {

using IdArray = py::array_t<int64_t, py::array::c_style>;

cpu::SearchInput search_input(const py::array& queries, const py::array& refs) {
  require(is_dtype<float>(queries), "queries: expected float32");
  require(is_dtype<float>(refs) || is_float16(refs), "refs: expected float32 or float16");
  cpu::SearchInput in;
  in.ldq = row_stride(queries, "queries");
  in.ldr = row_stride(refs, "refs");
  in.q = static_cast<const float*>(queries.data());
  in.nq = queries.shape(0);
  in.r = refs.data();
  in.r_half = is_float16(refs);
  in.n = refs.shape(0);
  in.d = queries.shape(1);
  require(refs.shape(1) == in.d, "refs: dimension " + std::to_string(refs.shape(1)) + " != queries' " +
                                     std::to_string(in.d));
  require(in.d > 0, "queries/refs: the embedding dimension must be > 0");
  return in;
}

int64_t id_columns(const std::optional<IdArray>& ids, int64_t nq, const char* name) {
  if (!ids) return 0;
  require(ids->ndim() == 2 && ids->shape(0) == nq,
          std::string(name) + ": expected shape (Q, m) with Q = " + std::to_string(nq) + ", got " + shape_str(*ids));
  return ids->shape(1);
}

cpu::SearchMode parse_mode(const std::string& mode) {
  if (mode == "exact") return cpu::SearchMode::kExact;
  if (mode == "canonical") return cpu::SearchMode::kCanonical;
  if (mode == "filter") return cpu::SearchMode::kFilterOnly;
  throw std::invalid_argument("mode: expected 'exact', 'canonical' or 'filter', got '" + mode + "'");
}

py::tuple topk_mode(const py::array& queries, const py::array& refs, int64_t k, const std::optional<IdArray>& exclude,
                    cpu::SearchMode mode) {
  const cpu::SearchInput in = search_input(queries, refs);
  require(k >= 1, "k must be >= 1");
  const int64_t m = id_columns(exclude, in.nq, "exclude");
  py::array_t<float> scores({in.nq, k});
  py::array_t<int64_t> idx({in.nq, k});
  const int64_t* ex = m > 0 ? exclude->data() : nullptr;
  float* s = scores.mutable_data();
  int64_t* i = idx.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::topk_similarity(in, k, ex, m, s, i, mode);
  }
  return py::make_tuple(scores, idx);
}

py::array_t<int64_t> ranks_mode(const py::array& queries, const py::array& refs, const IdArray& positive,
                                const std::optional<IdArray>& ignore, cpu::SearchMode mode) {
  const cpu::SearchInput in = search_input(queries, refs);
  require(positive.ndim() == 1 && positive.shape(0) == in.nq,
          "positive: expected shape (Q,) with Q = " + std::to_string(in.nq) + ", got " + shape_str(positive));
  const int64_t* pos = positive.data();
  for (int64_t q = 0; q < in.nq; ++q)
    require(pos[q] >= 0 && pos[q] < in.n, "positive: ids must lie in [0, N)");
  const int64_t m = id_columns(ignore, in.nq, "ignore");
  const int64_t* ig = m > 0 ? ignore->data() : nullptr;
  py::array_t<int64_t> out(in.nq);
  int64_t* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::positive_ranks(in, pos, ig, m, o, mode);
  }
  return out;
}

// Test-only: the scalar canonical score (dot_canonical) of the pairs (qi[t], ri[t]).
py::array_t<float> pair_scores(const py::array& queries, const py::array& refs, const IdArray& qi, const IdArray& ri) {
  const cpu::SearchInput in = search_input(queries, refs);
  require(qi.ndim() == 1 && ri.ndim() == 1 && qi.shape(0) == ri.shape(0), "qi, ri: expected two (P,) id arrays");
  const int64_t P = qi.shape(0);
  for (int64_t t = 0; t < P; ++t)
    require(qi.data()[t] >= 0 && qi.data()[t] < in.nq && ri.data()[t] >= 0 && ri.data()[t] < in.n, "ids out of range");
  py::array_t<float> out(P);
  for (int64_t t = 0; t < P; ++t) out.mutable_data()[t] = cpu::detail::pair_score(in, qi.data()[t], ri.data()[t]);
  return out;
}

py::dict search_stats() {
  const cpu::SearchStats st = cpu::last_search_stats();
  py::dict d;
  d["path"] = std::string(st.path);
  d["queries"] = st.queries;
  d["certified"] = st.certified;
  d["retried"] = st.retried;
  d["fallback"] = st.fallback;
  d["rescored"] = st.rescored;
  d["band"] = st.band;
  d["band2"] = st.band2;
  return d;
}

int64_t count_nonfinite(const py::array& x) {
  const bool half = is_float16(x);
  require(is_dtype<float>(x) || half, "count_nonfinite: expected float32 or float16");
  py::array a = x;
  if (x.ndim() != 2) a = py::array(x.attr("reshape")(py::make_tuple(-1, x.ndim() ? x.shape(x.ndim() - 1) : 1)));
  const int64_t ld = row_stride(a, "x");
  const int64_t rows = a.shape(0), cols = a.shape(1);
  const void* p = a.data();
  py::gil_scoped_release release;
  return half ? cpu::count_nonfinite_f16(static_cast<const uint16_t*>(p), rows, cols, ld)
              : cpu::count_nonfinite_f32(static_cast<const float*>(p), rows, cols, ld);
}

}  // namespace

void register_search(py::module_& m) {
  m.def("topk_similarity",
        [](const py::array& q, const py::array& r, int64_t k, const std::optional<IdArray>& exclude) {
          return topk_mode(q, r, k, exclude, cpu::SearchMode::kExact);
        },
        py::arg("queries"), py::arg("refs"), py::arg("k"), py::arg("exclude") = py::none(),
        "queries (Q, d) float32, refs (N, d) float32|float16 (rows contiguous) → (scores (Q, k) float32, "
        "indices (Q, k) int64). Use s4g_engine.topk_similarity.");
  m.def("positive_ranks",
        [](const py::array& q, const py::array& r, const IdArray& positive, const std::optional<IdArray>& ignore) {
          return ranks_mode(q, r, positive, ignore, cpu::SearchMode::kExact);
        },
        py::arg("queries"), py::arg("refs"), py::arg("positive"), py::arg("ignore") = py::none(),
        "→ int64 (Q,). Use s4g_engine.positive_ranks.");
  // Test-only entry points (underscore: not part of the API): the canonical reference, the raw filter
  // (NOT exact) and the counters of the last call.
  m.def("_topk_similarity",
        [](const py::array& q, const py::array& r, int64_t k, const std::optional<IdArray>& exclude, const std::string& mode) {
          return topk_mode(q, r, k, exclude, parse_mode(mode));
        },
        py::arg("queries"), py::arg("refs"), py::arg("k"), py::arg("exclude") = py::none(), py::arg("mode") = "exact");
  m.def("_positive_ranks",
        [](const py::array& q, const py::array& r, const IdArray& positive, const std::optional<IdArray>& ignore,
           const std::string& mode) { return ranks_mode(q, r, positive, ignore, parse_mode(mode)); },
        py::arg("queries"), py::arg("refs"), py::arg("positive"), py::arg("ignore") = py::none(), py::arg("mode") = "exact");
  m.def("_search_stats", &search_stats, "Counters of the last search call (diagnostics).");
  m.def("_pair_scores", &pair_scores, py::arg("queries"), py::arg("refs"), py::arg("qi"), py::arg("ri"),
        "Scalar canonical scores of chosen pairs (the reference the blocked kernels must match bit for bit).");
  m.def("_set_search_tuning", &cpu::set_search_tuning, py::arg("small_batch") = -1, py::arg("canonical_ratio") = -1,
        "Tests: force the small-batch / canonical paths (negative = keep).");
  m.def("count_nonfinite", &count_nonfinite, py::arg("x"), "Number of NaN/Inf values (float32/float16 array).");
  m.def("get_num_threads", &cpu::num_threads, "OpenMP threads used by the kernels.");
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("n"),
        "Set the OpenMP threads used by the kernels (n <= 0: default).");
  m.def("simd_level", []() { return std::string(cpu::active_simd_level()); }, "SIMD level of the search kernels in use.");
  m.def("available_simd_levels", []() { return std::string(cpu::available_simd_levels()); });
  m.def("set_simd_level", [](const std::string& s) { cpu::set_simd_level(s.c_str()); }, py::arg("level"),
        "Force the search kernels: 'avx512bf16' | 'avx512' | 'avx2' | 'generic' | 'auto' (tests, benchmarks; "
        "the environment variable S4G_SIMD does the same at start-up).");
}

}  // namespace s4g::bind
