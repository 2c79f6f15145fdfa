"""Type stub of the compiled CPU core ``s4g_engine._core`` (pybind11, OpenMP; every kernel releases the GIL).

These are the raw bindings: they check their arguments only briefly. Use the validating façade
(``s4g_engine.polar_transform`` etc., see ``s4g_engine/kernels.py``) unless you know the inputs are right.
Conventions: SAFA polar layout (docs/METHOD.md §9); canonical float32 scores (fused multiply-add, depth
chunks of 256) identical on every SIMD level and on the GPU — computed by filter (fastest product) →
proven margin → canonical refinement (csrc/cpu/search.cpp); ranking = score desc, index asc; 64-bit
indexing. Underscore functions (``_topk_similarity``, ``_positive_ranks``, ``_search_stats``,
``_set_search_tuning``) are test-only hooks, not part of the API.
The stub is complete (tests/test_stubs.py checks it against the built module). The synthetic-world renderer
is not part of this production core: it is ``s4g_synth._render``.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

def build_info() -> dict[str, Any]:
    """{"compiler": str, "openmp": {"version", "threads", "procs"} | None,
    "simd": {"active": str, "compiled": list[str], "available": str, "filter": str}, "blas": None,
    "cuda": {"compiled": bool, "archs": list[int]}}"""

def polar_transform(
    aerial: npt.NDArray[np.uint8] | npt.NDArray[np.float32],
    height: int,
    width: int,
    scale: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """aerial (B, A, A, C) C-contiguous → (B, height, width, C); out = bilinear sample · scale[c] + bias[c]."""

def inverse_polar(polar: npt.NDArray[np.float32], size: int, fill: float) -> npt.NDArray[np.float32]:
    """polar (Hp, Wp, C) → (size, size, C); `fill` outside r < (size/2)(Hp−1)/Hp."""

def polar_cache_size() -> int:
    """Number of cached (A, H, W) sampling maps."""

def topk_similarity(
    queries: npt.NDArray[np.float32],
    refs: npt.NDArray[np.float32] | npt.NDArray[np.float16],
    k: int,
    exclude: npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """queries (Q, d), refs (N, d) with contiguous rows (any row stride), exclude (Q, m) −1 padded →
    (scores (Q, k), indices (Q, k)); k > N pads with (−inf, −1)."""

def positive_ranks(
    queries: npt.NDArray[np.float32],
    refs: npt.NDArray[np.float32] | npt.NDArray[np.float16],
    positive: npt.NDArray[np.int64],
    ignore: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int64]:
    """(Q,) counts of references scoring strictly above the positive, ignored ids (Q, m) not counted."""

def count_nonfinite(x: npt.NDArray[np.float32] | npt.NDArray[np.float16]) -> int:
    """Number of NaN/Inf values (OpenMP)."""

def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None:
    """OpenMP threads of the kernels; n <= 0 restores the default (OMP_NUM_THREADS or all cores)."""

def simd_level() -> str:
    """SIMD level of the search kernels in use: "avx512bf16" | "avx512" | "avx2" | "generic"."""

def available_simd_levels() -> str:
    """Comma-separated levels compiled in and supported by this CPU, best first."""

def set_simd_level(level: str) -> None:
    """Force "avx512bf16" | "avx512" | "avx2" | "generic" | "auto" (tests, benchmarks; the environment
    variable S4G_SIMD does the same at start-up); ValueError if unavailable."""
