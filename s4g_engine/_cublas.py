"""Find cuBLAS for the GPU search (``s4g_engine._core_cuda`` opens it at run time, csrc/cuda/cublas_dyn.cpp).

The core neither links nor requires cuBLAS: with it, the GPU search filters on tensor cores (cuBLAS GEMM)
and refines exactly; without it, the canonical CUDA kernels do everything (same results, slower). Where we
look, in order: ``S4G_CUBLAS`` (a path; ``0``/``off`` disables cuBLAS), the sonames the dynamic loader
already knows (e.g. loaded by torch, or on ``LD_LIBRARY_PATH``), the ``nvidia-cublas`` wheels
(``site-packages/nvidia/*/lib``, as pulled in by torch), and the CUDA toolkit (``CUDA_HOME``/``CUDA_PATH``,
``/usr/local/cuda*``). No torch import.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

SONAMES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so")
_DISABLED = ("0", "off", "no", "false", "none")
_done: dict[int, str] = {}


def candidates() -> list[str]:
    """Paths and sonames to try, best first (empty when disabled by ``S4G_CUBLAS``)."""
    env = os.environ.get("S4G_CUBLAS", "").strip()
    if env.lower() in _DISABLED:
        return []
    out = [env] if env else []
    out += list(SONAMES)
    for base in sys.path:
        for pattern in ("nvidia/*/lib/libcublas.so*", "nvidia/cublas/lib/libcublas.so*"):
            out += sorted(glob.glob(os.path.join(base, pattern)), reverse=True)
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")] \
        + sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for root in roots:
        if root:
            out += sorted(glob.glob(os.path.join(root, "lib64", "libcublas.so*")), reverse=True)
    seen: set[str] = set()
    return [c for c in out if not (c in seen or seen.add(c))]


def ensure(core_cuda: Any) -> str:
    """Load cuBLAS into the CUDA core once per process; returns its path, '' when unavailable (logged)."""
    key = id(core_cuda)
    if key not in _done:
        cands = candidates()
        path, error = core_cuda.cublas_load(cands) if cands else ("", "disabled by S4G_CUBLAS")
        if path:
            log.debug("GPU search filters with cuBLAS from %s", path)
        else:
            log.info("cuBLAS not found (%s): the GPU search uses the canonical CUDA kernels (exact, slower); "
                     "pip install nvidia-cublas or set S4G_CUBLAS=/path/to/libcublas.so", error.strip("; "))
        _done[key] = path
    return _done[key]
