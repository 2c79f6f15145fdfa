"""Batch construction for Sample4Geo (docs/METHOD.md §4): the batch builder, dynamic-similarity (DSS)
neighbour lists and batch-hardness statistics. Which table feeds which epoch is decided by
:class:`s4g_train.schedule.BatchSchedule`.

Torch-free on purpose (numpy + the compiled core only): the batch builder is a pure function of a neighbour
table and a ``numpy.random.Generator``, so every DDP rank builds the same batches without communicating and a
resumed run rebuilds identical ones.

Conventions
-----------
* A *sample id* ``i`` in ``[0, N)`` is one training pair (ground image ``i`` + its aerial tile).
* ``neighbours`` int64 ``(N, K)``: row ``i`` lists other sample ids, most similar first, ``-1`` padded.
* ``groups`` int64 ``(N,)``: samples sharing a group never share a batch (VIGOR: the positive tile).
* ``forbidden`` int64 ``(N, m)`` (``-1`` padded): ids that must never share a batch with sample ``i``
  (VIGOR: panoramas whose positive tile is a semi-positive of ``i``); the relation is made symmetric.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from s4g_engine.geo import haversine_m

log = logging.getLogger(__name__)

STRATEGIES = ("random", "gps", "dss", "gps+dss")


# ----------------------------------------------------------------------------------------------- validation
def _as_int_array(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D integer array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer ids (int64), got dtype {arr.dtype}; cast with .astype(np.int64)")
    return arr.astype(np.int64, copy=False)


def _check_ids(arr: np.ndarray, name: str, n: int) -> None:
    if arr.size and (arr.min() < -1 or arr.max() >= n):
        raise ValueError(f"{name} holds ids outside [-1, {n}) (min {arr.min()}, max {arr.max()}); "
                         f"ids index the {n} training samples and -1 marks padding")


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got "
                         f"{type(rng).__name__}")


def _dense_groups(groups: Any, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    g = _as_int_array(groups, "groups", 1)
    if g.shape[0] != n:
        raise ValueError(f"groups must have one entry per sample: expected shape ({n},), got {g.shape}")
    return np.unique(g, return_inverse=True)[1].astype(np.int64).reshape(n)


def _symmetric_forbidden(forbidden: Any, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """CSR (indptr (N+1,), indices) of the symmetric closure of ``forbidden`` without self-pairs."""
    if forbidden is None:
        return None
    f = _as_int_array(forbidden, "forbidden", 2)
    if f.shape[0] != n:
        raise ValueError(f"forbidden must have one row per sample: expected shape ({n}, m), got {f.shape}")
    _check_ids(f, "forbidden", n)
    rows = np.repeat(np.arange(n, dtype=np.int64), f.shape[1])
    cols = f.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    rows, cols = rows[keep], cols[keep]
    a = np.concatenate([rows, cols])
    b = np.concatenate([cols, rows])
    pairs = np.sort(a * n + b)
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if pairs.size else pairs
    src, dst = pairs // n, pairs % n
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst


def semi_positive_forbidden(positive: Any, semi_positives: Any) -> np.ndarray:
    """Forbidden table for VIGOR: for sample ``i``, every sample whose positive tile is a semi-positive of ``i``.

    ``positive`` (N,) reference ids, ``semi_positives`` (N, s) reference ids (-1 padded) → int64 (N, m), -1 padded.
    """
    pos = _as_int_array(positive, "positive", 1)
    semi = _as_int_array(semi_positives, "semi_positives", 2)
    if semi.shape[0] != pos.shape[0]:
        raise ValueError(f"semi_positives must have {pos.shape[0]} rows (one per sample), got {semi.shape}")
    n = pos.shape[0]
    order = np.argsort(pos, kind="stable")
    sorted_pos = pos[order]
    lo = np.searchsorted(sorted_pos, semi, side="left")
    hi = np.searchsorted(sorted_pos, semi, side="right")
    counts = np.where(semi >= 0, hi - lo, 0)
    width = int(counts.sum(axis=1).max()) if n and semi.shape[1] else 0
    out = np.full((n, width), -1, dtype=np.int64)
    fill = np.zeros(n, dtype=np.int64)
    for col in range(semi.shape[1]):  # s is 3 for VIGOR; the inner loop runs over the (few) members per tile
        c = counts[:, col]
        for j in range(int(c.max()) if n else 0):
            rows = np.nonzero(c > j)[0]
            out[rows, fill[rows]] = order[lo[rows, col] + j]
            fill[rows] += 1
    return out


# ------------------------------------------------------------------------------------------------- builder
def build_batches(neighbours: Any, batch_size: int, k: int, rng: np.random.Generator, *,
                  groups: Any = None, forbidden: Any = None,
                  return_anchors: bool = False) -> list[np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
    """One epoch of Sample4Geo batches (docs/METHOD.md §4).

    Shuffle all ids; take the next id not used this epoch as an anchor, then its neighbours: list positions
    ``0 … k/2−1`` (nearest) and ``k/2`` positions drawn at random from ``k/2 … K−1``; ids already used this
    epoch, or clashing with the batch (same group, forbidden pair), are skipped — as in the reference, the
    skipped ones are not replaced by further neighbours. A used neighbour whose *group* is still free is
    replaced by an unused member of that group (VIGOR: another panorama of the same tile). The stream is
    cut into batches of ``batch_size``; neighbours never spill into the next batch; the last partial batch
    is dropped. Unlike the reference (which stops after 1024 consecutive already-used draws) every unused
    id is consumed; anchors that clash with the current batch are retried at the start of later batches.

    Args:
        neighbours: int (N, K), ``-1`` padded neighbour lists (may be (N, 0) with ``k=0`` for random batches).
        batch_size: B ≥ 2, at most N.
        k: even number of neighbours per anchor, ``0 ≤ k ≤ K`` and ``k < B``.
        rng: the epoch's ``numpy.random.Generator`` (same state → same batches). Draws: one permutation of
            the N ids, then, per anchor, one random order of the far positions ``k/2 … K−1`` (rows of
            ``argsort(rng.random((1024, K − k/2)))``, drawn in blocks of 1024).
        groups: optional int (N,).  forbidden: optional int (N, m), ``-1`` padded.
        return_anchors: also return, per batch, a bool (B,) mask of the anchors (diagnostics, tests).
    Returns:
        list of int64 arrays of shape (B,): sample ids; each anchor is followed by its neighbours.
    """
    nb = _as_int_array(neighbours, "neighbours", 2)
    n, big_k = nb.shape
    _check_ids(nb, "neighbours", n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training samples: no full batch can be built")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 or k % 2:
        raise ValueError(f"k must be an even int >= 0 (k/2 nearest + k/2 random neighbours), got {k!r}")
    if k > big_k:
        raise ValueError(f"k={k} exceeds the neighbour pool K={big_k} (neighbours has shape {nb.shape}); use k <= K")
    if k >= batch_size:
        raise ValueError(f"k={k} must be smaller than batch_size={batch_size} (the anchor needs a place too)")
    _check_rng(rng)
    grp = _dense_groups(groups, n)
    if grp is not None and n and int(grp.max()) + 1 < batch_size:
        raise ValueError(f"only {int(grp.max()) + 1} distinct groups but batch_size={batch_size}: every sample of a "
                         "batch needs its own group; use a smaller batch")
    sym = _symmetric_forbidden(forbidden, n)
    batches, anchors = _build(nb, int(batch_size), int(k), rng, grp, sym)
    return (batches, anchors) if return_anchors else batches


def random_batches(n: int, batch_size: int, rng: np.random.Generator, *, groups: Any = None,
                   forbidden: Any = None) -> list[np.ndarray]:
    """Plain shuffled batches ("random" strategy) that still respect ``groups`` and ``forbidden``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int (number of training samples), got {n!r}")
    if groups is None and forbidden is None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 2 <= batch_size <= n:
            raise ValueError(f"batch_size must be an int in [2, {n}], got {batch_size!r}")
        _check_rng(rng)
        perm = rng.permutation(n)
        return list(perm[: n // batch_size * batch_size].reshape(-1, batch_size))
    return build_batches(np.empty((n, 0), dtype=np.int64), batch_size, 0, rng, groups=groups,
                         forbidden=forbidden)  # type: ignore[return-value]


def _build(nb: np.ndarray, bsz: int, k: int, rng: np.random.Generator, grp: np.ndarray | None,
           sym: tuple[np.ndarray, np.ndarray] | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    b = _EpochBuilder(nb, bsz, k, rng, grp, sym)
    b.run()
    n, big_k = nb.shape
    leftover = len(b.cur) + sum(1 for a in b.deferred if not b.used[a])
    if leftover > max(2 * bsz, n // 100):
        log.warning("build_batches: %d of %d ids found no place this epoch (groups/forbidden constraints)",
                    leftover, n)
    log.debug("build_batches: N=%d B=%d k=%d K=%d -> %d batches, %d anchors, %d neighbours (%d substituted), "
              "%d ids left for the dropped partial batch", n, bsz, k, big_k, len(b.batches), b.stats["anchors"],
              b.stats["neighbours"], b.stats["substituted"], leftover)
    return b.batches, b.anchors


class _EpochBuilder:
    """The state of one :func:`build_batches` call.

    A hand-written loop: the builder is sequential by nature (each choice changes what is free), so it keeps
    per-id flags in bytearrays (fast scalar access) with NumPy views over the same memory for the per-anchor
    vectorised pre-filter of the k candidates. Random draws, in order: one permutation of the ids (here),
    then blocks of far-position orders (:meth:`_candidates`).
    """

    def __init__(self, nb: np.ndarray, bsz: int, k: int, rng: np.random.Generator, grp: np.ndarray | None,
                 sym: tuple[np.ndarray, np.ndarray] | None) -> None:
        n, big_k = nb.shape
        self.nb, self.bsz, self.k, self.rng, self.grp, self.sym = nb, bsz, k, rng, grp, sym
        self.half = k // 2
        self.far_w = big_k - self.half
        self.used = bytearray(n)
        self.used_np = np.frombuffer(self.used, dtype=np.uint8)
        self.perm = rng.permutation(n)
        if grp is not None:
            n_groups = int(grp.max()) + 1
            self.gib = bytearray(n_groups)  # group already in the current batch
            self.gib_np = np.frombuffer(self.gib, dtype=np.uint8)
            self.grp_l = grp.tolist()
            # members of each group in this epoch's random order, for "draw one not-yet-used member"
            self.members = self.perm[np.argsort(grp[self.perm], kind="stable")].tolist()
            gstart = np.zeros(n_groups + 1, dtype=np.int64)
            np.cumsum(np.bincount(grp, minlength=n_groups), out=gstart[1:])
            self.gptr = gstart[:-1].tolist()
            self.gend = gstart[1:].tolist()
            self.gfree = np.diff(gstart)  # unused members per group (NumPy: read by the vectorised pre-filter)
        if sym is not None:
            self.blocked = bytearray(n)
            self.blocked_np = np.frombuffer(self.blocked, dtype=np.uint8)
            self.s_ptr, self.s_idx = sym[0].tolist(), sym[1]
        self.batches: list[np.ndarray] = []
        self.anchors: list[np.ndarray] = []
        self.cur: list[int] = []
        self.cur_anchor: list[bool] = []
        self.keys = np.empty((0, self.far_w), dtype=np.int64)
        self.key_i = 0
        self.stats = {"anchors": 0, "neighbours": 0, "substituted": 0}
        self.deferred: deque[int] = deque()

    def add(self, c: int, is_anchor: bool) -> bool:
        """Put c in the batch; True when that completed (and flushed) the batch."""
        self.used[c] = 1
        cur = self.cur
        cur.append(c)
        self.cur_anchor.append(is_anchor)
        if self.grp is not None:
            g = self.grp_l[c]
            self.gib[g] = 1
            self.gfree[g] -= 1
        if self.sym is not None:
            lo, hi = self.s_ptr[c], self.s_ptr[c + 1]
            if hi > lo:
                self.blocked_np[self.s_idx[lo:hi]] = 1
        if len(cur) < self.bsz:
            return False
        self.batches.append(np.array(cur, dtype=np.int64))
        self.anchors.append(np.array(self.cur_anchor, dtype=bool))
        if self.grp is not None:  # clearing the whole flag array (a memset) is cheaper than per-id resets
            self.gib_np[:] = 0
        if self.sym is not None:
            self.blocked_np[:] = 0
        self.cur, self.cur_anchor = [], []
        return True

    def clashes(self, c: int) -> bool:
        return (self.grp is not None and self.gib[self.grp_l[c]] == 1) or \
            (self.sym is not None and self.blocked[c] == 1)

    def substitute(self, g: int) -> int:
        """An unused, not-blocked member of group g, or -1."""
        used, members = self.used, self.members
        p, end = self.gptr[g], self.gend[g]
        while p < end and used[members[p]]:
            p += 1
        self.gptr[g] = p
        while p < end:
            m = members[p]
            if not used[m] and not (self.sym is not None and self.blocked[m]):
                return m
            p += 1
        return -1

    def _candidates(self, a: int) -> np.ndarray:
        """Anchor a's candidate neighbours: list positions 0 … k/2−1 and k/2 random far ones, pre-filtered."""
        row, half = self.nb[a], self.half
        if self.far_w > 0 and half > 0:
            if self.key_i >= self.keys.shape[0]:  # random orders of the far positions, drawn in blocks
                self.keys = np.argsort(self.rng.random((1024, self.far_w)), axis=1)
                self.key_i = 0
            far = row[half:][self.keys[self.key_i]]
            self.key_i += 1
            cand = np.concatenate([row[:half], far[far >= 0][:half]])
        else:
            cand = row[:half]
        cand = cand[cand >= 0]
        if self.grp is None:  # pre-filter; take_anchor re-checks, since each addition changes what is free
            keep = self.used_np[cand] == 0
            if self.sym is not None:
                keep &= self.blocked_np[cand] == 0
        else:
            g = self.grp[cand]
            keep = (self.gib_np[g] == 0) & (self.gfree[g] > 0)
        return cand[keep]

    def take_anchor(self, a: int) -> None:
        self.stats["anchors"] += 1
        if self.add(a, True) or self.k == 0:
            return
        grp, sym, used = self.grp, self.sym, self.used
        for c in self._candidates(a).tolist():
            if grp is not None:
                g = self.grp_l[c]
                if self.gib[g] or self.gfree[g] == 0:
                    continue
                if used[c]:
                    c = self.substitute(g)
                    if c < 0:
                        continue
                    self.stats["substituted"] += 1
                elif sym is not None and self.blocked[c]:
                    continue
            elif used[c] or (sym is not None and self.blocked[c]):
                continue
            self.stats["neighbours"] += 1
            if self.add(c, False):
                return

    def retry_deferred(self) -> bool:
        """One pass over the anchors that clashed earlier; True if any was taken."""
        took = False
        deferred = self.deferred
        for _ in range(len(deferred)):
            a = deferred.popleft()
            if self.used[a]:
                continue
            if self.clashes(a):
                deferred.append(a)
                continue
            self.take_anchor(a)
            took = True
        return took

    def run(self) -> None:
        used, deferred = self.used, self.deferred
        for a in self.perm.tolist():
            if deferred and not self.cur:  # a fresh batch: the anchors that clashed before come first
                self.retry_deferred()
            if used[a]:
                continue
            if self.clashes(a):
                deferred.append(a)
            else:
                self.take_anchor(a)
        while deferred and self.retry_deferred():  # stream exhausted: go on while deferred anchors still fit
            pass


# ------------------------------------------------------------------------------------------------ DSS mining
def _core_topk():
    try:
        from s4g_engine import topk_similarity
    except ImportError as exc:  # the compiled core is part of the install; say how to get it
        raise ImportError("s4g_engine.topk_similarity (the compiled core) is not available; build it with "
                          "`pip install --no-build-isolation -Ceditable.rebuild=true -e .`") from exc
    return topk_similarity


def representative_samples(positive: Any, n_refs: int) -> np.ndarray:
    """For each reference, the lowest sample id whose positive it is (``-1`` if none) → int64 (M,)."""
    pos = _as_int_array(positive, "positive", 1)
    _check_ids(pos, "positive", n_refs)
    if pos.size and pos.min() < 0:
        raise ValueError("positive must hold a reference id >= 0 for every sample")
    rep = np.full(n_refs, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(rep, pos, np.arange(pos.shape[0], dtype=np.int64))
    rep[rep == np.iinfo(np.int64).max] = -1
    return rep


def dss_neighbours(ground_emb: np.ndarray, aerial_emb: np.ndarray, positive: Any, K: int, *,
                   semi_positives: Any = None, sample_of_reference: Any = None, chunk: int = 4096,
                   progress: bool = False) -> np.ndarray:
    """Dynamic-similarity neighbour lists (docs/METHOD.md §4): for each training ground image, the samples whose
    aerial tiles are most similar to it, own positive and semi-positives excluded.

    Ground→aerial top-K by exact inner product through the compiled core (``topk_similarity`` with
    ``exclude``): memory O(N·K + one block), never an N×M matrix.

    Args:
        ground_emb: float (N, d) L2-normalised ground embeddings of the N training samples (un-augmented).
        aerial_emb: float (M, d) embeddings of the M training references (float32 or float16).
        positive: int (N,) reference id of each sample's aerial tile.
        K: neighbours per sample.
        semi_positives: optional int (N, s) reference ids (-1 padded) never to be listed (VIGOR).
        sample_of_reference: optional int (M,) the sample id that stands for each reference (-1 = none);
            default: the lowest sample id with that positive (CVUSA: the bijection ``positive``; VIGOR: one
            panorama per tile — ``build_batches`` substitutes another unused panorama of the tile).
        chunk: queries per call into the core (granularity of the progress bar).
    Returns:
        int64 (N, K) sample ids, most similar first, -1 padded when fewer than K references qualify.
    """
    # torch CUDA tensors stay on the device: the core's CUDA top-k searches them and
    # only the (chunk, K) index lists come back (the same lists as the CPU core, docs/METHOD.md §13.4)
    on_device = hasattr(ground_emb, "__cuda_array_interface__")
    g = ground_emb if on_device else np.asarray(ground_emb)
    a = aerial_emb if on_device else np.asarray(aerial_emb)
    if g.ndim != 2 or a.ndim != 2 or g.shape[1] != a.shape[1]:
        raise ValueError(f"ground_emb (N, d) and aerial_emb (M, d) must be 2-D with the same d, got {g.shape} "
                         f"and {a.shape}")
    n, m = g.shape[0], a.shape[0]
    pos = _as_int_array(positive, "positive", 1)
    if pos.shape[0] != n:
        raise ValueError(f"positive must have one entry per ground embedding ({n}), got {pos.shape}")
    _check_ids(pos, "positive", m)
    if n and pos.min() < 0:
        raise ValueError("positive must hold a reference id >= 0 for every sample")
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K must be a positive int, got {K!r}")
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    rep = representative_samples(pos, m) if sample_of_reference is None else \
        _as_int_array(sample_of_reference, "sample_of_reference", 1)
    if rep.shape[0] != m:
        raise ValueError(f"sample_of_reference must have one entry per reference ({m}), got {rep.shape}")
    _check_ids(rep, "sample_of_reference", n)
    exclude = pos[:, None]
    if semi_positives is not None:
        semi = _as_int_array(semi_positives, "semi_positives", 2)
        if semi.shape[0] != n:
            raise ValueError(f"semi_positives must have {n} rows, got {semi.shape}")
        _check_ids(semi, "semi_positives", m)
        exclude = np.concatenate([exclude, semi], axis=1)
    # Search only the references that stand for a sample; map exclude ids into that sub-gallery.
    has = rep >= 0
    if has.all():
        refs, ref_ids = a, None
    else:
        ref_ids = np.nonzero(has)[0]
        refs = a[ref_ids]
        sub = np.full(m + 1, -1, dtype=np.int64)  # index m holds -1 for padded entries
        sub[ref_ids] = np.arange(ref_ids.size, dtype=np.int64)
        exclude = sub[np.where(exclude >= 0, exclude, m)]
    topk = _core_topk()
    out = np.empty((n, K), dtype=np.int64)
    starts = range(0, n, chunk)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="DSS top-k", unit="chunk")
    for s in starts:
        _, idx = topk(g[s:s + chunk], refs, K, exclude=np.ascontiguousarray(exclude[s:s + chunk]))
        idx = np.asarray(idx.cpu() if on_device else idx, dtype=np.int64)
        if ref_ids is not None:
            idx = np.where(idx >= 0, ref_ids[np.maximum(idx, 0)], -1)
        out[s:s + chunk] = np.where(idx >= 0, rep[np.maximum(idx, 0)], -1)
    return out


# ------------------------------------------------------------------------------------------------- hardness
def batch_hardness(batches: Sequence[np.ndarray], ground_emb: np.ndarray | None = None,
                   aerial_emb: np.ndarray | None = None, gps: np.ndarray | None = None) -> dict[str, float]:
    """How hard an epoch's batches are, for logging the effect of sampling.

    Args:
        batches: equal-length int arrays of sample ids.
        ground_emb, aerial_emb: optional (N, d) L2-normalised embeddings *per sample* (row i = sample i's
            ground / aerial view; for VIGOR pass ``aerial[positive]``).
        gps: optional (N, 2) latitude/longitude in degrees per sample (NaN rows are ignored).
    Returns:
        ``hardness_sim``: mean over samples of the highest ground→aerial cosine similarity to another pair
        of its batch (the hardest in-batch negative); ``hardness_sim_all``: mean over all in-batch negative
        pairs; ``hardness_gps_m``: mean distance in metres to the nearest other sample of the batch.
        Keys whose inputs were not given are absent; NaN when there are no batches.
    """
    out: dict[str, float] = {}
    if len(batches) == 0:
        ids = np.empty((0, 2), dtype=np.int64)
    else:
        ids = np.stack([np.asarray(b, dtype=np.int64) for b in batches])
    nbat, bsz = ids.shape
    per = max(1, (1 << 21) // max(1, bsz * bsz))
    if ground_emb is not None or aerial_emb is not None:
        if ground_emb is None or aerial_emb is None:
            raise ValueError("pass both ground_emb and aerial_emb (per-sample rows) or neither")
        g, a = np.asarray(ground_emb, dtype=np.float32), np.asarray(aerial_emb, dtype=np.float32)
        if g.shape != a.shape or g.ndim != 2:
            raise ValueError(f"ground_emb and aerial_emb must both be (N, d) per sample, got {g.shape}, {a.shape}")
        hard, allneg, cnt = 0.0, 0.0, 0
        eye = np.eye(bsz, dtype=bool)
        for s in range(0, nbat, per):
            sim = np.matmul(g[ids[s:s + per]], a[ids[s:s + per]].transpose(0, 2, 1)).astype(np.float64)
            allneg += float(np.where(eye, 0.0, sim).sum())
            hard += float(np.where(eye, -np.inf, sim).max(axis=2).sum())
            cnt += sim.shape[0] * bsz
        out["hardness_sim"] = hard / cnt if cnt else float("nan")
        out["hardness_sim_all"] = allneg / (cnt * (bsz - 1)) if cnt else float("nan")
    if gps is not None:
        ll = np.asarray(gps, dtype=np.float64)
        if ll.ndim != 2 or ll.shape[1] != 2:
            raise ValueError(f"gps must be (N, 2) latitude/longitude in degrees, got {ll.shape}")
        tot, cnt = 0.0, 0
        eye = np.eye(bsz, dtype=bool)
        for s in range(0, nbat, per):
            p = ll[ids[s:s + per]]
            d = haversine_m(p[:, :, None, 0], p[:, :, None, 1], p[:, None, :, 0], p[:, None, :, 1])
            nearest = np.where(eye | np.isnan(d), np.inf, d).min(axis=2)
            ok = np.isfinite(nearest)
            tot += float(nearest[ok].sum())
            cnt += int(ok.sum())
        out["hardness_gps_m"] = tot / cnt if cnt else float("nan")
    return out
