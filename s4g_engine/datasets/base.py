"""``CrossViewSplit``: the one normalised, torch-free description of a dataset split, plus the published
reference numbers (docs/METHOD.md §6) that ``s4g-data check`` compares a folder against."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

__all__ = ["CrossViewSplit", "PUBLISHED", "EXPECTED_SIZES", "missing_images"]


@dataclass(frozen=True, eq=False)
class CrossViewSplit:
    """One split of a cross-view dataset, as read from disk (all paths absolute).

    Shapes (Q = number of queries, N = number of references):

    - ``queries``: list[str] (Q,) ground panoramas / drone images (satellite images for university-s2d).
    - ``references``: list[str] (N,) aerial tiles (drone images for university-s2d).
    - ``query_gps`` f64 (Q, 2), ``reference_gps`` f64 (N, 2): (lat, lon) in degrees, NaN where unknown.
    - ``positive`` i64 (Q,): index into ``references`` of the true match (University s2d: the first gallery
      image of the query's class — use the classes for AP).
    - ``semi_positives`` i64 (Q, 3) for VIGOR (−1 where a tile is missing), (Q, 0) otherwise.
    - ``offsets`` f64 (Q, 4, 2) for VIGOR: (north_m, east_m) of the panorama relative to the centre of its
      positive tile [:, 0] and of its three semi-positives [:, 1:]; (Q, 0, 2) otherwise.
    - ``query_classes`` / ``reference_classes`` i64 (Q,) / (N,) for University-1652, else None.
    - ``reference_utm`` f64 (N, 2) (easting, northing) metres for CVACT, else None.
    - ``skipped``: what was dropped and why (counts, plus ``*_examples`` lists of the first few names).
    """

    name: str
    root: str
    split: str
    queries: list[str]
    references: list[str]
    query_gps: np.ndarray
    reference_gps: np.ndarray
    positive: np.ndarray
    semi_positives: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2), np.float64))
    query_classes: np.ndarray | None = None
    reference_classes: np.ndarray | None = None
    skipped: dict[str, Any] = field(default_factory=dict)
    reference_utm: np.ndarray | None = None
    query_view: str = "ground"
    reference_view: str = "satellite"
    metres_per_pixel: float | None = None

    def __post_init__(self) -> None:
        q, n = len(self.queries), len(self.references)
        set_ = object.__setattr__

        def arr(name: str, value: Any, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
            a = np.ascontiguousarray(np.asarray(value, dtype=dtype))
            if a.shape != shape:
                raise InputError(f"CrossViewSplit.{name}: expected shape {shape}, got {a.shape}")
            set_(self, name, a)
            return a

        arr("query_gps", self.query_gps, np.float64, (q, 2))
        arr("reference_gps", self.reference_gps, np.float64, (n, 2))
        pos = arr("positive", self.positive, np.int64, (q,))
        if q and (pos.min() < 0 or pos.max() >= n):
            raise InputError(f"CrossViewSplit.positive: indices must lie in [0, {n}), got [{pos.min()}, {pos.max()}]")
        semi = np.asarray(self.semi_positives, dtype=np.int64)
        if semi.size == 0 and not (semi.ndim == 2 and semi.shape[0] == q):
            semi = np.zeros((q, 0), np.int64)       # "none" given in any empty form
        semi = arr("semi_positives", semi, np.int64, (q, semi.shape[-1] if semi.ndim == 2 else -1))
        if semi.size and (semi.min() < -1 or semi.max() >= n):
            raise InputError(f"CrossViewSplit.semi_positives: indices must lie in [-1, {n}), got "
                             f"[{semi.min()}, {semi.max()}]")
        off = np.asarray(self.offsets, dtype=np.float64)
        if off.size == 0 and not (off.ndim == 3 and off.shape[0] == q):
            off = np.zeros((q, 0, 2), np.float64)
        arr("offsets", off, np.float64, (q, off.shape[1] if off.ndim == 3 else -1, 2))
        if self.query_classes is not None:
            arr("query_classes", self.query_classes, np.int64, (q,))
        if self.reference_classes is not None:
            arr("reference_classes", self.reference_classes, np.int64, (n,))
        if self.reference_utm is not None:
            arr("reference_utm", self.reference_utm, np.float64, (n, 2))
        set_(self, "queries", list(self.queries))
        set_(self, "references", list(self.references))

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def num_references(self) -> int:
        return len(self.references)

    def __repr__(self) -> str:
        return (f"CrossViewSplit(name={self.name!r}, split={self.split!r}, root={self.root!r}, "
                f"queries={self.num_queries}, references={self.num_references}, skipped={self.skipped})")


# Published sizes (docs/METHOD.md §6; VIGOR from its paper's table; University-1652 from its paper).
# Keys: (loader name, split) -> {"queries": Q, "references": N}.
PUBLISHED: dict[tuple[str, str], dict[str, int]] = {
    ("cvusa", "train"): {"queries": 35_532, "references": 35_532},
    ("cvusa", "val"): {"queries": 8_884, "references": 8_884},
    ("cvusa", "test"): {"queries": 8_884, "references": 8_884},
    ("cvact", "train"): {"queries": 35_532, "references": 35_532},
    ("cvact", "val"): {"queries": 8_884, "references": 8_884},
    ("cvact", "test"): {"queries": 92_802, "references": 92_802},
    ("vigor-same", "train"): {"queries": 52_609, "references": 90_618},
    ("vigor-same", "test"): {"queries": 52_605, "references": 90_618},
    ("vigor-cross", "train"): {"queries": 51_520, "references": 44_055},
    ("vigor-cross", "test"): {"queries": 49_132, "references": 46_563},
    ("university-d2s", "train"): {"queries": 37_854, "references": 701},
    ("university-d2s", "test"): {"queries": 37_855, "references": 951},
    ("university-s2d", "train"): {"queries": 37_854, "references": 701},
    ("university-s2d", "test"): {"queries": 701, "references": 51_355},
}

# Nominal image sizes (width, height) per loader family and view, as the authors distribute them.
EXPECTED_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "cvusa": {"ground": (1232, 224), "satellite": (750, 750)},
    "cvact": {"ground": (1664, 832), "satellite": (1200, 1200)},
    "vigor": {"ground": (2048, 1024), "satellite": (640, 640)},
    "university": {"drone": (512, 512), "satellite": (512, 512)},
}


def missing_images(skipped: dict[str, Any], kind: str, rels: list[str], strict: bool, dataset: str,
                   root: Path, max_examples: int = 10) -> None:
    """Record missing images in ``skipped`` (count + first examples), or raise when ``strict``."""
    if not rels:
        return
    if strict:
        shown = ", ".join(rels[:5])
        raise MissingFileError(
            f"{dataset}: {len(rels)} {kind.replace('_', ' ')} missing under {root} (first: {shown}); "
            "restore them, or load with strict=False to skip those pairs")
    skipped[kind] = skipped.get(kind, 0) + len(rels)
    ex = skipped.setdefault(f"{kind}_examples", [])
    ex.extend(rels[: max(0, max_examples - len(ex))])
    logger.warning("%s: skipping %d entries: %s missing (first: %s)", dataset, len(rels), kind, rels[0])
