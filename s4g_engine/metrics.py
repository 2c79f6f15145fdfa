"""Retrieval metrics exactly as docs/METHOD.md §7 (and the reference evaluation code), without a query×gallery matrix.

Torch-free: NumPy + the compiled core. Ranks come from ``s4g_engine.positive_ranks`` (streaming, memory
O(Q + N·d)): ``rank_i = #{r : sim(i, r) > sim(i, g(i))}`` — strictly greater, ties favour the query.
All recall figures are in percent, like the paper.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from s4g_engine.errors import InputError
from s4g_engine.geo import EARTH_RADIUS_M, haversine_m  # noqa: F401  (EARTH_RADIUS_M: re-exported, was defined here)

log = logging.getLogger(__name__)

def _ranks(query_emb: Any, ref_emb: Any, positive: Any, ignore: Any = None) -> np.ndarray:
    from s4g_engine import positive_ranks  # the compiled core (validates shapes, dtypes, NaN)

    if ignore is None:
        return np.asarray(positive_ranks(query_emb, ref_emb, positive), dtype=np.int64)
    return np.asarray(positive_ranks(query_emb, ref_emb, positive, ignore=ignore), dtype=np.int64)


def ranks_to_metrics(ranks: Any, n_refs: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``R@k`` = 100·mean(rank < k); ``R@1%`` = 100·mean(rank < ⌊n_refs/100⌋).

    Like the reference code, the 1% threshold is ``n_refs // 100``: with fewer than 100 references it is 0
    and ``R@1%`` is 0.0 (no rank is < 0). We keep that so figures compare 1:1 with the reference.
    """
    r = np.asarray(ranks)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise InputError(f"ranks must be a 1-D integer array, got shape {r.shape} dtype {r.dtype}")
    if isinstance(n_refs, bool) or not isinstance(n_refs, (int, np.integer)) or n_refs < 1:
        raise InputError(f"n_refs must be a positive int, got {n_refs!r}")
    if r.size == 0:
        raise InputError("no queries: metrics need at least one rank")
    out = {f"R@{k}": 100.0 * float(np.mean(r < k)) for k in ks}
    out["R@1%"] = 100.0 * float(np.mean(r < n_refs // 100))
    return out


def retrieval_metrics(query_emb: Any, ref_emb: Any, positive: Any, semi_positives: Any = None, *,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@1/5/10/1% (and VIGOR's ``hit_rate`` when ``semi_positives`` are given), in percent.

    Args:
        query_emb: float (Q, d) L2-normalised query embeddings.  ref_emb: float (N, d) reference embeddings.
        positive: int (Q,) index of each query's true reference.
        semi_positives: optional int (Q, s), -1 padded. R@k use the positive only (as the reference); the hit
            rate counts a query as a hit iff no reference other than its semi-positives scores strictly above
            its positive (a second streaming pass through the core with ``ignore``).
    Returns:
        dict with ``R@k`` for k in ``ks``, ``R@1%`` and optionally ``hit_rate``.
    """
    ranks = _ranks(query_emb, ref_emb, positive)
    out = ranks_to_metrics(ranks, int(np.shape(ref_emb)[0]), ks)
    if semi_positives is not None:
        semi = np.asarray(semi_positives)
        if semi.ndim != 2 or semi.shape[0] != ranks.shape[0]:
            raise InputError(f"semi_positives must be (Q={ranks.shape[0]}, s), got {semi.shape}")
        if semi.shape[1] > 0:
            hit = _ranks(query_emb, ref_emb, positive, ignore=semi.astype(np.int64, copy=False))
            out["hit_rate"] = 100.0 * float(np.mean(hit < 1))
    return out


def metre_errors(pred_latlon: Any, true_latlon: Any, thresholds: Sequence[float] = (10, 25, 50)) -> dict[str, float]:
    """Localisation error in metres (great circle, R = 6,371,004 m) between predicted and true positions.

    ``pred_latlon``, ``true_latlon``: (Q, 2) latitude/longitude in degrees. Returns ``median_m``, ``mean_m``
    and ``acc@{t}m`` (percent of queries within t metres) for each threshold.
    """
    p = np.asarray(pred_latlon, dtype=np.float64)
    t = np.asarray(true_latlon, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape != t.shape:
        raise InputError(f"pred_latlon and true_latlon must both be (Q, 2) lat/lon degrees, got {p.shape}, {t.shape}")
    if p.shape[0] == 0:
        raise InputError("no queries: metre errors need at least one prediction")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise InputError("pred_latlon / true_latlon contain NaN or Inf; drop queries without coordinates first")
    if np.abs(p[:, 0]).max() > 90 or np.abs(t[:, 0]).max() > 90:
        raise InputError("latitudes beyond ±90°: pass (lat, lon) in degrees, latitude first")
    err = np.asarray(haversine_m(p[:, 0], p[:, 1], t[:, 0], t[:, 1]), dtype=np.float64)
    out = {"median_m": float(np.median(err)), "mean_m": float(np.mean(err))}
    for th in thresholds:
        out[f"acc@{th:g}m"] = 100.0 * float(np.mean(err <= th))
    return out


def localisation_errors(query_emb: Any, ref_emb: Any, ref_latlon: Any, true_latlon: Any,
                        thresholds: Sequence[float] = (10, 25, 50)) -> dict[str, float]:
    """VIGOR metre error (docs/METHOD.md §7): predicted position = centre of the top-1 retrieved tile (core top-k,
    streaming; ties → lower index), compared with each query's true position.

    ``ref_latlon`` (N, 2) tile centres, ``true_latlon`` (Q, 2) panorama positions, degrees. See
    :func:`metre_errors` for the keys.
    """
    from s4g_engine import topk_similarity

    ref_ll = np.asarray(ref_latlon, dtype=np.float64)
    if ref_ll.ndim != 2 or ref_ll.shape != (np.shape(ref_emb)[0], 2):
        raise InputError(f"ref_latlon must be (N={np.shape(ref_emb)[0]}, 2) lat/lon degrees, got {ref_ll.shape}")
    _, idx = topk_similarity(query_emb, ref_emb, 1)
    return metre_errors(ref_ll[np.asarray(idx)[:, 0]], true_latlon, thresholds)


def vigor_true_latlon(ref_latlon: Any, positive: Any, offsets: Any) -> np.ndarray:
    """VIGOR ground truth position of each query (docs/METHOD.md §7): the centre of its positive tile moved by
    the split's offset, i.e. by the pixel offset × metres per pixel (``offsets[:, 0]`` = (north_m, east_m), as
    :func:`s4g_engine.datasets.vigor.offsets_from_delta` converts it), on the sphere of R = 6,371,004 m.

    ``ref_latlon`` (N, 2) tile centres (degrees), ``positive`` (Q,) tile ids, ``offsets`` (Q, s, 2) metres with
    the positive first → float64 (Q, 2) latitude/longitude in degrees. (The panorama's file name carries the
    same position, rounded; the label is what the VIGOR evaluation code uses.)
    """
    from s4g_engine.geo import offset_latlon

    ref = np.asarray(ref_latlon, dtype=np.float64)
    pos = np.asarray(positive)
    off = np.asarray(offsets, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != 2:
        raise ValueError(f"ref_latlon must be (N, 2) lat/lon degrees, got {ref.shape}")
    if pos.ndim != 1 or (pos.size and (pos.dtype.kind not in "iu" or pos.min() < 0 or pos.max() >= ref.shape[0])):
        raise ValueError(f"positive must be (Q,) integer tile ids in [0, {ref.shape[0]}), got shape {pos.shape} "
                         f"dtype {pos.dtype}")
    if off.ndim != 3 or off.shape[0] != pos.shape[0] or off.shape[2] != 2 or off.shape[1] < 1:
        raise ValueError(f"offsets must be (Q={pos.shape[0]}, s, 2) (north_m, east_m) with the positive first, "
                         f"got {off.shape}")
    lat, lon = offset_latlon(ref[pos, 0], ref[pos, 1], off[:, 0, 0], off[:, 0, 1])
    return np.column_stack([lat, lon])


def _good_rows(scores: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Positions (0-based) of the good items in the gallery ranking, best first, ties in their favour:
    row_i = #{non-good items scoring > s_(i)} + i, s_(i) the i-th highest good score."""
    s_good = np.sort(scores[good])[::-1]
    srt = np.sort(scores)
    all_gt = scores.shape[0] - np.searchsorted(srt, s_good, side="right")
    good_asc = s_good[::-1]
    good_gt = good_asc.shape[0] - np.searchsorted(good_asc, s_good, side="right")
    return all_gt - good_gt + np.arange(s_good.shape[0])


def _ap_from_rows(rows: np.ndarray) -> float:
    """University-1652 reference AP (trapezoid of precision at each recall step)."""
    ngood = rows.shape[0]
    i = np.arange(ngood, dtype=np.float64)
    precision = (i + 1) / (rows + 1)
    old = np.where(rows != 0, i / np.maximum(rows, 1), 1.0)
    return float(np.sum((old + precision) / 2) / ngood)


def university_metrics(query_emb: Any, gallery_emb: Any, query_labels: Any, gallery_labels: Any, *,
                       ks: Sequence[int] = (1, 5, 10), max_block_bytes: int = 64 << 20) -> dict[str, float]:
    """University-1652 retrieval metrics with class labels, as the University-1652 reference evaluation.

    For each query every gallery item of its class is a true match (gallery label -1 = junk, removed from
    the ranking; drone→satellite has none). AP per query is the reference's trapezoid rule; R@k = first
    true match at position < k; ``R@1%`` = first true match at position ≤ round(G·0.01) (the reference's
    ``CMC[round(len(gallery)*0.01)]`` — not the ⌊N/100⌋ rule of the other datasets). Queries with no true
    match count as 0 in every mean (the reference divides by the number of queries). Ties: true matches
    are ranked before equal-scoring others (the reference's argsort leaves tie order unspecified; with
    float embeddings ties are rare).

    Scores are computed in blocks of queries (float32 matmul, at most ``max_block_bytes`` per block); no
    Q×G matrix is held. Returns ``AP``, ``R@k`` and ``R@1%``, in percent.
    """
    q = np.asarray(query_emb)
    g = np.asarray(gallery_emb)
    ql = np.asarray(query_labels)
    gl = np.asarray(gallery_labels)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise InputError(f"query_emb (Q, d) and gallery_emb (G, d) must share d, got {q.shape} and {g.shape}")
    if ql.shape != (q.shape[0],) or gl.shape != (g.shape[0],):
        raise InputError(f"labels must be (Q,)=({q.shape[0]},) and (G,)=({g.shape[0]},), got {ql.shape}, {gl.shape}")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise InputError("need at least one query and one gallery item")
    qf, gf = q.astype(np.float32, copy=False), g.astype(np.float32, copy=False)
    if not (np.isfinite(qf).all() and np.isfinite(gf).all()):
        raise InputError("embeddings contain NaN or Inf")
    keep = gl != -1  # junk
    gf, gl = gf[keep], gl[keep]
    n_g = gf.shape[0]
    top1pct = round(len(keep) * 0.01)  # reference: round(len(gallery_label)*0.01), junk included
    first = np.full(q.shape[0], -1, dtype=np.int64)
    ap = np.zeros(q.shape[0], dtype=np.float64)
    block = max(1, int(max_block_bytes // max(1, 4 * n_g)))
    for s in range(0, q.shape[0], block):
        scores = qf[s:s + block] @ gf.T
        for j in range(scores.shape[0]):
            good = gl == ql[s + j]
            if not good.any():
                continue
            rows = _good_rows(scores[j], good)
            first[s + j] = rows[0]
            ap[s + j] = _ap_from_rows(rows)
    hit = first >= 0
    out = {"AP": 100.0 * float(ap.mean())}
    for k in ks:
        out[f"R@{k}"] = 100.0 * float(np.mean(hit & (first < k)))
    out["R@1%"] = 100.0 * float(np.mean(hit & (first <= top1pct)))
    return out


def average_precision(query_emb: Any, gallery_emb: Any, query_labels: Any, gallery_labels: Any) -> float:
    """University-1652 mean average precision in percent (see :func:`university_metrics` for the rules)."""
    return university_metrics(query_emb, gallery_emb, query_labels, gallery_labels)["AP"]
