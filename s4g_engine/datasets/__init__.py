"""Dataset readers: CVUSA, CVACT, VIGOR (same-/cross-area) and University-1652 → ``CrossViewSplit``.

Torch-free. ``load_split(name, root, split)`` reads the authors' on-disk layouts exactly (docs/METHOD.md §6,
DATASETS.md); the synthetic world (``s4g-synth``) writes the CVUSA and VIGOR layouts and is read the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from s4g_engine.errors import InputError, MissingFileError

from ._io import MalformedRowError, PathEscapeError, SplitFileNotFoundError
from .base import EXPECTED_SIZES, PUBLISHED, CrossViewSplit

logger = logging.getLogger(__name__)

__all__ = ["load_split", "CrossViewSplit", "DATASET_NAMES", "SPLITS", "MalformedRowError", "PathEscapeError",
           "SplitFileNotFoundError", "PUBLISHED", "EXPECTED_SIZES", "family"]

#: loader names and the splits each defines (val is an alias of test where marked in DATASETS.md)
SPLITS: dict[str, tuple[str, ...]] = {
    "cvusa": ("train", "val", "test"),
    "cvact": ("train", "val", "test"),
    "vigor-same": ("train", "test"),
    "vigor-cross": ("train", "test"),
    "university-d2s": ("train", "test"),
    "university-s2d": ("train", "test"),
}
DATASET_NAMES = tuple(SPLITS)


def family(name: str) -> str:
    """Dataset family of a loader name: cvusa | cvact | vigor | university."""
    return name.split("-")[0]


def load_split(name: str, root: str | os.PathLike, split: str, *, strict: bool = False,
               **options: Any) -> CrossViewSplit:
    """Read one split of a dataset from its on-disk layout.

    Args:
        name: ``cvusa | cvact | vigor-same | vigor-cross | university-d2s | university-s2d``.
        root: the dataset folder (as the authors distribute it, see DATASETS.md).
        split: ``train | val | test`` (CVUSA: val and test are both val-19zl.csv; VIGOR/University have no
            val — it reads test).
        strict: missing images raise ``FileNotFoundError`` instead of being skipped and counted in
            ``skipped``.
        options: ``utm_zone`` (int, default 55) and ``utm_south`` (bool, default True) for CVACT;
            ``metres_per_pixel`` for VIGOR (default: ROOT/meta.json, else 0.114).

    Raises:
        SplitFileNotFoundError (a FileNotFoundError) naming the expected path of a missing split file;
        MalformedRowError (a ValueError) with ``file:line`` and the row; ValueError for paths escaping the
        root; FileNotFoundError for missing image folders (and missing images when ``strict``).
    """
    if name not in SPLITS:
        raise InputError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if split not in ("train", "val", "test"):
        raise InputError(f"split must be train, val or test, got {split!r}")
    r = Path(root).expanduser()
    if not r.is_dir():
        raise MissingFileError(f"{name}: dataset root {r} is not a directory; expected the dataset folder (see "
                               "DATASETS.md)")
    r = r.resolve()
    allowed: dict[str, set[str]] = {"cvusa": set(), "cvact": {"utm_zone", "utm_south"},
                                    "vigor": {"metres_per_pixel"}, "university": set()}
    fam = family(name)
    unknown = set(options) - allowed[fam]
    if unknown:
        raise InputError(f"load_split({name!r}) got unexpected options {sorted(unknown)}; "
                        f"allowed: {sorted(allowed[fam]) or 'none'}")
    if fam == "cvusa":
        from .cvusa import load_cvusa
        out = load_cvusa(r, split, strict=strict)
    elif fam == "cvact":
        from .cvact import load_cvact
        out = load_cvact(r, split, strict=strict, **options)
    elif fam == "vigor":
        from .vigor import load_vigor
        out = load_vigor(r, name, split, strict=strict, **options)
    else:
        from .university import load_university
        out = load_university(r, name, split, strict=strict)
    logger.info("loaded %s/%s from %s: %d queries, %d references%s", name, split, r, out.num_queries,
                out.num_references, f", skipped {out.skipped}" if out.skipped else "")
    return out
