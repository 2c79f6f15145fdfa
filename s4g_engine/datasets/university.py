"""University-1652 reader (docs/METHOD.md §6).

Layout::

    ROOT/train/{satellite,drone,street,google}/<class>/…      701 classes (satellite: 1 image per class)
    ROOT/test/{query_drone,gallery_satellite,query_satellite,gallery_drone}/<class>/…

Loader names: ``university-d2s`` (test: query_drone → gallery_satellite, 951-tile gallery incl. distractor
classes) and ``university-s2d`` (test: query_satellite → gallery_drone). ``train`` is the same for both:
drone images as queries, the class's satellite image as reference (several queries share a positive).
There is no GPS: ``query_gps``/``reference_gps`` are NaN; ``query_classes``/``reference_classes`` hold the
integer class ids (folder names), and ``positive`` is the first reference of the query's class.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from s4g_engine.errors import FormatError, InputError, MissingFileError

from .base import CrossViewSplit, missing_images

logger = logging.getLogger(__name__)

#: image endings read from a University-1652 class folder (what it ships; narrower than
#: s4g_engine.imagecheck.IMAGE_EXTS on purpose: the split must not change with stray .tif files)
UNIVERSITY_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FOLDERS = {
    ("university-d2s", "test"): ("test/query_drone", "test/gallery_satellite", "drone", "satellite"),
    ("university-s2d", "test"): ("test/query_satellite", "test/gallery_drone", "satellite", "drone"),
    ("university-d2s", "train"): ("train/drone", "train/satellite", "drone", "satellite"),
    ("university-s2d", "train"): ("train/drone", "train/satellite", "drone", "satellite"),
}


def list_class_folder(folder: Path, skipped: dict) -> tuple[list[str], list[int]]:
    """All images under ``folder/<class>/`` sorted by (class, file name) → (paths, class ids)."""
    if not folder.is_dir():
        raise MissingFileError(f"university: folder not found: expected {folder} (with one sub-folder per "
                                "class, e.g. 0001/)")
    paths: list[str] = []
    classes: list[int] = []
    with os.scandir(folder) as it:
        class_dirs = sorted((e.name, e.path) for e in it if e.is_dir())
    if not class_dirs:
        raise MissingFileError(f"university: {folder} holds no class folders (expected <class>/ sub-folders)")
    other = 0
    for cname, cpath in class_dirs:
        if not cname.isdigit():
            raise FormatError(f"university: class folder {cpath!r} is not a number; University-1652 class "
                             "folders are named by zero-padded integers (e.g. 0839)")
        cid = int(cname)
        with os.scandir(cpath) as it:
            names = sorted(e.name for e in it if e.is_file())
        for n in names:
            if n.lower().endswith(UNIVERSITY_EXTS):
                paths.append(os.path.join(cpath, n))
                classes.append(cid)
            else:
                other += 1
    if other:
        skipped["non_image_files"] = skipped.get("non_image_files", 0) + other
    return paths, classes


def load_university(root: Path, name: str, split: str, *, strict: bool = False) -> CrossViewSplit:
    """Read a University-1652 split; see the module docstring."""
    if split == "val":
        logger.info("University-1652 has no validation split; 'val' reads the test split")
        split = "test"
    key = (name, split)
    if key not in FOLDERS:
        raise InputError(f"{name} has splits ['test', 'train'], got {split!r}")
    qdir, rdir, qview, rview = FOLDERS[key]
    skipped: dict = {}
    q_paths, q_cls = list_class_folder(root / qdir, skipped)
    r_paths, r_cls = list_class_folder(root / rdir, skipped)
    first: dict[int, int] = {}
    for i, c in enumerate(r_cls):
        first.setdefault(c, i)
    keep = [i for i, c in enumerate(q_cls) if c in first]
    orphans = [os.path.relpath(q_paths[i], root) for i, c in enumerate(q_cls) if c not in first]
    missing_images(skipped, "queries_without_reference_class", orphans, strict, name, root)
    q_arr = np.asarray([q_cls[i] for i in keep], np.int64)
    q = len(keep)
    return CrossViewSplit(
        name=name, root=str(root), split=split,
        queries=[q_paths[i] for i in keep], references=r_paths,
        query_gps=np.full((q, 2), np.nan), reference_gps=np.full((len(r_paths), 2), np.nan),
        positive=np.asarray([first[int(c)] for c in q_arr], np.int64),
        query_classes=q_arr, reference_classes=np.asarray(r_cls, np.int64),
        skipped=skipped, query_view=qview, reference_view=rview,
    )
