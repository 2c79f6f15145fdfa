"""Synthetic world (s4g_synth): renderer geometry and parity, determinism, layouts readable by load_split, errors,
package boundaries (torch-free, not imported by the engine, the deprecated old import path)."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s4g_synth import _render, generate_dataset
from s4g_synth.capture import pano_distances
from s4g_synth.reference import render_panorama_ref, render_tile_ref
from s4g_synth.world import ASPHALT, GRASS, N_MATERIALS, ROOFTOP, World

TINY = dict(tile_size=64, pano_size=(32, 128), district_m=400.0, pairs_per_district=4, contact_pairs=2)
SERIAL = dict(TINY, workers=1)


def flat_world(size_m: float = 200.0, res: float = 0.5) -> World:
    n = int(size_m / res)
    albedo = np.zeros((n, n, 3), np.uint8)
    albedo[:] = (0, 200, 0)
    return World(np.zeros((n, n), np.float32), albedo, np.zeros((n, n, 3), np.uint8), np.full((n, n), GRASS, np.uint8),
                 res, -size_m / 2, size_m / 2, 40.0, -75.0).finalise()


def add_box(w: World, x0: float, x1: float, y0: float, y1: float, h: float, colour, material=ROOFTOP) -> None:
    r0, c0 = w.cell(x0, y1)
    r1, c1 = w.cell(x1, y0)
    sl = (slice(int(r0), int(r1) + 1), slice(int(c0), int(c1) + 1))
    w.height[sl] = h
    w.facade[sl] = colour
    w.albedo[sl] = colour
    w.material[sl] = material
    w.finalise()


def pano(w: World, cam=(0.0, 0.0, 2.5), size=(64, 256), **kw) -> np.ndarray:
    gain = np.ones((N_MATERIALS, 3), np.float32)
    kw.setdefault("ambient", 1.0)   # no shading: colours come out exactly
    return _render.render_panorama(w.height, w.albedo, w.facade, w.material, gain, pano_distances(),
                                   res=w.res, x0=w.x0, y0=w.y0, camera=cam, size=size, hmax=w.hmax, threads=1, **kw)


def is_colour(img: np.ndarray, colour, tol: int = 2) -> np.ndarray:
    return np.all(np.abs(img.astype(int) - np.asarray(colour)) <= tol, axis=-1)


# ---- geometry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("where,col_frac", [("north", 0.5), ("east", 0.75), ("south", 0.0), ("west", 0.25)])
def test_tall_building_appears_at_its_azimuth_above_horizon(where, col_frac):
    w = flat_world()
    dx, dy = {"north": (0, 30), "east": (30, 0), "south": (0, -30), "west": (-30, 0)}[where]
    add_box(w, dx - 5, dx + 5, dy - 5, dy + 5, 40.0, (255, 0, 0))
    H, W = 64, 256
    img = pano(w, size=(H, W))
    red = is_colour(img, (255, 0, 0))
    cols = np.flatnonzero(red.any(axis=0))
    assert len(cols) > 0
    centre = (int(round(col_frac * W)) % W)
    # the building (10 m wide at 30 m: ±9.5°) is centred on its azimuth column (circular distance)
    dist = np.minimum(np.abs(cols - centre), W - np.abs(cols - centre))
    assert dist.max() <= math.ceil(W * 10.0 / 360.0)
    assert red[: H // 2, centre].sum() > H // 4          # well above the horizon (40 m tall at 30 m)
    far = (centre + W // 2) % W
    assert not red[:, far].any()                          # nothing in the opposite direction
    assert img[0, far, 2] > img[0, far, 0] + 40                  # blue sky there


def test_road_through_camera_appears_at_expected_columns():
    w = flat_world()
    _, c0 = w.cell(-1.5, 0.0)
    _, c1 = w.cell(1.49, 0.0)
    w.albedo[:, int(c0):int(c1) + 1] = (60, 60, 60)   # a 3 m north–south road under the camera
    w.material[:, int(c0):int(c1) + 1] = ASPHALT
    w.finalise()
    H, W = 64, 256
    img = pano(w, size=(H, W))
    road = is_colour(img, (60, 60, 60))
    below = road[H // 2:]
    frac = below.mean(axis=0)
    for col in (0, W // 2):          # south and north: the road runs to the horizon
        assert frac[col] > 0.9
    for col in (W // 4, 3 * W // 4):  # west and east: only grass
        assert frac[col] == 0.0
    assert not road[: H // 2].any()  # nothing of the road above the horizon


def test_tile_is_north_up_and_centred():
    w = flat_world()
    add_box(w, -2, 2, 20, 24, 5.0, (255, 0, 0))     # 22 m north of the centre
    gain = np.ones((N_MATERIALS, 3), np.float32)
    tile = _render.render_tile(w.height, w.albedo, w.facade, w.material, gain, res=w.res, x0=w.x0, y0=w.y0,
                               center=(0.0, 0.0), size=128, tile_res=0.5, ambient=1.0, hmax=w.hmax, threads=1)
    rr, cc = np.nonzero(is_colour(tile, (255, 0, 0)))
    assert abs(rr.mean() - (64 - 22 / 0.5)) < 1.0 and abs(cc.mean() - 64) < 1.0


# ---- parity with the NumPy reference ----------------------------------------------------------------
def random_world(rng: np.random.Generator, n: int = 64, res: float = 0.5) -> World:
    height = np.zeros((n, n), np.float32)
    for _ in range(8):                               # boxes, some on top of each other
        r, c = rng.integers(0, n - 8, 2)
        height[r:r + rng.integers(2, 10), c:c + rng.integers(2, 10)] += rng.uniform(0.5, 12)
    height += (rng.random((n, n)) < 0.02) * rng.uniform(0, 4, (n, n))
    material = rng.integers(0, N_MATERIALS, (n, n)).astype(np.uint8)
    material[height > 3] = 9                         # buildings get windows
    return World(height.astype(np.float32), rng.integers(0, 256, (n, n, 3), dtype=np.uint8),
                 rng.integers(0, 256, (n, n, 3), dtype=np.uint8), material, res, -n * res / 2 + 0.13,
                 n * res / 2 - 0.07, 40.0, -75.0).finalise()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_panorama_matches_reference(seed):
    rng = np.random.default_rng(seed)
    w = random_world(rng)
    gain = rng.uniform(0.6, 1.4, (N_MATERIALS, 3)).astype(np.float32)
    dist = pano_distances(max_m=40.0, step_m=0.2)
    cam = (float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5)), float(rng.uniform(1.5, 3.0)))
    kw = dict(elev_top=0.9, elev_bottom=-0.7, sun_azimuth=float(rng.uniform(0, 6.28)),
              sun_elevation=float(rng.uniform(0.3, 1.2)), ambient=0.5, shadow_step=0.7, shadow_max=20.0)
    got = _render.render_panorama(w.height, w.albedo, w.facade, w.material, gain, dist, res=w.res, x0=w.x0,
                                  y0=w.y0, camera=cam, size=(24, 96), threads=2, **kw)
    ref = render_panorama_ref(w, gain, dist, cam, (24, 96), **kw)
    diff = np.abs(got.astype(int) - ref.astype(int)).max(axis=-1)
    assert (diff == 0).mean() >= 0.995, f"{(diff > 0).sum()} pixels differ"
    assert np.isin(np.unique(got.reshape(-1, 3), axis=0).shape[0], range(20, 10**6))  # not a flat image


@pytest.mark.parametrize("seed", [3, 4])
def test_tile_matches_reference(seed):
    rng = np.random.default_rng(seed)
    w = random_world(rng)
    gain = rng.uniform(0.6, 1.4, (N_MATERIALS, 3)).astype(np.float32)
    kw = dict(sun_azimuth=float(rng.uniform(0, 6.28)), sun_elevation=float(rng.uniform(0.3, 1.2)), ambient=0.6,
              shadow_step=0.5, shadow_max=15.0)
    centre = (float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)))
    got = _render.render_tile(w.height, w.albedo, w.facade, w.material, gain, res=w.res, x0=w.x0, y0=w.y0,
                              center=centre, size=40, tile_res=0.37, threads=2, **kw)
    ref = render_tile_ref(w, gain, centre, 40, 0.37, **kw)
    diff = np.abs(got.astype(int) - ref.astype(int)).max(axis=-1)
    assert (diff == 0).mean() >= 0.995, f"{(diff > 0).sum()} pixels differ"


# ---- datasets --------------------------------------------------------------------------------------
def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cvusa_root(tmp_path_factory) -> Path:
    return generate_dataset("cvusa", tmp_path_factory.mktemp("cv") / "d", pairs=10, seed=7, **SERIAL)


def test_determinism_and_workers(cvusa_root, tmp_path):
    again = generate_dataset("cvusa", tmp_path / "again", pairs=10, seed=7, workers=2, **TINY)
    assert tree_digest(cvusa_root) == tree_digest(again)
    other = generate_dataset("cvusa", tmp_path / "other", pairs=10, seed=8, **SERIAL)
    a, b = tree_digest(cvusa_root), tree_digest(other)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".jpg")) == 20


def test_cvusa_layout_files(cvusa_root):
    for sub in ("bingmap/19/0000001.jpg", "streetview/panos/0000010.jpg", "splits/train-19zl.csv",
                "splits/val-19zl.csv", "split_locations/all.csv", "meta.json", "contact_sheet.png"):
        assert (cvusa_root / sub).is_file(), sub
    rows = (cvusa_root / "splits/train-19zl.csv").read_text().splitlines() + \
        (cvusa_root / "splits/val-19zl.csv").read_text().splitlines()
    assert sorted(rows) == [f"bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg,annotations/{i:07d}.png"
                            for i in range(1, 11)]
    gps = np.loadtxt(cvusa_root / "split_locations/all.csv", delimiter=",")
    assert gps.shape == (10, 4)
    # ground position within a few metres of the tile centre
    assert np.abs(gps[:, :2] - gps[:, 2:]).max() < 5 / 111_000 * 2


def test_cvusa_load_split(cvusa_root):
    datasets = pytest.importorskip("s4g_engine.datasets", reason="datasets reader not available yet")
    tr = datasets.load_split("cvusa", cvusa_root, "train", strict=True)
    te = datasets.load_split("cvusa", cvusa_root, "test", strict=True)
    assert len(tr.queries) + len(te.queries) == 10 and len(te.queries) == 2
    assert np.isfinite(tr.query_gps).all()
    assert all(Path(q).is_file() for q in tr.queries + tr.references)


def test_vigor_layout_and_offsets(tmp_path):
    datasets = pytest.importorskip("s4g_engine.datasets", reason="datasets reader not available yet")
    from s4g_engine.datasets.vigor import parse_pano_name, parse_sat_name

    root = generate_dataset("vigor", tmp_path / "v", pairs=12, seed=1, **SERIAL)
    assert (root / "meta.json").is_file()
    for name, split in (("vigor-same", "train"), ("vigor-same", "test"), ("vigor-cross", "train"),
                        ("vigor-cross", "test")):
        sp = datasets.load_split(name, root, split, strict=True)
        assert len(sp.queries) > 0
        for q in range(len(sp.queries)):
            plat, plon = parse_pano_name(Path(sp.queries[q]).name)
            idx = [sp.positive[q], *sp.semi_positives[q]]
            assert len(set(int(i) for i in idx)) == 4
            for j, ref in enumerate(idx):
                tlat, tlon = parse_sat_name(Path(sp.references[ref]).name)
                north, east = sp.offsets[q, j]
                lat = tlat + math.degrees(north / 6_371_004.0)
                lon = tlon + math.degrees(east / (6_371_004.0 * math.cos(math.radians(tlat))))
                assert abs(lat - plat) < 2e-7 and abs(lon - plon) < 2e-7
            assert np.abs(sp.offsets[q, 0]).max() <= 64 * 0.5 / 4 + 1e-6   # the positive's central quarter


# ---- the two views are linked ---------------------------------------------------------------------
def test_polar_tile_correlates_with_own_panorama(tmp_path):
    from PIL import Image

    from s4g_engine import polar_transform

    root = generate_dataset("cvusa", tmp_path / "c", pairs=16, seed=3, tile_size=128, pano_size=(64, 256),
                            district_m=500.0, pairs_per_district=16, contact_pairs=0, workers=1)
    H, W, A = 64, 256, 128
    elev = math.pi / 4 - (np.arange(H) + 0.5) * (math.pi / 2) / H
    sigs_t, sigs_p = [], []
    for i in range(1, 17):
        t = np.asarray(Image.open(root / f"bingmap/19/{i:07d}.jpg"), np.float32)
        p = np.asarray(Image.open(root / f"streetview/panos/{i:07d}.jpg"), np.float32)
        polar = np.asarray(polar_transform(t, 64, W))                # (64, W, 3), row 0 = tile edge (32 m)
        r_m = (A / 2) * (64 - 1 - np.arange(64)) / 64 * 0.5           # ground distance of each polar row
        d_m = np.where(elev < 0, 2.5 / np.tan(-np.minimum(elev, -1e-6)), np.inf)  # of each panorama row
        sigs_t.append(polar[(r_m > 4) & (r_m < 28)].mean(axis=0))     # (W, 3) azimuth signature
        sigs_p.append(p[(d_m > 4) & (d_m < 28)].mean(axis=0))

    def z(a):
        a = a - a.mean(axis=0, keepdims=True)
        a = a.ravel()
        return a / (np.linalg.norm(a) + 1e-9)

    A_, B_ = np.stack([z(s) for s in sigs_t]), np.stack([z(s) for s in sigs_p])
    sim = A_ @ B_.T
    own, other = np.diag(sim), sim[~np.eye(len(sim), dtype=bool)]
    assert own.mean() > other.mean() + 0.3, (own.mean(), other.mean())
    ranks = (sim > own[:, None]).sum(axis=1)
    assert (ranks == 0).mean() >= 0.5, ranks                         # most places found by plain correlation


# ---- errors ----------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(tmp_path):
    w = flat_world(20.0)
    w.material[0, 0] = ROOFTOP
    gain = np.ones((N_MATERIALS, 3), np.float32)
    args = (w.height, w.albedo, w.facade, w.material, gain, pano_distances(10.0))
    kw = dict(res=w.res, x0=w.x0, y0=w.y0, camera=(0.0, 0.0, 2.0), size=(8, 32))
    with pytest.raises(ValueError, match="float32"):
        _render.render_panorama(w.height.astype(np.float64), *args[1:], **kw)
    with pytest.raises(ValueError, match="shape"):
        _render.render_panorama(w.height, w.albedo[:-1], *args[2:], **kw)
    with pytest.raises(ValueError, match="material"):
        _render.render_panorama(*args[:4], gain[:3], args[5], **kw)
    with pytest.raises(ValueError, match="increasing"):
        _render.render_panorama(*args[:5], np.array([1.0, 0.5]), **kw)
    with pytest.raises(ValueError, match="sun_elevation"):
        _render.render_panorama(*args, **kw, sun_elevation=0.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _render.render_tile(w.height, np.asfortranarray(w.albedo), w.facade, w.material, gain, res=w.res, x0=w.x0,
                            y0=w.y0, center=(0.0, 0.0), size=8, tile_res=0.5)
    with pytest.raises(ValueError, match="layout"):
        generate_dataset("kitti", tmp_path / "x", pairs=4)
    with pytest.raises(ValueError, match="pairs"):
        generate_dataset("cvusa", tmp_path / "x", pairs=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="force"):
        generate_dataset("cvusa", tmp_path / "full", pairs=2, **SERIAL)
    from s4g_synth.cli import main

    assert main(["--layout", "cvusa", "--out", str(tmp_path / "full"), "--pairs", "2"]) == 2


# ---- package boundaries ----------------------------------------------------------------------------
def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::DeprecationWarning:__main__", "-c", code],
                          capture_output=True, text=True, timeout=300)


def test_synth_does_not_import_torch_or_the_trainer(tmp_path):
    code = ("import sys; from s4g_synth import generate_dataset; import s4g_synth.cli, s4g_synth.reference; "
            f"generate_dataset('cvusa', {str(tmp_path / 'w')!r}, pairs=2, seed=0, tile_size=32, pano_size=(16, 64), "
            "district_m=300.0, contact_pairs=1, workers=1); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 's4g_train', 'timm')))")
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_engine_does_not_import_synth():
    code = ("import sys, s4g_engine, s4g_engine.cli, s4g_engine.datasets; "
            "print(sorted(m for m in sys.modules if m.startswith(('s4g_synth', 's4g_engine.synth'))))")
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_old_import_path_warns_and_reexports():
    import importlib
    import warnings

    import s4g_synth

    sys.modules.pop("s4g_engine.synth", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("s4g_engine.synth")
    assert any(issubclass(w.category, DeprecationWarning) and "s4g_synth" in str(w.message) for w in caught)
    assert old.generate_dataset is s4g_synth.generate_dataset
    assert old.GENERATOR_VERSION == s4g_synth.GENERATOR_VERSION
    assert old.SynthConfig is s4g_synth.GeneratorConfig            # the old name of the generator's config
    with pytest.raises(AttributeError, match="s4g_synth"):
        _ = old.nothing_here
    # the warning names the importing code, so Python's default filters show it in a script
    proc = _fresh("import s4g_engine.synth")
    assert proc.returncode != 0 and "DeprecationWarning" in proc.stderr and "s4g_synth" in proc.stderr


def test_missing_pieces_give_clear_errors(monkeypatch):
    import argparse

    import s4g_synth
    from s4g_engine.errors import DependencyError
    from s4g_synth import capture

    monkeypatch.delattr(s4g_synth, "_render", raising=False)
    monkeypatch.setitem(sys.modules, "s4g_synth._render", None)     # the compiled renderer is not built
    with pytest.raises(DependencyError, match="s4g_synth._render is not built"):
        capture.render_tile(flat_world(20.0), (0.0, 0.0), 8, 0.5, capture.sample_conditions(np.random.default_rng(0)))
    monkeypatch.setitem(sys.modules, "s4g_synth", None)             # the package itself is missing
    from s4g_engine.cli import _demo

    with pytest.raises(DependencyError, match="--demo needs the synthetic-world package s4g_synth"):
        _demo(argparse.Namespace())
