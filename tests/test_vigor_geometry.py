"""Image content of VIGOR-layout pairs (issue 17): the panorama shows what lies around the LABELLED camera
position in its positive tile (offset sign, north-up tile, column ↔ azimuth), not what lies around the tile
centre; and the paired flip / rot90 ↔ roll augmentation keeps that true for an off-centre camera (the camera
moves with the tile, as in a rigid turn or mirror of the world about the tile centre).

The check is a plain colour correlation: the panorama's ground band a few metres from the camera, averaged per
column, against the tile's colours on a ring of the same radii around a hypothesised camera pixel, per azimuth.
A wrong offset sign, swapped axes or a mirrored azimuth convention drop it to about zero (they are asserted
against), so these tests fail if the generator, the reader's offsets or the augmentation disagree."""

from __future__ import annotations

import math

import numpy as np
import pytest

A, H, W = 128, 64, 256            # tile side (px), panorama (rows, columns)
MPP = 0.5                         # metres per tile pixel
RING_M = np.linspace(4.0, 12.0, 9)  # ground radii of the signature (m)
CAM_H = 2.5                       # mid camera height (the generator draws 2–3 m)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(panorama float (H, W, 3), positive tile float (A, A, 3), (north_m, east_m) offset) of every panorama of a
    tiny VIGOR world whose camera sits clearly off the tile centre."""
    from PIL import Image

    from s4g_engine.datasets import load_split
    from s4g_synth import generate_dataset

    root = generate_dataset("vigor", tmp_path_factory.mktemp("vg") / "w", pairs=24, seed=5, tile_size=A,
                            pano_size=(H, W), pairs_per_district=6, contact_pairs=0, workers=1)
    out = []
    for split in ("train", "test"):  # vigor-cross: train = NewYork + Seattle, test = Chicago + SanFrancisco
        sp = load_split("vigor-cross", root, split, strict=True)
        assert sp.metres_per_pixel == MPP
        for q in range(len(sp.queries)):
            off = sp.offsets[q, 0]
            if np.hypot(*off) < 6.0:  # too close to the centre to tell the hypotheses apart
                continue
            pano = np.asarray(Image.open(sp.queries[q]).convert("RGB"), np.float64)
            tile = np.asarray(Image.open(sp.references[sp.positive[q]]).convert("RGB"), np.float64)
            out.append((pano, tile, off))
    assert len(out) >= 10, f"only {len(out)} off-centre panoramas in the test world"
    return out


def pano_signature(pano: np.ndarray) -> np.ndarray:
    """(W, 3) mean colour per column over the rows that look at the ground RING_M away."""
    elev = math.pi / 4 - (np.arange(pano.shape[0]) + 0.5) * (math.pi / 2) / pano.shape[0]  # rows span ±45°
    with np.errstate(divide="ignore"):
        d = np.where(elev < 0, CAM_H / np.tan(-elev), np.inf)
    return pano[(d >= RING_M[0]) & (d <= RING_M[-1])].mean(axis=0)


def tile_signature(tile: np.ndarray, north_m: float, east_m: float, w: int) -> np.ndarray:
    """(w, 3) mean tile colour per azimuth on the ring around the point (north_m, east_m) from the tile centre.

    Column j of a panorama looks at azimuth 2π·j/w − π clockwise from north (centre column north, W/4 west)."""
    from scipy.ndimage import map_coordinates

    az = 2 * np.pi * np.arange(w) / w - np.pi
    c = (tile.shape[0] - 1) / 2
    rows = c - (north_m + RING_M[:, None] * np.cos(az)[None]) / MPP   # north = up
    cols = c + (east_m + RING_M[:, None] * np.sin(az)[None]) / MPP    # east = right
    return np.stack([map_coordinates(tile[..., k], [rows, cols], order=1, mode="nearest").mean(axis=0)
                     for k in range(3)], axis=-1)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a = (a - a.mean(axis=0)) / (a.std(axis=0) + 1e-6)
    b = (b - b.mean(axis=0)) / (b.std(axis=0) + 1e-6)
    return float((a * b).mean())


def mean_corr(pairs, where) -> float:
    """Mean signature correlation with the camera hypothesised at ``where(north_m, east_m)``."""
    return float(np.mean([corr(pano_signature(p), tile_signature(t, *where(*off), p.shape[1]))
                          for p, t, off in pairs]))


def test_panorama_matches_its_tile_around_the_labelled_camera(pairs):
    at_camera = mean_corr(pairs, lambda n, e: (n, e))
    others = {"tile centre": mean_corr(pairs, lambda n, e: (0.0, 0.0)),
              "offset sign flipped": mean_corr(pairs, lambda n, e: (-n, -e)),
              "north/east swapped": mean_corr(pairs, lambda n, e: (e, n))}
    assert at_camera > 0.3, at_camera
    for name, v in others.items():
        assert at_camera > v + 0.2, (name, at_camera, v)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("r", [0, 1, 2, 3])
def test_paired_augmentation_moves_the_camera_with_the_tile(pairs, flip, r):
    from s4g_train.data import geometric

    def moved(n: float, e: float) -> tuple[float, float]:
        """The camera after the world is mirrored east↔west (flip) and turned r·90° counter-clockwise."""
        if flip:
            e = -e
        for _ in range(r):
            n, e = e, -n   # counter-clockwise: what lay east now lies north
        return n, e

    aug = []
    for p, t, off in pairs:
        g, a = geometric(p, t, flip, r)
        aug.append((g, a, np.asarray(moved(*off))))
    at_moved = mean_corr(aug, lambda n, e: (n, e))
    assert at_moved > 0.3, at_moved
    # the camera left at its un-augmented pixel must not match (pairs where the augmentation moved it ≥ 6 m)
    far = [(g, a, off) for (g, a, new), (_, _, off) in zip(aug, pairs, strict=True) if np.hypot(*(new - off)) >= 6]
    if flip or r:
        assert len(far) >= 5, len(far)
        stale = mean_corr(far, lambda n, e: (n, e))
        assert at_moved > stale + 0.2, (at_moved, stale)
