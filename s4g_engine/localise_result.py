"""What :meth:`s4g_engine.localiser.Localiser.localise` returns: the top-``k`` candidates of each query, as arrays
and as strict JSON / GeoJSON (also importable from :mod:`s4g_engine.localiser`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class LocaliseResult:
    """Top-``k`` candidates for ``n`` query images.

    ``scores`` float32 ``(n, k)`` cosine similarities, best first; ``indices`` int64 ``(n, k)`` rows of the
    index; ``ids`` ``n`` lists of ``k`` reference ids; ``coords`` float64 ``(n, k, 2)`` (lat, lon) degrees.
    An approximate (IVF-PQ) index may find fewer than ``k`` candidates; the missing ones are marked by the
    sentinel index −1, with score −inf, id ``""`` and NaN coords, and are left out of :meth:`to_geojson` and
    :meth:`to_dict` (whose output is strict JSON: no NaN, no Infinity). ``timings`` seconds per stage on the
    calling thread, adding up to ``total_s``: ``decode_s`` (time the encoder waited for decoded/preprocessed
    images), ``encode_s``, ``search_s``, ``other_s`` (validation, result building); plus the decode pool's
    own work, overlapped with the encoder when pipelined: ``decode_work_s`` (decode + resize) and
    ``preprocess_work_s`` (normalisation / polar transform).

    Tiles with versions (a model with aerial ``centres`` > 1; None otherwise): ``versions`` int64 ``(n, k)`` the
    best version of each candidate tile, ``shifts`` int64 ``(n, k, 2)`` its centre's pixel shift ``(dr, dc)``
    from the tile centre in the stage image (``dr`` > 0: south, ``dc`` > 0: east), and, when the index knows the
    tiles' ground width, ``refined`` float64 ``(n, k, 2)``: the (lat, lon) that shift points to (``coords`` stay
    the tile centres).
    """

    scores: np.ndarray
    indices: np.ndarray
    ids: list[list[str]]
    coords: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    versions: np.ndarray | None = None
    shifts: np.ndarray | None = None
    refined: np.ndarray | None = None

    def candidates(self, i: int) -> list[dict[str, Any]]:
        """Query ``i``'s found candidates as ``{rank, score, id, index, lat, lon}`` (sentinels left out); with
        tile versions also ``version`` and ``shift`` ``[dr, dc]``, and ``refined_lat``/``refined_lon``."""
        out = []
        for r in range(self.scores.shape[1]):
            j = int(self.indices[i, r])
            lat, lon = (float(v) for v in self.coords[i, r])
            if j < 0 or not (np.isfinite(lat) and np.isfinite(lon) and np.isfinite(self.scores[i, r])):
                continue  # the sentinel of a candidate an approximate index did not find
            c = {"rank": r + 1, "score": float(self.scores[i, r]), "id": self.ids[i][r], "index": j,
                 "lat": lat, "lon": lon}
            if self.versions is not None and self.shifts is not None:
                c["version"] = int(self.versions[i, r])
                c["shift"] = [int(v) for v in self.shifts[i, r]]
            if self.refined is not None:
                c["refined_lat"], c["refined_lon"] = (float(v) for v in self.refined[i, r])
            out.append(c)
        return out

    def to_dict(self, query_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{"results": [{"image", "candidates": [{rank, score, id, index, lat, lon}]}], "timings"}``
        (strict JSON types; missing candidates left out)."""
        n = self.scores.shape[0]
        names = list(query_names) if query_names is not None else [str(i) for i in range(n)]
        return {"results": [{"image": names[i], "candidates": self.candidates(i)} for i in range(n)],
                "timings": {k: float(v) for k, v in self.timings.items()}}

    def to_geojson(self, query_names: Sequence[str] | None = None) -> dict[str, Any]:
        """A GeoJSON FeatureCollection: one Point ``[lon, lat]`` per candidate, with query, rank, score, id
        (missing candidates left out)."""
        n = self.scores.shape[0]
        names = list(query_names) if query_names is not None else [str(i) for i in range(n)]
        feats = []
        for i in range(n):
            for c in self.candidates(i):
                props = {"query": names[i], "rank": c["rank"], "score": c["score"], "id": c["id"],
                         "index": c["index"]}
                props.update({key: c[key] for key in ("version", "shift", "refined_lat", "refined_lon") if key in c})
                feats.append({"type": "Feature",
                              "geometry": {"type": "Point", "coordinates": [c["lon"], c["lat"]]},
                              "properties": props})
        return {"type": "FeatureCollection", "features": feats}
