"""s4g_engine.geo: distances, offsets, UTM, and GPS neighbour lists against a float64 brute-force reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from s4g_engine import geo
from s4g_engine.geo import EARTH_RADIUS_M, gps_neighbours, haversine_m, latlon_to_unit, offset_latlon


def brute_force_neighbours(dist_fn, n: int, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Reference: chunked float64 distances, stable argsort, self excluded → (indices, distances)."""
    idx = np.full((n, k), -1, np.int64)
    dst = np.full((n, k), np.inf)
    for s in range(0, n, chunk):
        rows = np.arange(s, min(n, s + chunk))
        d = dist_fn(rows)                     # (chunk, n) float64
        d[np.arange(len(rows)), rows] = np.inf
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        m = min(k, n - 1)
        idx[rows, :m] = order[:, :m]
        dst[rows, :m] = np.take_along_axis(d, order, 1)[:, :m]
    return idx, dst


def city_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """Dense points (a 3 km square, tens of metres apart) plus a few far-away ones."""
    lat = 41.88 + rng.uniform(0, 0.027, n)
    lon = -87.63 + rng.uniform(0, 0.036, n)
    far = rng.choice(n, size=n // 20, replace=False)
    lat[far] += rng.uniform(-5, 5, far.size)
    lon[far] += rng.uniform(-5, 5, far.size)
    return np.stack([lat, lon], 1)


def test_haversine_known_values() -> None:
    assert haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(EARTH_RADIUS_M * np.pi / 180, rel=1e-12)
    assert haversine_m(10.0, 20.0, 10.0, 20.0) == 0.0
    a = haversine_m(41.88, -87.63, 47.61, -122.33)   # Chicago - Seattle ≈ 2,790 km
    assert 2.78e6 < a < 2.80e6
    assert haversine_m(47.61, -122.33, 41.88, -87.63) == pytest.approx(a)
    u = latlon_to_unit(np.array([0.0, 90.0, 41.0]), np.array([0.0, 0.0, -87.0]))
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
    np.testing.assert_allclose(u[:2], [[1, 0, 0], [0, 0, 1]], atol=1e-15)


def test_offset_latlon_roundtrip() -> None:
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-60, 60, 50), rng.uniform(-180, 180, 50)
    n, e = rng.uniform(-50, 50, 50), rng.uniform(-50, 50, 50)
    la2, lo2 = offset_latlon(lat, lon, n, e)
    np.testing.assert_allclose(haversine_m(lat, lon, la2, lo2), np.hypot(n, e), rtol=1e-4)
    assert np.all(np.sign(la2 - lat) == np.sign(n)) and np.all(np.sign(lo2 - lon) == np.sign(e))


def test_utm_to_latlon_canberra() -> None:
    lat, lon = geo.utm_to_latlon(np.array([692_000.0]), np.array([6_094_000.0]))
    assert -35.4 < lat[0] < -35.2 and 149.0 < lon[0] < 149.2
    with pytest.raises(ValueError, match="zone"):
        geo.utm_to_latlon(np.array([1.0]), np.array([1.0]), zone=61)


@pytest.mark.parametrize("seed", [0, 1])
def test_gps_neighbours_haversine_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = city_points(rng, 700)
    k = 16
    got = gps_neighbours(c, k)
    assert got.dtype == np.int64 and got.shape == (700, k)
    ref, ref_d = brute_force_neighbours(
        lambda rows: haversine_m(c[rows, 0:1], c[rows, 1:2], c[None, :, 0], c[None, :, 1]), len(c), k)
    got_d = haversine_m(c[:, 0:1], c[:, 1:2], c[got, 0], c[got, 1])
    np.testing.assert_allclose(got_d, ref_d, atol=1e-6)              # same distances, nearest first
    assert np.all(np.diff(got_d, axis=1) >= -1e-6)
    assert not np.any(got == np.arange(len(c))[:, None])              # self excluded
    assert np.mean(got == ref) > 0.999                                # identical up to exact ties


def test_gps_neighbours_euclidean_matches_bruteforce() -> None:
    rng = np.random.default_rng(5)
    utm = np.stack([692_000 + rng.uniform(-4000, 4000, 600), 6_094_000 + rng.uniform(-4000, 4000, 600)], 1)
    got = gps_neighbours(utm, 12, metric="euclidean")
    ref, ref_d = brute_force_neighbours(
        lambda rows: np.linalg.norm(utm[rows, None, :] - utm[None, :, :], axis=2), len(utm), 12)
    got_d = np.linalg.norm(utm[got] - utm[:, None, :], axis=2)
    np.testing.assert_allclose(got_d, ref_d, atol=1e-6)
    np.testing.assert_array_equal(got, ref)


def test_gps_neighbours_duplicates_padding_and_errors() -> None:
    c = np.array([[40.0, -100.0], [40.0, -100.0], [40.0, -100.0], [40.001, -100.0]])
    got = gps_neighbours(c, 5)
    assert got.shape == (4, 5)
    for i in range(4):
        assert i not in got[i, :3].tolist() and got[i, 3:].tolist() == [-1, -1]
        assert sorted(got[i, :3].tolist()) == sorted(set(range(4)) - {i})
    assert got[3, 0] in (0, 1, 2) and set(got[0, :2].tolist()) == {1, 2}   # duplicates at distance 0 first
    assert gps_neighbours(c[:1], 3).tolist() == [[-1, -1, -1]]
    with pytest.raises(ValueError, match="NaN"):
        gps_neighbours(np.array([[1.0, np.nan], [1.0, 2.0]]), 1)
    with pytest.raises(ValueError, match="euclidean"):
        gps_neighbours(np.array([[692000.0, 6094000.0], [1.0, 2.0]]), 1)   # UTM fed as degrees
    with pytest.raises(ValueError, match="shape"):
        gps_neighbours(np.zeros((3, 3)), 1)
    with pytest.raises(ValueError, match="metric"):
        gps_neighbours(np.zeros((3, 2)), 1, metric="manhattan")


def test_radians_not_the_reference_degree_bug() -> None:
    """The reference feeds degrees into a radians haversine. At Seattle's latitude that weights east-west
    offsets by cos²(47.6 rad) ≈ 0.79 instead of cos²(47.6°) ≈ 0.45 and flips this order."""
    q = (47.6, -122.3)
    north = (47.6 + 0.001, -122.3)        # 111.2 m away
    east = (47.6, -122.3 + 0.0013)        # 97.4 m away: truly nearer
    c = np.array([q, north, east])
    d_north, d_east = haversine_m(*q, *north), haversine_m(*q, *east)
    assert d_east < d_north

    def degree_bug(a, b):  # sklearn haversine on raw degrees (what the reference computes)
        la1, lo1, la2, lo2 = a[0], a[1], b[0], b[1]
        h = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
        return 2 * np.arcsin(np.sqrt(h))
    assert degree_bug(q, east) > degree_bug(q, north)     # the bug ranks the farther point first
    assert gps_neighbours(c, 2)[0].tolist() == [2, 1]      # we rank by true distance


def test_float32_cosine_cannot_rank_nearby_points() -> None:
    """Why gps_neighbours uses a float64 KD-tree rather than a float32 top-k on unit vectors: float32
    cosines of points tens of metres apart are indistinguishable, so the order is lost."""
    rng = np.random.default_rng(0)
    c = city_points(rng, 300)
    u = latlon_to_unit(c[:, 0], c[:, 1])
    cos32 = (u[:1].astype(np.float32) @ u.astype(np.float32).T)[0]
    d = haversine_m(c[0, 0], c[0, 1], c[:, 0], c[:, 1])
    near = np.argsort(d)[1:30]                     # 29 nearest, all within a few hundred metres
    assert len(np.unique(cos32[near])) < len(near) // 2   # mostly ties in float32
    got = gps_neighbours(c, 29)[0]
    np.testing.assert_allclose(d[got], d[near], atol=1e-6)
    try:
        from s4g_engine import topk_similarity
    except ImportError:
        return
    _, idx = topk_similarity(u[:1].astype(np.float32), u.astype(np.float32), 30)
    core = [int(i) for i in idx[0] if i != 0][:29]
    assert not np.allclose(d[core], d[near], atol=1e-3), "float32 top-k unexpectedly exact"


def test_gps_neighbours_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    c = city_points(rng, 200)
    first = gps_neighbours(c, 8, cache_dir=tmp_path, cache_key="train")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    npy = next(tmp_path.glob("*.npy"))
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["K"] == 8 and meta["metric"] == "haversine" and meta["N"] == 200

    calls = {"n": 0}
    real = geo._neighbours_kdtree

    def counting(points, k):
        calls["n"] += 1
        return real(points, k)
    monkeypatch.setattr(geo, "_neighbours_kdtree", counting)
    np.testing.assert_array_equal(gps_neighbours(c, 8, cache_dir=tmp_path, cache_key="train"), first)
    assert calls["n"] == 0                                         # served from the cache

    # a changed split (coordinates), K, metric key or cache_key → a different file
    gps_neighbours(c[:-1], 8, cache_dir=tmp_path, cache_key="train")
    gps_neighbours(c, 8, cache_dir=tmp_path, cache_key="val")
    assert calls["n"] == 2 and len(list(tmp_path.glob("*.npy"))) == 3

    # corrupt caches are detected and recomputed
    for corrupt in (b"garbage", None):
        if corrupt is None:  # valid .npy, wrong content (checksum mismatch)
            bad = first.copy()
            bad[0, 0] = bad[0, 1]
            np.save(npy, bad)
        else:
            npy.write_bytes(corrupt)
        before = calls["n"]
        np.testing.assert_array_equal(gps_neighbours(c, 8, cache_dir=tmp_path, cache_key="train"), first)
        assert calls["n"] == before + 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))  # atomic writes left no temp files
