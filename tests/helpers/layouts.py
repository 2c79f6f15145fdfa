"""Builders of tiny datasets in the EXACT on-disk layouts of docs/METHOD.md §6 (CVUSA, CVACT, VIGOR, University-1652).

Reusable by every test: each ``make_*`` writes a complete, healthy folder under ``root`` and returns it.
Images are small (the nominal sizes divided by ``scale``, same aspect ratio) so the fixtures are fast;
``scale=1`` writes the real sizes. Everything is deterministic for a seed.

Ground truth the tests can rely on:

- CVUSA: satellite id ``i`` (1-based) has ``sat = cvusa_sat_gps(i)``, ``ground = cvusa_ground_gps(i)``;
  train ids are 1..n_train, val/test ids n_train+1..n_train+n_test (rows in that order).
- CVACT: ``make_cvact`` returns the root; ``cvact_truth(root)`` (JSON written next to the .mat, outside the
  layout) gives ids, UTM and split indices.
- VIGOR: each panorama's name holds its true lat/lon, and the split rows hold (d0, d1) pixel offsets written
  with ``s4g_engine.datasets.vigor.pixel_delta`` (the reader's sign convention).
- University: class ids are the folder names (``0001`` …).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "make_cvusa", "make_cvact", "make_vigor", "make_university", "write_image",
    "cvusa_sat_gps", "cvusa_ground_gps", "cvact_truth", "CVACT_UTM_ORIGIN",
]

CVACT_UTM_ORIGIN = (692_000.0, 6_094_000.0)  # easting, northing (m) in UTM 55S: central Canberra


def write_image(path: Path, width: int, height: int, rng: np.random.Generator) -> None:
    """Write a random-colour image of the given size; format from the suffix (JPEG or PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, size=3)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = base
    img[:, : max(1, width // 3)] = 255 - base  # a little structure
    Image.fromarray(img).save(path)


def _size(nominal: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(4, round(nominal[0] / scale)), max(4, round(nominal[1] / scale))


# ---------------------------------------------------------------------------------------------- CVUSA

def cvusa_sat_gps(i: int) -> tuple[float, float]:
    return 40.0 + 0.001 * i, -100.0 - 0.0007 * i


def cvusa_ground_gps(i: int) -> tuple[float, float]:
    la, lo = cvusa_sat_gps(i)
    return la + 1e-5, lo - 1e-5


def make_cvusa(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 0, *, scale: float = 8.0,
               gps: bool = True) -> Path:
    """CVUSA layout: splits/train-19zl.csv, splits/val-19zl.csv, split_locations/all.csv, images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    sat_wh, pano_wh = _size((750, 750), scale), _size((1232, 224), scale)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    n = n_train + n_test
    rows = []
    for i in range(1, n + 1):
        sat = f"bingmap/19/{i:07d}.jpg"
        pano = f"streetview/panos/{i:07d}.jpg"
        write_image(root / sat, *sat_wh, rng)
        write_image(root / pano, *pano_wh, rng)
        rows.append(f"{sat},{pano},annotations/{i:07d}.png")
    (root / "splits" / "train-19zl.csv").write_text("\n".join(rows[:n_train]) + "\n")
    (root / "splits" / "val-19zl.csv").write_text("\n".join(rows[n_train:]) + "\n")
    if gps:
        (root / "split_locations").mkdir(exist_ok=True)
        lines = []
        for i in range(1, n + 1):
            s, g = cvusa_sat_gps(i), cvusa_ground_gps(i)
            lines.append(f"{s[0]:.8f},{s[1]:.8f},{g[0]:.8f},{g[1]:.8f},{i}")
        (root / "split_locations" / "all.csv").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------------------------- CVACT

def _pano_id(rng: np.random.Generator) -> str:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    return "".join(rng.choice(alphabet, size=22))


def make_cvact(root: Path, n_train: int = 6, n_val: int = 4, n_test: int = 5, seed: int = 0, *,
               scale: float = 16.0, cell_ids: bool = False) -> Path:
    """CVACT layout: ACT_data.mat (scipy.io.savemat) + ANU_data_small/ + ANU_data_test/.

    ``cell_ids=True`` stores panoIds as a MATLAB cell array instead of a char matrix (both occur).
    The mat also holds one extra id (index N) that no split uses, as the real file holds more ids than used.
    """
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test + 1
    ids = [_pano_id(rng) for _ in range(n)]
    utm = np.stack([CVACT_UTM_ORIGIN[0] + rng.uniform(-3000, 3000, n),
                    CVACT_UTM_ORIGIN[1] + rng.uniform(-3000, 3000, n)], axis=1)
    perm = rng.permutation(n - 1)  # 0-based indices into ids, shuffled like the real file
    tr, va, te = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    sat_wh, pano_wh = _size((1200, 1200), scale), _size((1664, 832), scale)
    for folder, sel in (("ANU_data_small", np.concatenate([tr, va])), ("ANU_data_test", te)):
        for k in sel:
            write_image(root / folder / "streetview" / f"{ids[k]}_grdView.jpg", *pano_wh, rng)
            write_image(root / folder / "satview_polish" / f"{ids[k]}_satView_polish.jpg", *sat_wh, rng)
    pano_ids: object = np.array(ids, dtype=object).reshape(-1, 1) if cell_ids else np.array(ids)
    col = lambda a: (a + 1).astype(np.float64).reshape(-1, 1)  # noqa: E731 - MATLAB: 1-based doubles
    savemat(root / "ACT_data.mat", {
        "panoIds": pano_ids, "utm": utm,
        "trainSet": {"trainNum": float(len(tr)), "trainInd": col(tr)},
        "valSet": {"valNum": float(len(va)), "valInd": col(va)},
        "valSetAll": {"valNum": float(len(te)), "valInd": col(te)},
    })
    truth = {"ids": ids, "utm": utm.tolist(), "train": tr.tolist(), "val": va.tolist(), "test": te.tolist()}
    (root.parent / f"{root.name}.truth.json").write_text(json.dumps(truth))
    return root


def cvact_truth(root: Path) -> dict:
    """Ground truth of a ``make_cvact`` folder (0-based split indices into ids/utm)."""
    root = Path(root)
    return json.loads((root.parent / f"{root.name}.truth.json").read_text())


# ---------------------------------------------------------------------------------------------- VIGOR

VIGOR_ANCHORS = {"Chicago": (41.88, -87.63), "NewYork": (40.75, -73.99),
                 "SanFrancisco": (37.77, -122.42), "Seattle": (47.61, -122.33)}


def make_vigor(root: Path, grid: int = 4, panos_per_city: int = 6, seed: int = 0, *, scale: float = 16.0,
               metres_per_pixel: float | None = None) -> Path:
    """VIGOR layout for the four cities: a ``grid``×``grid`` tile grid at 50% overlap per city, panoramas at
    random positions inside the central quarter of an interior tile, positive + 3 semi-positives + offsets.

    Writes ``meta.json`` only when ``metres_per_pixel`` is given (real VIGOR has none; 0.114 is implied).
    Same-area train/test alternate the panoramas; pano_label_balanced.txt lists them all.
    """
    from s4g_engine.datasets.vigor import pixel_delta
    from s4g_engine.geo import offset_latlon

    if grid < 3:
        raise ValueError("grid must be >= 3 (panoramas sit in interior tiles)")
    root = Path(root)
    rng = np.random.default_rng(seed)
    mpp = 0.114 if metres_per_pixel is None else metres_per_pixel
    if metres_per_pixel is not None:
        (root).mkdir(parents=True, exist_ok=True)
        (root / "meta.json").write_text(json.dumps({"metres_per_pixel": metres_per_pixel, "synthetic": True}))
    tile_m = 640 * mpp
    step = tile_m / 2
    sat_wh, pano_wh = _size((640, 640), scale), _size((2048, 1024), scale)
    for city, (la0, lo0) in VIGOR_ANCHORS.items():
        sdir = root / "splits" / city
        sdir.mkdir(parents=True, exist_ok=True)
        names = {}
        for i in range(grid):          # i: north index, j: east index
            for j in range(grid):
                la, lo = offset_latlon(la0, lo0, i * step, j * step)
                nm = f"satellite_{float(la):.12f}_{float(lo):.12f}.png"
                names[(i, j)] = nm
                write_image(root / city / "satellite" / nm, *sat_wh, rng)
        (sdir / "satellite_list.txt").write_text("\n".join(names[k] for k in sorted(names)) + "\n")
        rows = []
        for _ in range(panos_per_city):
            i, j = (int(x) for x in rng.integers(1, grid - 1, size=2))
            dn, de = rng.uniform(-step / 2, step / 2, size=2)
            n_m, e_m = i * step + dn, j * step + de
            la, lo = offset_latlon(la0, lo0, n_m, e_m)
            pano = f"{_pano_id(rng)},{float(la):.12f},{float(lo):.12f},.jpg"
            write_image(root / city / "panorama" / pano, *pano_wh, rng)
            si, sj = (1 if dn >= 0 else -1), (1 if de >= 0 else -1)
            tiles = [(i, j), (i + si, j), (i, j + sj), (i + si, j + sj)]
            fields = [pano]
            for ti, tj in tiles:
                d0, d1 = pixel_delta(n_m - ti * step, e_m - tj * step, mpp)
                fields += [names[(ti, tj)], repr(float(d0)), repr(float(d1))]
            rows.append(" ".join(fields))
        (sdir / "same_area_balanced_train.txt").write_text("\n".join(rows[0::2]) + "\n")
        (sdir / "same_area_balanced_test.txt").write_text("\n".join(rows[1::2]) + "\n")
        (sdir / "pano_label_balanced.txt").write_text("\n".join(rows) + "\n")
    return root


# ---------------------------------------------------------------------------------------------- University

def make_university(root: Path, n_train_classes: int = 3, n_test_classes: int = 4, drones_per_class: int = 3,
                    n_distractors: int = 2, seed: int = 0, *, scale: float = 16.0) -> Path:
    """University-1652 layout: train/{satellite,drone,street,google}/<class>/, test/{query_drone,
    gallery_satellite,query_satellite,gallery_drone}/<class>/. Test classes are numbered after the train
    classes; ``n_distractors`` extra classes appear only in the galleries."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    wh = _size((512, 512), scale)
    for c in range(1, n_train_classes + 1):
        name = f"{c:04d}"
        write_image(root / "train" / "satellite" / name / f"{name}.jpg", *wh, rng)
        for d in range(drones_per_class):
            write_image(root / "train" / "drone" / name / f"image-{d + 1:02d}.jpeg", *wh, rng)
        write_image(root / "train" / "street" / name / "0.jpg", *wh, rng)
        write_image(root / "train" / "google" / name / "0.jpg", *wh, rng)
    first = n_train_classes + 1
    for c in range(first, first + n_test_classes + n_distractors):
        name = f"{c:04d}"
        query_class = c < first + n_test_classes
        write_image(root / "test" / "gallery_satellite" / name / f"{name}.jpg", *wh, rng)
        for d in range(drones_per_class):
            write_image(root / "test" / "gallery_drone" / name / f"image-{d + 1:02d}.jpeg", *wh, rng)
        if query_class:
            write_image(root / "test" / "query_satellite" / name / f"{name}.jpg", *wh, rng)
            for d in range(drones_per_class):
                write_image(root / "test" / "query_drone" / name / f"image-{d + 1:02d}.jpeg", *wh, rng)
    return root
