"""s4g_engine: the torch-free inference engine of s4g (numpy, onnxruntime, faiss, the compiled core).

Kernels (the compiled core, see :mod:`s4g_engine.kernels`): :func:`polar_transform`, :func:`inverse_polar`,
:func:`topk_similarity`, :func:`positive_ranks`, :func:`build_info`. :class:`Localiser` and
:class:`LocaliseResult` load lazily (importing ``s4g_engine`` does not import onnxruntime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Re-exported (the redundant aliases mark them as public for linters and type checkers).
from s4g_engine.kernels import build_info as build_info
from s4g_engine.kernels import get_num_threads as get_num_threads
from s4g_engine.kernels import inverse_polar as inverse_polar
from s4g_engine.kernels import polar_transform as polar_transform
from s4g_engine.kernels import positive_ranks as positive_ranks
from s4g_engine.kernels import set_num_threads as set_num_threads
from s4g_engine.kernels import topk_similarity as topk_similarity

if TYPE_CHECKING:  # pragma: no cover
    from s4g_engine.localiser import Localiser, LocaliseResult

from s4g_engine import kernels as _kernels

__all__ = [*_kernels.__all__, "Localiser", "LocaliseResult"]

_LAZY = {"Localiser": "s4g_engine.localiser", "LocaliseResult": "s4g_engine.localiser"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 's4g_engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
