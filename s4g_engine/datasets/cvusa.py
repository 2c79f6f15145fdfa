"""CVUSA reader (docs/METHOD.md §6).

Layout::

    ROOT/splits/train-19zl.csv      no header: bingmap/19/0000001.jpg,streetview/panos/0000001.jpg,annotations/…png
    ROOT/splits/val-19zl.csv        (val and test are the same file, as in the literature)
    ROOT/split_locations/all.csv    row id−1: sat_lat, sat_lon, ground_lat, ground_lon, … (optional: GPS)
    ROOT/bingmap/19/*.jpg           750×750 aerial tiles
    ROOT/streetview/panos/*.jpg     1232×224 panoramas
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from s4g_engine.errors import InputError, MissingFileError

from ._io import DirIndex, MalformedRowError, check_relative, read_rows
from .base import CrossViewSplit, missing_images

logger = logging.getLogger(__name__)

SPLIT_FILES = {"train": "splits/train-19zl.csv", "val": "splits/val-19zl.csv", "test": "splits/val-19zl.csv"}
GPS_FILE = "split_locations/all.csv"
_ROW = "3 comma-separated relative paths: bingmap/19/<id>.jpg,streetview/panos/<id>.jpg,annotations/<id>.png"


def _sat_id(rel: str, where: str, row: str, path: Path, line: int) -> int:
    stem = os.path.splitext(rel.rpartition("/")[2])[0]
    digits = stem.removeprefix("input")  # some CVUSA copies name tiles input0000001.png
    if not digits.isdigit():
        raise MalformedRowError(path, line, row, f"a satellite file named by its integer id; {where}")
    return int(digits)


def read_gps_table(root: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(sat (Q,2), ground (Q,2)) GPS for 1-based ``ids`` from ``split_locations/all.csv``; NaN if absent.

    Returns also a problem description (None when everything was found).
    """
    q = len(ids)
    nan = np.full((q, 2), np.nan)
    path = root / GPS_FILE
    if not path.is_file():
        return nan, nan.copy(), f"{path} not found (GPS unknown; GPS sampling unavailable)"
    try:
        # fast path: numeric table, ≥4 columns
        table = np.loadtxt(path, delimiter=",", usecols=(0, 1, 2, 3), dtype=np.float64, ndmin=2)
    except ValueError:
        # slow path: a byte-order mark, another encoding or a bad row — read line by line and name the line
        values = []
        for i, line in read_rows(path, "cvusa"):
            parts = line.split(",")
            try:
                if len(parts) < 4:
                    raise ValueError
                values.append([float(p) for p in parts[:4]])
            except ValueError:
                raise MalformedRowError(path, i, line, "≥4 comma-separated numbers: sat_lat,sat_lon,"
                                        "ground_lat,ground_lon,…") from None
        table = np.asarray(values, np.float64).reshape(-1, 4)
    bad = (ids < 1) | (ids > table.shape[0])
    sat, grd = nan, nan.copy()
    ok = ~bad
    sat[ok] = table[ids[ok] - 1, 0:2]
    grd[ok] = table[ids[ok] - 1, 2:4]
    problem = None
    if bad.any():
        problem = f"{int(bad.sum())} ids beyond the {table.shape[0]} rows of {path} (GPS unknown for them)"
    return sat, grd, problem


def load_cvusa(root: Path, split: str, *, strict: bool = False, name: str = "cvusa") -> CrossViewSplit:
    """Read a CVUSA split; see the module docstring for the layout."""
    if split not in SPLIT_FILES:
        raise InputError(f"cvusa has splits {sorted(SPLIT_FILES)}, got {split!r}")
    path = root / SPLIT_FILES[split]
    rows = read_rows(path, "cvusa", hint="CVUSA ships splits/train-19zl.csv and splits/val-19zl.csv; "
                     "copy the 'splits' folder of the CVUSA download into the root")
    sats: list[str] = []
    grds: list[str] = []
    lines: list[int] = []
    for i, line in rows:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise MalformedRowError(path, i, line, _ROW)
        where = f"{path}:{i}"
        sats.append(check_relative(parts[0], where))
        grds.append(check_relative(parts[1], where))
        lines.append(i)
    ids = np.array([_sat_id(s, f"got {s!r}", line, path, ln)
                    for s, (ln, line) in zip(sats, rows, strict=True)], np.int64)

    index = DirIndex()
    sat_ok = np.array(index.exists_paths(root, sats), bool)
    grd_ok = np.array(index.exists_paths(root, grds), bool)
    skipped: dict = {}
    missing_images(skipped, "missing_reference_images", [s for s, o in zip(sats, sat_ok, strict=True) if not o],
                   strict, "cvusa", root)
    missing_images(skipped, "missing_query_images", [g for g, o in zip(grds, grd_ok, strict=True) if not o],
                   strict, "cvusa", root)
    keep = np.flatnonzero(sat_ok & grd_ok)
    if len(keep) < len(rows):
        skipped["pairs_dropped"] = int(len(rows) - len(keep))

    sat_gps, grd_gps, problem = read_gps_table(root, ids[keep])
    if problem:
        if strict:
            raise MissingFileError(f"cvusa: {problem}; place split_locations/all.csv from the CVUSA download "
                                    "in the root, or load with strict=False (GPS becomes NaN)")
        skipped["gps_unavailable"] = int(np.isnan(grd_gps[:, 0]).sum())
        skipped["gps_problem"] = problem
        logger.warning("cvusa: %s", problem)

    base = str(root)
    return CrossViewSplit(
        name=name, root=base, split=split,
        queries=[os.path.join(base, grds[k]) for k in keep],
        references=[os.path.join(base, sats[k]) for k in keep],
        query_gps=grd_gps, reference_gps=sat_gps,
        positive=np.arange(len(keep), dtype=np.int64),
        skipped=skipped,
    )
