"""Writers of the real dataset layouts (docs/METHOD.md §6) for synthetic data: CVUSA and VIGOR.

Every file is written atomically through :mod:`s4g_engine.fileio`.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from s4g_engine.fileio import atomic_write_text

logger = logging.getLogger(__name__)

VIGOR_CITIES = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
# Real anchors (city centres); districts of one city are spread 0.05° apart around them.
CITY_ANCHORS = {"Chicago": (41.8781, -87.6298), "NewYork": (40.7128, -74.0060),
                "SanFrancisco": (37.7749, -122.4194), "Seattle": (47.6062, -122.3321)}
# CVUSA covers the whole US: its districts cycle through these anchors.
US_ANCHORS = ((39.7392, -104.9903), (35.2271, -80.8431), (44.9778, -93.2650), (32.7767, -96.7970),
              (45.5152, -122.6784), (33.4484, -112.0740), (42.3601, -71.0589), (29.7604, -95.3698),
              (39.9612, -82.9988), (36.1627, -86.7816), (38.2527, -85.7585), (43.0389, -87.9065))


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """uint8 (H, W, 3) → JPEG/PNG bytes (deterministic for the same input)."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(image)
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 95 else 2, optimize=False)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image format: expected 'jpg' or 'png', got {fmt!r}")
    return buf.getvalue()


# ---- CVUSA -----------------------------------------------------------------------------------------
def cvusa_paths(pair_id: int) -> tuple[str, str, str]:
    """Relative (satellite, panorama, annotation) paths of CVUSA pair ``pair_id`` (1-based)."""
    return (f"bingmap/19/{pair_id:07d}.jpg", f"streetview/panos/{pair_id:07d}.jpg", f"annotations/{pair_id:07d}.png")


def write_cvusa_index(out: Path, ids: np.ndarray, gps: np.ndarray, val_mask: np.ndarray) -> None:
    """Split CSVs and ``split_locations/all.csv``.

    ids: int (N,) 1-based pair ids, must be exactly 1..N; gps: f64 (N, 4) sat_lat, sat_lon, ground_lat,
    ground_lon (row id−1); val_mask: bool (N,) pairs of the val (= test) split.
    """
    order = np.argsort(ids)
    ids, gps, val_mask = ids[order], gps[order], val_mask[order]
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        raise ValueError("CVUSA pair ids must be exactly 1..N")
    rows = [",".join(cvusa_paths(int(i))) for i in ids]
    pairs = list(zip(rows, val_mask, strict=True))
    atomic_write_text(out / "splits" / "train-19zl.csv", "".join(r + "\n" for r, v in pairs if not v))
    atomic_write_text(out / "splits" / "val-19zl.csv", "".join(r + "\n" for r, v in pairs if v))
    atomic_write_text(out / "split_locations" / "all.csv",
                      "".join(f"{a:.8f},{b:.8f},{c:.8f},{d:.8f}\n" for a, b, c, d in gps))


# ---- VIGOR -----------------------------------------------------------------------------------------
def vigor_pano_name(prefix: str, lat: float, lon: float) -> str:
    return f"{prefix},{lat:.7f},{lon:.7f},.jpg"


def vigor_sat_name(lat: float, lon: float) -> str:
    return f"satellite_{lat:.7f}_{lon:.7f}.png"


def write_vigor_city_index(out: Path, city: str, tiles: list[str], rows: list[tuple[str, list[str], np.ndarray]],
                           test_mask: np.ndarray) -> None:
    """``splits/<City>/`` files.

    tiles: all tile names of the city (the gallery); rows: (pano name, [pos, semi1, semi2, semi3] tile
    names, deltas f64 (4, 2) in VIGOR's pixel convention); test_mask: bool per row (same-area test).
    """
    lines = []
    for pano, sats, delta in rows:
        parts = [pano]
        for s, (d0, d1) in zip(sats, delta, strict=True):
            parts += [s, f"{d0:.4f}", f"{d1:.4f}"]
        lines.append(" ".join(parts) + "\n")
    base = out / "splits" / city
    atomic_write_text(base / "satellite_list.txt", "".join(t + "\n" for t in tiles))
    atomic_write_text(base / "pano_label_balanced.txt", "".join(lines))
    atomic_write_text(base / "same_area_balanced_train.txt", "".join(
        ln for ln, t in zip(lines, test_mask, strict=True) if not t))
    atomic_write_text(base / "same_area_balanced_test.txt", "".join(
        ln for ln, t in zip(lines, test_mask, strict=True) if t))


def write_meta(out: Path, meta: dict) -> None:
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
