"""Small synthetic galleries for the cluster/serving tests: random smooth tiles (JPEG and PNG), a coords CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = Path(__file__).resolve().parents[2] / "models" / "s4g-synthetic"


def smooth_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A random smooth RGB image (low-frequency noise upsampled), so JPEG coding is realistic."""
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def make_gallery(folder: Path, n: int, seed: int = 0, size: int = 72) -> tuple[Path, Path]:
    """``n`` tiles in ``folder/tiles`` (every third one PNG) + ``folder/tiles.csv`` (image, lat, lon, id)."""
    rng = np.random.default_rng(seed)
    tiles = folder / "tiles"
    tiles.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"t{i:05d}.{'png' if i % 3 == 0 else 'jpg'}"
        smooth_image(rng, size, size).save(tiles / name)
        rows.append((name, 47.0 + 0.01 * (i // 20) + 1e-4 * i, 8.0 + 0.01 * (i % 20), f"tile-{i}"))
    csv_path = folder / "tiles.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "lat", "lon", "id"])
        w.writerows(rows)
    return tiles, csv_path


def make_queries(folder: Path, n: int, seed: int = 1) -> list[Path]:
    """``n`` ground photos (JPEG, panorama-shaped)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"q{i:03d}.jpg"
        smooth_image(rng, 64, 256).save(p, quality=90)
        out.append(p)
    return out
