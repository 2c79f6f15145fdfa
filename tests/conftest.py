"""Shared pytest fixtures: seeded RNG, CUDA device availability (GPU tests skip with a reason)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test (deterministic, different data per call site)."""
    return np.random.default_rng(20240611)


def cuda_skip_reason() -> str | None:
    """None when a CUDA device and s4g_engine._core_cuda are usable, else why not."""
    try:
        from s4g_engine import _core_cuda  # type: ignore[attr-defined]
    except ImportError as e:
        return f"s4g_engine._core_cuda not built ({e})"
    try:
        n = _core_cuda.device_count()
    except Exception as e:  # pragma: no cover - driver problems
        return f"CUDA runtime error: {e}"
    return None if n > 0 else "no CUDA device present"


@pytest.fixture
def cuda_device() -> int:
    """Skips the test when no CUDA GPU (or no CUDA build) is available; returns device 0."""
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    return 0
