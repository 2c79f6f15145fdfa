"""Geodesy helpers: great-circle distances, metric offsets, UTM conversion and GPS neighbour lists.

All angles are in **degrees** at the API and converted to radians inside. (The Sample4Geo reference feeds
degrees into sklearn's haversine, which expects radians — docs/METHOD.md §4; we do not.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from s4g_engine.errors import DependencyError, InputError
from s4g_engine.fileio import atomic_write_with

logger = logging.getLogger(__name__)

__all__ = [
    "EARTH_RADIUS_M",
    "haversine_m",
    "latlon_to_unit",
    "offset_latlon",
    "utm_to_latlon",
    "gps_neighbours",
    "GPS_METRICS",
]

#: Earth radius used by the VIGOR/Sample4Geo evaluation code (docs/METHOD.md §7).
EARTH_RADIUS_M = 6_371_004.0
#: metrics of :func:`gps_neighbours`: great circle on (lat, lon) degrees, or plane (UTM metres, CVACT)
GPS_METRICS = ("haversine", "euclidean")


def haversine_m(lat1: np.ndarray | float, lon1: np.ndarray | float,
                lat2: np.ndarray | float, lon2: np.ndarray | float) -> np.ndarray:
    """Great-circle distance in metres between (lat1, lon1) and (lat2, lon2), degrees, broadcasting.

    Uses the haversine form (accurate at small distances, unlike the arccos form of the VIGOR code).
    """
    p1, p2 = np.radians(np.asarray(lat1, np.float64)), np.radians(np.asarray(lat2, np.float64))
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2, np.float64) - np.asarray(lon1, np.float64))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def latlon_to_unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(lat, lon) degrees, shape (N,) each → float64 unit vectors (N, 3) on the sphere (ECEF direction).

    The chord length between two unit vectors is 2·sin(θ/2), monotone in the central angle θ, so nearest
    neighbours by Euclidean distance in this space are nearest neighbours by great-circle distance.
    """
    la = np.radians(np.asarray(lat, np.float64))
    lo = np.radians(np.asarray(lon, np.float64))
    c = np.cos(la)
    return np.stack([c * np.cos(lo), c * np.sin(lo), np.sin(la)], axis=-1)


def offset_latlon(lat: np.ndarray | float, lon: np.ndarray | float,
                  north_m: np.ndarray | float, east_m: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Shift (lat, lon) degrees by a local metric offset (north_m, east_m); returns (lat, lon) degrees.

    Same spherical model as the VIGOR reference (`Lat_Lng` in its evaluate_from_npy.py, R = 6,371,004 m):
    Δlat = d_n/R, Δlon = arccos((cos(d_e/R) − sin²φ)/cos²φ) (i.e. the same-latitude point at distance
    d_e), with the sign of the offset restored.
    """
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    n = np.asarray(north_m, np.float64)
    e = np.asarray(east_m, np.float64)
    phi = np.radians(lat)
    dlat = n / EARTH_RADIUS_M
    # arccos((cos(d/R) − sin²φ)/cos²φ) rewritten as 2·arcsin(sin(d/2R)/cos φ): the same value, without the
    # cancellation that costs the arccos form ~1e-4 relative accuracy at metre scales.
    arg = np.clip(np.sin(np.abs(e) / (2.0 * EARTH_RADIUS_M)) / np.cos(phi), -1.0, 1.0)
    dlon = np.sign(e) * 2.0 * np.arcsin(arg)
    return lat + np.degrees(dlat), lon + np.degrees(dlon)


def utm_to_latlon(easting: np.ndarray, northing: np.ndarray, *, zone: int = 55,
                  south: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """UTM (WGS 84) metres → (lat, lon) degrees with pyproj. Default zone 55 south = Canberra (CVACT)."""
    try:
        from pyproj import Transformer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DependencyError("UTM conversion needs pyproj: pip install 's4g[engine]' (or pip install pyproj)") from exc
    if not 1 <= int(zone) <= 60:
        raise InputError(f"UTM zone must be in 1..60, got {zone}")
    epsg = (32700 if south else 32600) + int(zone)
    tr = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(np.asarray(easting, np.float64), np.asarray(northing, np.float64))
    return np.asarray(lat, np.float64), np.asarray(lon, np.float64)


# --------------------------------------------------------------------------------------------------
# GPS neighbour lists
# --------------------------------------------------------------------------------------------------

def _embed(coords: np.ndarray, metric: str) -> np.ndarray:
    """Coordinates → points of a Euclidean space whose distance order equals the metric's order."""
    if metric == "haversine":
        if np.any(np.abs(coords[:, 0]) > 90.0) or np.any(np.abs(coords[:, 1]) > 360.0):
            raise InputError("gps_neighbours(metric='haversine') expects (lat, lon) in degrees; got values "
                             "outside [-90, 90] x [-360, 360] — UTM metres? use metric='euclidean'")
        # scaled by R so the chord is in metres (keeps the KD-tree's absolute tolerances meaningful)
        return latlon_to_unit(coords[:, 0], coords[:, 1]) * EARTH_RADIUS_M
    if metric == "euclidean":
        return coords - coords.mean(axis=0, keepdims=True)
    raise InputError(f"metric must be one of {GPS_METRICS}, got {metric!r}")


def _neighbours_kdtree(points: np.ndarray, k: int) -> np.ndarray:
    """K nearest other points for every point, exact in float64; (N, k) int64, −1 padded.

    Why not the core's float32 ``topk_similarity`` on unit vectors: in float32 the cosine of two unit
    vectors cannot tell apart points closer than ~2 km (1 − cos θ ≈ θ²/2 drops below float32's 6e-8), and
    CVUSA/CVACT/VIGOR neighbours are tens to hundreds of metres apart. A KD-tree on the float64 chord
    embedding is exact, O(N log N) time and O(N·k) memory — no N×N matrix (tests show the float32 failure).
    """
    from scipy.spatial import cKDTree

    n = points.shape[0]
    out = np.full((n, k), -1, np.int64)
    if n <= 1 or k == 0:
        return out
    kq = min(k + 1, n)
    tree = cKDTree(points)
    chunk = 16384
    for s in range(0, n, chunk):
        _, idx = tree.query(points[s:s + chunk], k=kq)
        idx = np.asarray(idx, np.int64).reshape(-1, kq)
        rows = np.arange(s, s + idx.shape[0])
        is_self = idx == rows[:, None]
        # drop self where it appears; where it does not (≥ kq exact duplicates), drop the last column
        has_self = is_self.any(axis=1)
        drop = np.where(has_self, np.argmax(is_self, axis=1), kq - 1)
        keep = np.ones_like(idx, bool)
        keep[np.arange(idx.shape[0]), drop] = False
        kept = idx[keep].reshape(idx.shape[0], kq - 1)
        out[s:s + idx.shape[0], : kq - 1] = kept[:, :k]
    return out


def _cache_paths(cache_dir: Path, digest: str, k: int, metric: str) -> tuple[Path, Path]:
    stem = f"gps_neighbours_{metric}_K{k}_{digest[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _load_cache(npy: Path, meta: Path, digest: str, n: int, k: int) -> np.ndarray | None:
    try:
        info = json.loads(meta.read_text())
        if info.get("key") != digest:
            return None
        arr = np.load(npy, allow_pickle=False)
        if arr.dtype != np.int64 or arr.shape != (n, k):
            raise InputError(f"shape/dtype {arr.shape}/{arr.dtype}, expected ({n}, {k})/int64")
        if hashlib.sha256(arr.tobytes()).hexdigest() != info.get("sha256"):
            raise InputError("content checksum mismatch")
        if arr.size and (arr.min() < -1 or arr.max() >= n or np.any(arr == np.arange(n)[:, None])):
            raise InputError("indices out of range or self-references")
        return arr
    except FileNotFoundError:
        return None
    except Exception as exc:  # corrupt cache of any kind → recompute, never trust it
        logger.warning("ignoring unusable GPS-neighbour cache %s (%s); recomputing", npy, exc)
        return None


def gps_neighbours(coords: np.ndarray, K: int, *, metric: str = "haversine",
                   cache_dir: str | os.PathLike | None = None, cache_key: str | None = None) -> np.ndarray:
    """For every point, the indices of its ``K`` nearest *other* points, nearest first.

    Args:
        coords: float (N, 2): (lat, lon) degrees for ``metric="haversine"`` (great-circle distance, computed
            in radians); (easting, northing) metres for ``metric="euclidean"`` (CVACT's UTM).
        K: neighbours per point. When N−1 < K the rows are padded with −1.
        cache_dir: if given, the result is cached there as ``.npy`` (+ ``.json`` with the key and a
            checksum), written atomically; the key is sha256(coordinates, K, metric, cache_key), so a changed
            split gives a new file. A stale/corrupt cache is ignored and recomputed.
        cache_key: extra text mixed into the key (e.g. the split name).

    Returns:
        int64 (N, K). Never builds an N×N matrix (KD-tree, see ``_neighbours_kdtree``).
    """
    c = np.ascontiguousarray(np.asarray(coords, np.float64))
    if c.ndim != 2 or c.shape[1] != 2:
        raise InputError(f"coords must have shape (N, 2), got {c.shape}")
    if not np.all(np.isfinite(c)):
        bad = int(np.flatnonzero(~np.isfinite(c).all(axis=1))[0])
        raise InputError(f"coords contain NaN/inf (first at row {bad}); GPS neighbours need a position for "
                         "every sample — drop those samples or use another sampling")
    K = int(K)
    if K < 0:
        raise InputError(f"K must be >= 0, got {K}")
    n = c.shape[0]
    h = hashlib.sha256()
    h.update(f"s4g-gps-neighbours-v1|{metric}|K={K}|N={n}|{cache_key or ''}|".encode())
    h.update(c.tobytes())
    digest = h.hexdigest()
    npy = meta = None
    if cache_dir is not None:
        npy, meta = _cache_paths(Path(cache_dir), digest, K, metric)
        cached = _load_cache(npy, meta, digest, n, K)
        if cached is not None:
            logger.info("GPS neighbours loaded from cache %s", npy)
            return cached
    points = _embed(c, metric)
    out = _neighbours_kdtree(points, K)
    if npy is not None and meta is not None:
        atomic_write_with(npy, lambda fh: np.save(fh, out, allow_pickle=False))
        info = {"key": digest, "sha256": hashlib.sha256(out.tobytes()).hexdigest(), "metric": metric,
                "K": K, "N": n, "cache_key": cache_key}
        atomic_write_with(meta, lambda fh: fh.write(json.dumps(info, indent=1).encode()))
        logger.info("GPS neighbours cached at %s", npy)
    return out
