"""A validation split carved from the training data (``data.val_from_train``), for checkpoint selection that
never looks at the test split.

Whole reference tiles are held out, not single pairs: every training query whose positive is a held-out tile
goes to the validation split with it, so no validation tile is ever a training positive (VIGOR and
University-1652 share one tile between several queries). Tiles are drawn in a random order fixed by the seed
until at least ``n`` queries are held out. Semi-positive indices (VIGOR) are renumbered into each part; those
pointing at a tile of the other part become −1 ("missing", as the readers mark it).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from s4g_engine.errors import InputError

log = logging.getLogger(__name__)

VAL_SPLIT_NAME = "val-from-train"
_PER_QUERY = ("queries", "query_gps", "positive", "semi_positives", "offsets", "query_classes")
_PER_REFERENCE = ("references", "reference_gps", "reference_classes", "reference_utm")


def carve_validation(split: Any, n: int, seed: int) -> tuple[Any, Any]:
    """``(training part, validation part)`` of a :class:`~s4g_engine.datasets.CrossViewSplit`.

    The validation part holds at least ``n`` queries (more when the last tile drawn has several) and is a
    function of the split and ``seed`` only.
    """
    q = len(split.queries)
    if n < 1:
        raise InputError(f"data.val_from_train={n}: expected ≥ 1 pairs to hold out")
    if n >= q:
        raise InputError(f"data.val_from_train={n} would hold out all {q} training pairs; expected fewer (a "
                         f"tenth, {max(1, q // 10)}, is usual)")
    order = np.random.default_rng([int(seed), 11]).permutation(len(split.references))
    counts = np.bincount(split.positive, minlength=len(split.references))
    taken = np.cumsum(counts[order])
    n_tiles = int(np.searchsorted(taken, n)) + 1  # the first prefix of tiles with ≥ n queries
    held = np.zeros(len(split.references), bool)
    held[order[:n_tiles]] = True
    val_q = held[split.positive]
    if val_q.all():
        raise InputError(f"data.val_from_train={n}: holding out whole tiles would leave no training pair; lower it")
    train = _subset(split, ~val_q, ~held, split.split)
    val = _subset(split, val_q, held, VAL_SPLIT_NAME)
    log.info("validation split: %d pairs (%d tiles) held out of %d training pairs (seed %d)", int(val_q.sum()),
             n_tiles, q, seed)
    return train, val


def _subset(split: Any, q_mask: np.ndarray, r_mask: np.ndarray, name: str) -> Any:
    """The queries ``q_mask`` and references ``r_mask`` of ``split``, reference indices renumbered."""
    new_id = np.full(len(r_mask), -1, np.int64)
    new_id[r_mask] = np.arange(int(r_mask.sum()))
    q_idx, r_idx = np.flatnonzero(q_mask), np.flatnonzero(r_mask)
    nq, nr = len(split.queries), len(split.references)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(split):
        v = getattr(split, f.name)
        if f.name in _PER_QUERY and v is not None and len(v) == nq:
            v = [v[i] for i in q_idx] if isinstance(v, list) else v[q_idx]
        elif f.name in _PER_REFERENCE and v is not None and len(v) == nr:
            v = [v[i] for i in r_idx] if isinstance(v, list) else v[r_idx]
        kw[f.name] = v
    kw["positive"] = new_id[kw["positive"]]
    semi = kw["semi_positives"]
    if semi.size:
        kw["semi_positives"] = np.where(semi >= 0, new_id[np.maximum(semi, 0)], -1)
    kw["split"] = name
    return type(split)(**kw)
