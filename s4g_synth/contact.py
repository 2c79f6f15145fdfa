"""Contact sheet: a grid of sample pairs (tile, panorama, polar transform of the tile) for a quick look."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from s4g_engine.fileio import atomic_write_with

logger = logging.getLogger(__name__)


def _polar(tile: np.ndarray, height: int, width: int) -> np.ndarray | None:
    try:
        from s4g_engine import polar_transform
    except ImportError as exc:  # the core may be missing in a partial build
        logger.warning("contact sheet: s4g_engine.polar_transform unavailable (%s); skipping the polar column", exc)
        return None
    return np.clip(np.asarray(polar_transform(tile, height, width)) + 0.5, 0, 255).astype(np.uint8)


def contact_sheet(pairs: list[tuple[Path, Path]], out: Path, *, pano_size: tuple[int, int] = (128, 512),
                  gap: int = 4) -> Path:
    """Write a PNG with one row per (tile path, panorama path): tile | panorama | polar(tile).

    Each image is resized to height ``pano_size[0]`` (panorama and polar to ``pano_size``). Returns ``out``.
    """
    from PIL import Image

    if not pairs:
        raise ValueError("contact_sheet: expected at least one (tile, panorama) pair")
    h, w = pano_size
    rows = []
    for tile_path, pano_path in pairs:
        tile = np.asarray(Image.open(tile_path).convert("RGB"))
        pano = np.asarray(Image.open(pano_path).convert("RGB").resize((w, h), Image.BILINEAR))
        polar = _polar(tile, h, w)
        parts = [np.asarray(Image.fromarray(tile).resize((h, h), Image.BILINEAR)), pano]
        if polar is not None:
            parts.append(polar)
        row = np.full((h, sum(p.shape[1] for p in parts) + gap * (len(parts) - 1), 3), 255, np.uint8)
        x = 0
        for p in parts:
            row[:, x:x + p.shape[1]] = p
            x += p.shape[1] + gap
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    sheet = np.full((len(rows) * (h + gap) - gap, width, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        sheet[i * (h + gap): i * (h + gap) + h, : r.shape[1]] = r
    atomic_write_with(out, lambda f: Image.fromarray(sheet).save(f, format="PNG"))
    return out
