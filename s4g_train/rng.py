"""Seeding and capture/restore of the process-wide random generators (Python, NumPy's global, torch, CUDA),
in a form ``torch.load(weights_only=True)`` reads back: exact resume needs every generator where it was.

The batch schedule's own generator is not here: :class:`s4g_train.schedule.BatchSchedule` keeps it in its
state.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states (strings, numbers and tensors only)."""
    np_state = np.random.get_state()
    st: dict[str, Any] = {
        "python": json.dumps(random.getstate()),
        "numpy_global": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                         int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def restore_rng_state(st: dict[str, Any]) -> None:
    """Put the global generators back where :func:`capture_rng_state` found them."""
    py = json.loads(st["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy_global"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
