"""VIGOR reader, same-area and cross-area (docs/METHOD.md §6).

Layout::

    ROOT/<City>/panorama/<prefix>,<lat>,<lon>,.jpg       2048×1024 panoramas
    ROOT/<City>/satellite/satellite_<lat>_<lon>.png      640×640 tiles, ~0.114 m/px
    ROOT/splits/<City>/satellite_list.txt                one tile name per line (the gallery of the city)
    ROOT/splits/<City>/same_area_balanced_{train,test}.txt
    ROOT/splits/<City>/pano_label_balanced.txt           (cross-area)
    ROOT/meta.json                                       optional: {"metres_per_pixel": …} (synthetic data)

Split rows: ``pano pos d0 d1 semi1 d0 d1 semi2 d0 d1 semi3 d0 d1`` (whitespace-separated).

**Offset sign convention** (from the VIGOR reference code, ``evaluate_from_npy.py``: the predicted position is
``centre − Lat_Lng(centre)·delta/320`` and the offset is drawn at column ``320 − delta[1]``, row
``320 + delta[0]``): ``d0`` is the panorama's offset from the tile centre in pixel *rows* (positive =
south of the centre), ``d1`` is minus its offset in pixel *columns* (positive = west of the centre). So

    north_m = −d0 · metres_per_pixel,   east_m = −d1 · metres_per_pixel

and ``offsets[q, j] = (north_m, east_m)`` is the panorama's position relative to the centre of tile j
(j = 0 the positive, 1..3 the semi-positives). The panorama's true position is
``geo.offset_latlon(*tile_centre, north_m, east_m)``. Writers of VIGOR-layout data (the synthetic world)
must use :func:`pixel_delta` to produce ``(d0, d1)`` from a metric offset.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from s4g_engine.errors import FormatError, InputError

from ._io import DirIndex, MalformedRowError, check_name, read_rows
from .base import CrossViewSplit, missing_images

logger = logging.getLogger(__name__)

CITIES = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
CROSS_TRAIN = ("NewYork", "Seattle")
CROSS_TEST = ("Chicago", "SanFrancisco")
DEFAULT_METRES_PER_PIXEL = 0.114
META_FILE = "meta.json"
#: Largest |pixel offset| a label row may hold: a panorama lies inside its four tiles (VIGOR: ≤ 320 px of a
#: 640-px tile); far beyond any real tile, it only stops garbage such as 1e308 from becoming a position.
MAX_DELTA_PX = 100_000.0
_ROW = "13 whitespace-separated fields: pano pos_sat d0 d1 semi1 d0 d1 semi2 d0 d1 semi3 d0 d1"


def pixel_delta(north_m: np.ndarray, east_m: np.ndarray, metres_per_pixel: float) -> np.ndarray:
    """Inverse of the reader's convention: metric offset of the panorama from a tile centre → (d0, d1) px."""
    return np.stack([-np.asarray(north_m, np.float64) / metres_per_pixel,
                     -np.asarray(east_m, np.float64) / metres_per_pixel], axis=-1)


def offsets_from_delta(delta: np.ndarray, metres_per_pixel: float) -> np.ndarray:
    """(…, 2) pixel (d0, d1) from a split file → (…, 2) (north_m, east_m); see the module docstring."""
    return -np.asarray(delta, np.float64) * metres_per_pixel


def parse_pano_name(name: str) -> tuple[float, float]:
    """``<prefix>,<lat>,<lon>,.jpg`` → (lat, lon). Raises ValueError."""
    parts = name.split(",")
    if len(parts) < 4:
        raise ValueError(name)
    return float(parts[-3]), float(parts[-2])


def parse_sat_name(name: str) -> tuple[float, float]:
    """``satellite_<lat>_<lon>.png`` → (lat, lon). Raises ValueError."""
    stem = os.path.splitext(name)[0]
    parts = stem.split("_")
    if len(parts) < 3:
        raise ValueError(name)
    return float(parts[-2]), float(parts[-1])


def read_metres_per_pixel(root: Path) -> float:
    """Ground resolution: ``meta.json``'s ``metres_per_pixel`` if present (synthetic data), else 0.114."""
    meta = root / META_FILE
    if not meta.is_file():
        return DEFAULT_METRES_PER_PIXEL
    try:
        value = float(json.loads(meta.read_text(encoding="utf-8-sig"))["metres_per_pixel"])
    except KeyError:
        return DEFAULT_METRES_PER_PIXEL
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{meta}: expected JSON with a positive number 'metres_per_pixel' ({exc})") from exc
    if not value > 0:
        raise FormatError(f"{meta}: metres_per_pixel must be > 0, got {value}")
    return value


def cities_for(name: str, split: str) -> tuple[tuple[str, ...], str]:
    """Cities and split-file name of a (loader name, split)."""
    if name == "vigor-same":
        return CITIES, f"same_area_balanced_{split}.txt"
    if name == "vigor-cross":
        return (CROSS_TRAIN if split == "train" else CROSS_TEST), "pano_label_balanced.txt"
    raise InputError(f"unknown VIGOR variant {name!r}")


def _read_label_file(path: Path) -> tuple[list[str], list[list[str]], np.ndarray, list[int]]:
    """→ panos (Q,), sats (Q, 4) names, deltas f64 (Q, 4, 2), line numbers."""
    rows = read_rows(path, "vigor", hint="the split files come in VIGOR's splits.zip (authors' GitHub "
                     "Jeff-Zilence/VIGOR); unzip it into ROOT/splits/")
    panos, sats, nums, lines = [], [], [], []
    for i, line in rows:
        t = line.split()
        if len(t) != 13:
            raise MalformedRowError(path, i, line, _ROW)
        where = f"{path}:{i}"
        panos.append(check_name(t[0], where))
        sats.append([check_name(t[k], where) for k in (1, 4, 7, 10)])
        nums.append((t[2], t[3], t[5], t[6], t[8], t[9], t[11], t[12]))
        lines.append(i)
    try:
        deltas = np.array(nums, dtype=np.float64).reshape(-1, 4, 2)
    except ValueError:
        for (i, line), n in zip(rows, nums, strict=True):  # locate the bad line (slow path, only on error)
            try:
                [float(x) for x in n]
            except ValueError:
                raise MalformedRowError(path, i, line, _ROW + " (offsets must be numbers)") from None
        raise
    sane = np.isfinite(deltas) & (np.abs(deltas) <= MAX_DELTA_PX)
    if not np.all(sane):
        k = int(np.flatnonzero(~sane.reshape(len(rows), -1).all(axis=1))[0])
        raise MalformedRowError(path, rows[k][0], rows[k][1], _ROW + f" (finite offsets of at most {MAX_DELTA_PX:g} "
                                "pixels: a panorama lies inside its tiles, |offset| ≤ half the tile side)")
    return panos, sats, deltas, lines


def _read_gallery(root: Path, cities: tuple[str, ...], index: DirIndex
                  ) -> tuple[list[str], list[np.ndarray], dict[str, dict[str, int]], dict[str, set[str]], list[str]]:
    """Every tile of the cities' ``satellite_list.txt`` → (paths of the existing tiles, their (lat, lon) per city,
    city → tile name → reference index, city → every listed name, missing tiles)."""
    ref_paths: list[str] = []
    ref_gps: list[np.ndarray] = []
    tile_index: dict[str, dict[str, int]] = {}    # city -> tile name -> reference index (existing tiles)
    listed: dict[str, set[str]] = {}              # city -> every tile name in satellite_list.txt
    missing_tiles: list[str] = []
    for city in cities:
        lst_path = root / "splits" / city / "satellite_list.txt"
        rows = read_rows(lst_path, "vigor", hint="unzip VIGOR's splits.zip into ROOT/splits/")
        names = [check_name(line.split()[0], f"{lst_path}:{i}") for i, line in rows]
        gps = _parse_names(names, parse_sat_name, lst_path, rows, "satellite_<lat>_<lon>.png")
        sat_dir = root / city / "satellite"
        ok = np.array(index.exists_many(sat_dir, names), bool)
        base = str(sat_dir) + os.sep
        listed[city] = set(names)
        start = len(ref_paths)
        kept = [nm for nm, o in zip(names, ok, strict=True) if o]
        tile_index[city] = {nm: start + k for k, nm in enumerate(kept)}
        ref_paths.extend(base + nm for nm in kept)
        ref_gps.append(gps[ok])
        missing_tiles.extend(f"{city}/satellite/{nm}" for nm, o in zip(names, ok, strict=True) if not o)
    return ref_paths, ref_gps, tile_index, listed, missing_tiles


def _read_queries(root: Path, cities: tuple[str, ...], label_name: str, listed: dict[str, set[str]],
                  tile_index: dict[str, dict[str, int]], index: DirIndex) -> tuple[
                      list[str], list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray], list[str],
                      int, int]:
    """The panoramas of the cities' label files whose positive tile exists → (paths, (lat, lon), positive and
    semi-positive reference ids, offsets, missing panoramas, panoramas dropped for a missing positive tile,
    semi-positive entries dropped for a missing tile), per city."""
    q_paths: list[str] = []
    q_gps: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    semi: list[np.ndarray] = []
    offs: list[np.ndarray] = []
    missing_panos: list[str] = []
    lost_positive = 0
    lost_semi = 0
    for city in cities:
        lbl = root / "splits" / city / label_name
        panos, sats, deltas, lines = _read_label_file(lbl)
        unknown = {t for four in sats for t in four} - listed[city]
        if unknown:  # name the first offending row
            k = next(k for k, four in enumerate(sats) if set(four) & unknown)
            bad = sorted(set(sats[k]) & unknown)[0]
            raise MalformedRowError(lbl, lines[k], " ".join([panos[k]] + sats[k]), "tiles listed in "
                                    f"splits/{city}/satellite_list.txt (unknown tile {bad!r})")
        gps = _parse_names(panos, parse_pano_name, lbl, list(zip(lines, panos, strict=True)),
                           "a panorama named <prefix>,<lat>,<lon>,.jpg")
        ok = np.array(index.exists_many(root / city / "panorama", panos), bool)
        tid = tile_index[city]
        idx = np.array([[tid.get(t, -1) for t in four] for four in sats], np.int64).reshape(-1, 4)
        missing_panos.extend(f"{city}/panorama/{p}" for p, o in zip(panos, ok, strict=True) if not o)
        lost_positive += int((ok & (idx[:, 0] < 0)).sum())
        keep = ok & (idx[:, 0] >= 0)
        lost_semi += int((idx[keep, 1:] < 0).sum())
        base = str(root / city / "panorama") + os.sep
        q_paths.extend(base + p for p, k in zip(panos, keep, strict=True) if k)
        q_gps.append(gps[keep])
        pos.append(idx[keep, 0])
        semi.append(idx[keep, 1:])
        offs.append(deltas[keep])
    return q_paths, q_gps, pos, semi, offs, missing_panos, lost_positive, lost_semi


def load_vigor(root: Path, name: str, split: str, *, strict: bool = False,
               metres_per_pixel: float | None = None) -> CrossViewSplit:
    """Read a VIGOR split (``name`` = vigor-same | vigor-cross; ``split`` = train | test, val = test)."""
    if split == "val":
        logger.info("VIGOR has no validation split; 'val' reads the test split (as the reference does)")
        split_file_split = "test"
    elif split in ("train", "test"):
        split_file_split = split
    else:
        raise InputError(f"{name} has splits ['test', 'train'] ('val' = 'test'), got {split!r}")
    mpp = float(metres_per_pixel) if metres_per_pixel is not None else read_metres_per_pixel(root)
    cities, label_name = cities_for(name, split_file_split)
    index = DirIndex()
    skipped: dict = {}
    ref_paths, ref_gps, tile_index, listed, missing_tiles = _read_gallery(root, cities, index)
    missing_images(skipped, "missing_reference_images", missing_tiles, strict, name, root)
    q_paths, q_gps, pos, semi, offs, missing_panos, lost_positive, lost_semi = _read_queries(
        root, cities, label_name, listed, tile_index, index)
    missing_images(skipped, "missing_query_images", missing_panos, strict, name, root)
    if lost_positive:
        skipped["positive_tile_missing"] = lost_positive
    if lost_semi:
        skipped["semi_positive_tile_missing"] = lost_semi

    q = len(q_paths)
    return CrossViewSplit(
        name=name, root=str(root), split=split,
        queries=q_paths, references=ref_paths,
        query_gps=np.concatenate(q_gps).reshape(q, 2),
        reference_gps=np.concatenate(ref_gps).reshape(len(ref_paths), 2),
        positive=np.concatenate(pos).astype(np.int64),
        semi_positives=np.concatenate(semi).reshape(q, 3),
        offsets=offsets_from_delta(np.concatenate(offs).reshape(q, 4, 2), mpp),
        skipped=skipped, metres_per_pixel=mpp,
    )


def _parse_names(names: list[str], parse, path: Path, rows: list[tuple[int, str]], expected: str) -> np.ndarray:
    """(lat, lon) f64 (n, 2) parsed from file names; the first unparsable one → MalformedRowError."""
    out = np.empty((len(names), 2), np.float64)
    for k, nm in enumerate(names):
        try:
            out[k] = parse(nm)
        except ValueError:
            raise MalformedRowError(path, rows[k][0], rows[k][1], expected) from None
    if not np.all(np.isfinite(out)):
        k = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise MalformedRowError(path, rows[k][0], rows[k][1], expected + " (finite lat/lon)")
    return out


__all__ = ["load_vigor", "pixel_delta", "offsets_from_delta", "parse_pano_name", "parse_sat_name",
           "read_metres_per_pixel", "CITIES", "CROSS_TRAIN", "CROSS_TEST"]
