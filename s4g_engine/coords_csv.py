"""The coordinates CSV of ``s4g-index build --images DIR --coords CSV``: image, lat, lon[, id] per row.

UTF-8 (a byte-order mark is dropped; another encoding is refused at its ``file:line`` with how to convert),
a header row naming the columns (``image``/``filename``/``file``/``path``/``name``, ``lat``/``latitude``,
``lon``/``lng``/``long``/``longitude``, optional ``id``; case and spaces ignored). Image paths are relative to
the images folder and may not leave it (no absolute paths, no ``..``). Every error names ``file:line``,
what was expected and what came.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from s4g_engine.datasets._io import MalformedRowError, check_relative, read_text_lines
from s4g_engine.errors import FormatError, MissingFileError, NotAFileError

__all__ = ["read_coords_csv", "COLUMNS"]

COLUMNS = {"image": ("image", "filename", "file", "path", "name"), "lat": ("lat", "latitude"),
           "lon": ("lon", "lng", "long", "longitude"), "id": ("id",)}
_EXPECTED = "a header like 'image,lat,lon[,id]' (image relative to --images, lat/lon in degrees)"


def _columns(header: list[str], path: Path) -> dict[str, int | None]:
    names = {h.strip().lower(): i for i, h in reversed(list(enumerate(header)))}
    col = {k: next((names[c] for c in cands if c in names), None) for k, cands in COLUMNS.items()}
    missing = [k for k in ("image", "lat", "lon") if col[k] is None]
    if missing:
        raise FormatError(f"{path}:1: header {header} lacks column(s) {missing}; expected {_EXPECTED}")
    return col


def _number(text: str, what: str, lo: float, hi: float, path: Path, line: int, row: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise MalformedRowError(path, line, row, f"{what} as a number in degrees, got {text!r}") from None
    if not math.isfinite(v):
        raise MalformedRowError(path, line, row, f"a finite {what}, got {text!r} (NaN/Inf): every reference needs "
                                "a position")
    if not lo <= v <= hi:
        raise MalformedRowError(path, line, row, f"{what} in [{lo:g}, {hi:g}] degrees, got {text!r} (latitude "
                                "first; degrees, not projected metres)")
    return v


def read_coords_csv(csv_path: Path, images_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """``(image paths, coords float64 (N, 2) lat/lon, ids)`` from a coords CSV (see the module docstring)."""
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    if not csv_path.exists():
        raise MissingFileError(f"coords CSV {str(csv_path)!r} does not exist; expected {_EXPECTED}")
    if not images_dir.is_dir():
        raise MissingFileError(f"--images {str(images_dir)!r} is not a folder; expected the folder of the tiles "
                               "the CSV names")
    lines = read_text_lines(csv_path, "coords CSV")
    try:
        rows = list(csv.reader(lines))
    except csv.Error as exc:
        raise FormatError(f"{csv_path}: not a valid CSV ({exc}); expected {_EXPECTED}") from exc
    if not rows or not any(h.strip() for h in rows[0]):
        raise FormatError(f"{csv_path}:1: the header row is missing or empty; expected {_EXPECTED}")
    col = _columns(rows[0], csv_path)
    paths, coords, ids = [], [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(f.strip() for f in row):
            continue  # blank line
        raw = ",".join(row)
        need = max(c for c in col.values() if c is not None)
        if len(row) <= need:
            raise MalformedRowError(csv_path, line_no, raw, f"{len(rows[0])} fields as in the header, got {len(row)}")
        where = f"{csv_path}:{line_no}"
        rel = row[col["image"]].strip()  # type: ignore[index]
        if not rel:
            raise MalformedRowError(csv_path, line_no, raw, "an image path relative to --images, got an empty field")
        rel = check_relative(rel, where)  # PathEscapeError for absolute paths and '..'
        lat_text, lon_text = row[col["lat"]].strip(), row[col["lon"]].strip()  # type: ignore[index]
        lat = _number(lat_text, "latitude", -90.0, 90.0, csv_path, line_no, raw)
        lon = _number(lon_text, "longitude", -180.0, 180.0, csv_path, line_no, raw)
        p = images_dir / rel
        if p.is_dir():
            raise NotAFileError(f"{where}: {str(p)!r} is a folder; expected an image file")
        if not p.is_file():
            raise MissingFileError(f"{where}: image {str(p)!r} does not exist; expected it relative to --images "
                                   f"{str(images_dir)!r}")
        paths.append(str(p))
        coords.append((lat, lon))
        ids.append(row[col["id"]].strip() or rel if col["id"] is not None else rel)
    if not paths:
        raise FormatError(f"{csv_path} lists no images; expected one row per tile after the header")
    return paths, np.asarray(coords, dtype=np.float64), ids
