"""Shared pytest fixtures: seeded RNG, CUDA device availability (GPU tests skip with a reason).

Layout of the test tree:

- ``tests/test_*.py`` hold the tests. A test module never imports another test module
  (``tests/test_architecture.py`` checks it); what two modules share lives in one of the two places below.
- ``tests/conftest.py`` (this file): the fixtures every module may use by name, without an import.
  Fixtures that one module alone needs stay in that module.
- ``tests/helpers/``: plain functions and constants, imported explicitly (``from helpers.layouts import
  make_cvusa``), one module per job:

  - ``layouts``: tiny datasets in the exact on-disk layouts (CVUSA, CVACT, VIGOR, University-1652);
  - ``training``: tiny ``s4g-train`` runs (argument lists, a tiny CVUSA) and comparison of their states;
  - ``torch_bundle``: a real ``s4g-export`` bundle of a tiny torch model (needs torch, onnx, onnxruntime);
  - ``onnx_bundle``: a tiny bundle built with ``onnx`` alone (no torch);
  - ``gallery``: small tile galleries and query photos; ``server``: a real ``s4g-serve`` shared by a run;
  - ``hostile_cases`` / ``hostile_cases_data`` / ``hostile_cases_more``: the hostile-input catalogue run by
    test_hostile_inputs; ``fuzzing``: the settings, file-system watcher and property of the fuzzers;
  - ``ddp_worker``: the DDP worker script that test_ddp launches with torchrun (and imports).

Assertions inside ``helpers`` are rewritten by pytest like those in test modules (detailed failure messages).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.register_assert_rewrite("helpers")


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
