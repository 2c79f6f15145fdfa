"""CVACT reader (docs/METHOD.md §6).

Layout::

    ROOT/ACT_data.mat                                   panoIds, utm (N×2 easting/northing),
                                                        trainSet.trainInd, valSet.valInd, valSetAll.valInd (1-based)
    ROOT/ANU_data_small/streetview/<id>_grdView.jpg     train + val panoramas
    ROOT/ANU_data_small/satview_polish/<id>_satView_polish.jpg   1200×1200 tiles
    ROOT/ANU_data_test/streetview/…, ROOT/ANU_data_test/satview_polish/…   test (valSetAll, 92,802)

The UTM coordinates are converted to lat/lon with pyproj. CVACT covers Canberra, which lies in UTM zone 55
south; that is the default (``utm_zone=55, utm_south=True``) and can be changed for other data.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import CorruptFileError, FormatError, InputError, MissingFileError

from ..geo import utm_to_latlon
from ._io import DirIndex, SplitFileNotFoundError, check_name
from .base import CrossViewSplit, missing_images

logger = logging.getLogger(__name__)

MAT_FILE = "ACT_data.mat"
# split -> (struct name, field name, image folder)
SPLITS = {
    "train": ("trainSet", "trainInd", "ANU_data_small"),
    "val": ("valSet", "valInd", "ANU_data_small"),
    "test": ("valSetAll", "valInd", "ANU_data_test"),
}
GROUND_DIR, GROUND_SUFFIX = "streetview", "_grdView.jpg"
SAT_DIR, SAT_SUFFIX = "satview_polish", "_satView_polish.jpg"


def _unwrap(a: Any) -> Any:
    """Peel scipy.io's (1, 1) object/struct wrappers until a payload array remains."""
    while isinstance(a, np.ndarray) and a.dtype == object and a.size == 1:
        a = a.reshape(-1)[0]
    return a


def _struct_field(mat: dict, struct: str, fld: str, path: Path) -> np.ndarray:
    if struct not in mat:
        raise FormatError(f"{path}: no variable {struct!r} (found {sorted(k for k in mat if not k.startswith('__'))}); "
                         "this does not look like CVACT's ACT_data.mat")
    s = _unwrap(mat[struct])
    if isinstance(s, np.ndarray) and s.dtype.names:
        if fld not in s.dtype.names:
            raise FormatError(f"{path}: {struct} has fields {s.dtype.names}, expected {fld!r}")
        val = _unwrap(s[fld].reshape(-1)[0])
    elif hasattr(s, fld):  # mat_struct (struct_as_record=False)
        val = getattr(s, fld)
    else:
        raise FormatError(f"{path}: {struct} is not a MATLAB struct with field {fld!r}")
    return np.asarray(val)


def _strings(a: np.ndarray) -> list[str]:
    """panoIds as Python strings, whether stored as a char matrix or as a cell array."""
    a = np.asarray(a)
    if a.dtype.kind == "U":
        return [str(x).strip() for x in a.reshape(-1)]
    out = []
    for x in a.reshape(-1):
        x = _unwrap(x)
        if isinstance(x, np.ndarray):
            x = x.reshape(-1)[0] if x.size else ""
        out.append(str(x).strip())
    return out


def read_act_mat(path: Path) -> dict[str, Any]:
    """Read ACT_data.mat → {"ids": list[str] (N,), "utm": f64 (N,2), "<split>": i64 0-based indices}."""
    if not path.is_file():
        raise SplitFileNotFoundError(path, "cvact", "CVACT's ACT_data.mat comes with the dataset (authors' "
                                     "GitHub Liumouliu/OriCNN); put it directly in the root")
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5)
        raise FormatError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save it in MATLAB with "
                         "save(..., '-v7')") from exc
    except Exception as exc:
        raise CorruptFileError(f"{path}: cannot read as a MATLAB file ({exc}); re-download ACT_data.mat") from exc
    for var in ("panoIds", "utm"):
        if var not in mat:
            raise FormatError(f"{path}: variable {var!r} missing; this is not CVACT's ACT_data.mat")
    ids = _strings(mat["panoIds"])
    utm = np.asarray(mat["utm"], np.float64)
    if utm.ndim != 2 or 2 not in utm.shape:
        raise FormatError(f"{path}: utm must be N×2 (easting, northing), got shape {utm.shape}")
    if utm.shape[1] != 2:
        utm = utm.T
    if utm.shape[0] != len(ids):
        raise FormatError(f"{path}: {len(ids)} panoIds but {utm.shape[0]} utm rows")
    out: dict[str, Any] = {"ids": ids, "utm": utm}
    for split, (struct, fld, _) in SPLITS.items():
        try:
            raw = _struct_field(mat, struct, fld, path)
        except ValueError as exc:
            out[split] = exc  # reported only when that split is requested
            continue
        ind = raw.reshape(-1)
        if ind.size and (not np.all(np.isfinite(ind.astype(np.float64))) or np.any(ind != np.round(ind))):
            out[split] = FormatError(f"{path}: {struct}.{fld} must hold integer indices")
            continue
        ind = ind.astype(np.int64)
        if ind.size and (ind.min() < 1 or ind.max() > len(ids)):
            out[split] = FormatError(f"{path}: {struct}.{fld} holds index {ind.min() if ind.min() < 1 else ind.max()}"
                                    f" outside 1..{len(ids)} (MATLAB indices are 1-based)")
            continue
        out[split] = ind - 1
    return out


def load_cvact(root: Path, split: str, *, strict: bool = False, utm_zone: int = 55, utm_south: bool = True,
               name: str = "cvact") -> CrossViewSplit:
    """Read a CVACT split; see the module docstring for the layout."""
    if split not in SPLITS:
        raise InputError(f"cvact has splits {sorted(SPLITS)}, got {split!r}")
    mat_path = root / MAT_FILE
    data = read_act_mat(mat_path)
    ind = data[split]
    if isinstance(ind, Exception):
        raise ind
    struct, fld, folder = SPLITS[split]
    ids = [data["ids"][i] for i in ind]
    for i, pid in zip(ind, ids, strict=True):
        check_name(pid + GROUND_SUFFIX, f"{mat_path}: panoIds[{i + 1}]")
    img_root = root / folder
    if not img_root.is_dir():
        raise MissingFileError(f"cvact: image folder for split {split!r} not found: expected {img_root} "
                                f"(with {GROUND_DIR}/ and {SAT_DIR}/ inside)")
    index = DirIndex()
    g_ok = np.array(index.exists_many(img_root / GROUND_DIR, [p + GROUND_SUFFIX for p in ids]), bool)
    s_ok = np.array(index.exists_many(img_root / SAT_DIR, [p + SAT_SUFFIX for p in ids]), bool)
    skipped: dict = {}
    missing_images(skipped, "missing_query_images",
                   [f"{folder}/{GROUND_DIR}/{p}{GROUND_SUFFIX}" for p, o in zip(ids, g_ok, strict=True) if not o],
                   strict, "cvact", root)
    missing_images(skipped, "missing_reference_images",
                   [f"{folder}/{SAT_DIR}/{p}{SAT_SUFFIX}" for p, o in zip(ids, s_ok, strict=True) if not o],
                   strict, "cvact", root)
    keep = np.flatnonzero(g_ok & s_ok)
    if len(keep) < len(ids):
        skipped["pairs_dropped"] = int(len(ids) - len(keep))
    utm = data["utm"][ind[keep]]
    lat, lon = utm_to_latlon(utm[:, 0], utm[:, 1], zone=utm_zone, south=utm_south)
    gps = np.stack([lat, lon], axis=1) if len(keep) else np.zeros((0, 2))
    g_base, s_base = str(img_root / GROUND_DIR), str(img_root / SAT_DIR)
    kept_ids = [ids[k] for k in keep]
    return CrossViewSplit(
        name=name, root=str(root), split=split,
        queries=[os.path.join(g_base, p + GROUND_SUFFIX) for p in kept_ids],
        references=[os.path.join(s_base, p + SAT_SUFFIX) for p in kept_ids],
        query_gps=gps, reference_gps=gps.copy(),
        positive=np.arange(len(keep), dtype=np.int64),
        skipped=skipped, reference_utm=utm,
    )
