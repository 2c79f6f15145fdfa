"""Tiles embedded about several centres, for cameras that are not at the tile centre (docs/METHOD.md §9.1).

In the VIGOR layout a panorama lies anywhere in the central half of its positive tile (up to a quarter of the
tile side from the centre), so the polar transform about the tile centre no longer lines up with the camera.
With ``centres = n`` (the aerial view's ``ViewSpec.centres``):

- **gallery**: every tile is embedded ``n × n`` times, shifted so that each point of an ``n × n`` grid over the
  central half becomes the centre (:func:`centre_grid`; pixels shifted in from outside the tile take the
  backbone's mean colour, i.e. 0 after normalisation). A tile scores the best of its versions;
- **training**: the positive tile is shifted so that the labelled camera position becomes the centre, plus a
  uniform jitter of ± half the grid spacing — exactly the misalignment the nearest grid point leaves at test
  time (``s4g_train.data.PairedTrainDataset``, from the offsets through :func:`camera_shift`);
- **answer**: the top-1 tile's best version says where in the tile the camera is (:func:`shift_to_offset`),
  a position finer than the tile centre.

The search over versions is exact: a tile's score is the maximum over its ``S`` versions, so the best ``k``
tiles are among the best ``k·S`` versions (at most ``(k−1)·S`` versions can score above the ``k``-th tile's
best), which :func:`grouped_topk` takes from the core's top-k and reduces. :func:`grouped_ranks` (rank of the
positive tile, VIGOR hit, top-1 tile and version) streams the score matrix in query blocks with NumPy BLAS:
the rank needs every tile's maximum, which the core's ``positive_ranks`` (a count of single rows) cannot give.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from s4g_engine.errors import InputError

#: Fraction of the tile side that holds the cameras a tile is the positive for: VIGOR's tiles overlap by half,
#: a panorama's positive is the tile whose centre is nearest, so its camera lies within ±¼ side of the centre.
SPAN = 0.5
#: The largest grid (n × n versions per tile) accepted; beyond it the gallery grows without a gain.
MAX_CENTRES = 8


def check_centres(n: Any, what: str = "centres") -> int:
    """``n`` as an int in 1..MAX_CENTRES, else InputError naming ``what``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= MAX_CENTRES:
        raise InputError(f"{what} must be an integer from 1 (the tile centre only) to {MAX_CENTRES}, got {n!r}")
    return int(n)


def grid_step(n: int, side: int) -> float:
    """Spacing in pixels of the ``n × n`` grid on a ``side``-pixel tile: the central half divided into n."""
    return SPAN * float(side) / check_centres(n)


def centre_grid(n: int, side: int) -> np.ndarray:
    """int64 ``(n·n, 2)`` pixel shifts ``(dr, dc)`` of the version centres from the tile centre, row-major from
    the north-west (``dr`` > 0: south, ``dc`` > 0: east); ``n = 1`` → ``[[0, 0]]``."""
    step = grid_step(n, side)
    c = np.rint((np.arange(n) + 0.5 - n / 2) * step).astype(np.int64)
    return np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)


def shift_tile(tile: np.ndarray, dr: int, dc: int, fill: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(H, W, C)`` tile moved so that pixel ``(centre_r + dr, centre_c + dc)`` becomes the centre:
    ``out[r, c] = tile[r + dr, c + dc]``, pixels from outside the tile = ``fill`` (per channel)."""
    t = np.asarray(tile)
    if t.ndim != 3:
        raise InputError(f"shift_tile: expected an (H, W, C) tile, got shape {t.shape}")
    H, W = t.shape[:2]
    dr, dc = int(dr), int(dc)
    out = np.empty_like(t)
    out[...] = np.asarray(fill, dtype=t.dtype)
    r0, r1 = max(0, -dr), min(H, H - dr)
    c0, c1 = max(0, -dc), min(W, W - dc)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = t[r0 + dr:r1 + dr, c0 + dc:c1 + dc]
    return out


def tile_versions(tiles: np.ndarray, shifts: np.ndarray, fill: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(B, H, W, C)`` tiles → ``(B·S, H, W, C)``: the ``S`` shifted versions of each tile, tile-major (row
    ``b·S + s`` is tile ``b`` about centre ``shifts[s]``)."""
    t = np.asarray(tiles)
    if t.ndim != 4:
        raise InputError(f"tile_versions: expected (B, H, W, C) tiles, got shape {t.shape}")
    sh = np.asarray(shifts, np.int64).reshape(-1, 2)
    return np.stack([shift_tile(img, dr, dc, fill) for img in t for dr, dc in sh])


def fill_colour(mean: Sequence[float]) -> np.ndarray:
    """uint8 RGB the backbone normalises to ≈ 0 (its mean): what a shifted tile shows outside the original."""
    return np.clip(np.rint(np.asarray(mean, np.float64) * 255.0), 0, 255).astype(np.uint8)


def camera_shift(north_m: Any, east_m: Any, metres_per_px: float) -> np.ndarray:
    """float64 ``(…, 2)`` shift ``(dr, dc)`` in pixels that moves a camera at ``(north_m, east_m)`` from the tile
    centre to the centre (north is up: rows grow southwards)."""
    if not metres_per_px > 0:
        raise InputError(f"metres_per_px must be > 0, got {metres_per_px!r}")
    return np.stack([-np.asarray(north_m, np.float64) / metres_per_px,
                     np.asarray(east_m, np.float64) / metres_per_px], axis=-1)


def shift_to_offset(shift: Any, metres_per_px: float) -> np.ndarray:
    """Inverse of :func:`camera_shift`: ``(…, 2)`` pixel shifts → ``(…, 2)`` (north_m, east_m)."""
    s = np.asarray(shift, np.float64)
    return np.stack([-s[..., 0] * metres_per_px, s[..., 1] * metres_per_px], axis=-1)


def _check_versions(query_emb: Any, version_emb: Any, n_versions: int,
                    keep_fp16: bool = False) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Validated float32 queries and versions (``keep_fp16``, for the core's top-k: a float16 gallery stays
    float16 and NaN/Inf are left to the core's own check — no per-search copy or scan of the gallery)."""
    q = np.ascontiguousarray(query_emb, np.float32)
    v = np.asarray(version_emb)
    v = np.ascontiguousarray(v) if keep_fp16 and v.dtype == np.float16 else np.ascontiguousarray(v, np.float32)
    S = int(n_versions)
    if q.ndim != 2 or v.ndim != 2 or q.shape[1] != v.shape[1]:
        raise InputError(f"expected query (Q, d) and version (N·S, d) embeddings with the same d, got {q.shape} "
                         f"and {v.shape}")
    if S < 1 or v.shape[0] % S:
        raise InputError(f"{v.shape[0]} version embeddings are not a whole number of tiles of {S} versions")
    if not keep_fp16 and not (np.isfinite(q).all() and np.isfinite(v).all()):  # (the core checks its own input)
        raise InputError("embeddings contain NaN or Inf")
    return q, v, S, v.shape[0] // S


def grouped_ranks(query_emb: Any, version_emb: Any, n_versions: int, positive: Any,
                  semi_positives: Any = None, *, block: int = 256) -> dict[str, np.ndarray]:
    """Per query, with a tile's score = the best of its ``n_versions`` consecutive rows of ``version_emb``:

    ``rank`` (tiles scoring strictly above the positive; ties favour the query, as ``positive_ranks``),
    ``hit`` (no tile other than the semi-positives (Q, s; −1 = none) scores above the positive; all False
    without semi-positives), ``top1`` (best tile; ties → lower id) and ``top1_version`` (its best version)."""
    q, v, S, N = _check_versions(query_emb, version_emb, n_versions)
    pos = np.asarray(positive, np.int64)
    if pos.shape != (q.shape[0],) or (pos.size and (pos.min() < 0 or pos.max() >= N)):
        raise InputError(f"positive must be (Q={q.shape[0]},) tile ids in [0, {N}), got shape {pos.shape}")
    semi = None if semi_positives is None else np.asarray(semi_positives, np.int64)
    if semi is not None and (semi.ndim != 2 or semi.shape[0] != q.shape[0] or (semi.size and semi.max() >= N)):
        raise InputError(f"semi_positives must be (Q={q.shape[0]}, s) tile ids < {N} (−1 = none), got "
                         f"{semi.shape}")
    Q = q.shape[0]
    out = {"rank": np.empty(Q, np.int64), "hit": np.zeros(Q, bool), "top1": np.empty(Q, np.int64),
           "top1_version": np.empty(Q, np.int64)}
    for s in range(0, Q, block):
        e = min(Q, s + block)
        sc = (q[s:e] @ v.T).reshape(e - s, N, S)
        arg = sc.argmax(axis=2)
        best = np.take_along_axis(sc, arg[..., None], axis=2)[..., 0]
        rows = np.arange(e - s)
        above = best > best[rows, pos[s:e]][:, None]
        out["rank"][s:e] = above.sum(axis=1)
        if semi is not None:
            for j in range(semi.shape[1]):
                ok = semi[s:e, j] >= 0
                above[rows[ok], semi[s:e, j][ok]] = False
            out["hit"][s:e] = ~above.any(axis=1)
        t = best.argmax(axis=1)
        out["top1"][s:e] = t
        out["top1_version"][s:e] = arg[rows, t]
    return out


def grouped_topk(query_emb: Any, version_emb: Any, n_versions: int, k: int) -> tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]:
    """Best ``k`` tiles per query, a tile scoring the best of its ``n_versions`` rows → ``(scores (Q, k) float32,
    tile ids (Q, k) int64, best version of each (Q, k) int64)``; ties → lower tile id. Exact (module doc):
    the core's top-``k·S`` over the versions, reduced to tiles."""
    from s4g_engine import topk_similarity  # the compiled core

    q, v, S, N = _check_versions(query_emb, version_emb, n_versions, keep_fp16=True)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= N:
        raise InputError(f"k must be an integer in [1, {N}] (the number of tiles), got {k!r}")
    kk = min(int(k) * S, v.shape[0])
    sc, idx = topk_similarity(q, v, kk)
    sc, idx = np.asarray(sc, np.float32), np.asarray(idx, np.int64)
    tiles, ver = idx // S, idx % S
    out_s = np.empty((q.shape[0], k), np.float32)
    out_t = np.empty((q.shape[0], k), np.int64)
    out_v = np.empty((q.shape[0], k), np.int64)
    for i in range(q.shape[0]):
        # first occurrence of a tile in the (score desc, index asc) order is its best version; a tile's
        # versions are consecutive ids, so equal scores keep the lower tile first
        _, first = np.unique(tiles[i], return_index=True)
        first = first[np.lexsort((tiles[i][first], -sc[i][first]))][:k]
        out_s[i], out_t[i], out_v[i] = sc[i][first], tiles[i][first], ver[i][first]
    return out_s, out_t, out_v


__all__ = ["SPAN", "MAX_CENTRES", "check_centres", "grid_step", "centre_grid", "shift_tile", "tile_versions",
           "fill_colour", "camera_shift", "shift_to_offset", "grouped_ranks", "grouped_topk"]
