"""Embedding shards of a gallery: Parquet files of (id, lat, lon, vector) rows plus a manifest (torch-free).

A distributed gallery build (:mod:`s4g_engine.ray_embed`) writes one shard per contiguous range of the tile
list and records each finished shard in ``manifest.json`` with its row range and the sha256 of its file.
Every file is written atomically (:mod:`s4g_engine.fileio`), so a killed job leaves whole shards only, and a
restarted job with the same arguments (the same *job identity*) skips the shards the manifest lists whose
file still has its recorded sha256. Reading a shard verifies its sha256 first.

Shard layout (Parquet, one row group): ``id`` string, ``lat`` / ``lon`` float64 degrees, ``vector``
fixed-size list of ``embed_dim`` float32 — the layout Milvus' bulk import reads too. Shard boundaries are
multiples of the encoder batch size, so every image is encoded in exactly the batch it would be encoded in
by a single-process build: the vectors are bit-identical to it (same runtime and precision).

The tile list (CSV as in :mod:`s4g_engine.coords_csv`, or Parquet with the same column names) is read by
:func:`read_tile_list`. Parquet needs ``pyarrow`` (the ``cluster`` extra).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import (
    CorruptFileError,
    DependencyError,
    FormatError,
    InputError,
    MissingFileError,
    NotAFileError,
    StateError,
)
from s4g_engine.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "s4g-embedding-shards"
MANIFEST_VERSION = 1


def import_pyarrow() -> Any:
    """``(pyarrow, pyarrow.parquet)``, or a :class:`DependencyError` naming the extra."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DependencyError(f"embedding shards and Parquet tile lists need pyarrow ({exc}); install the cluster "
                              "extra: pip install 's4g[cluster]'") from exc
    return pa, pq


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the tile list ---------------------------------------------------------------------------------------
def read_tile_list(path: str | Path, images_dir: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """``(image paths, coords (N, 2) lat/lon, ids)`` from a CSV or Parquet tile list (chosen by suffix)."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".pq"):
        from s4g_engine.coords_csv import read_coords_csv

        return read_coords_csv(path, Path(images_dir))
    return _read_parquet_list(path, Path(images_dir))


def _read_parquet_list(path: Path, images_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    from s4g_engine.coords_csv import COLUMNS
    from s4g_engine.datasets._io import check_relative
    from s4g_engine.index import validate_coords

    pa, pq = import_pyarrow()
    if path.is_dir():
        raise NotAFileError(f"tile list {str(path)!r} is a folder; expected a Parquet file with columns image, lat, "
                            "lon[, id]")
    if not path.is_file():
        raise MissingFileError(f"tile list {str(path)!r} does not exist; expected a Parquet file with columns "
                               "image, lat, lon[, id]")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise FormatError(f"{path}: not a readable Parquet file ({exc}); expected columns image, lat, "
                          "lon[, id]") from exc
    names = {n.strip().lower(): n for n in table.column_names}
    col = {k: next((names[c] for c in cands if c in names), None) for k, cands in COLUMNS.items()}
    missing = [k for k in ("image", "lat", "lon") if col[k] is None]
    if missing:
        raise FormatError(f"{path}: columns {table.column_names} lack {missing}; expected image, lat, lon[, id]")
    rel = table.column(col["image"]).to_pylist()
    for k in ("lat", "lon"):  # a boolean column would pass as 0/1 degrees
        if pa.types.is_boolean(table.column(col[k]).type):
            raise FormatError(f"{path}: column {col[k]!r} holds booleans; expected {k} in degrees (numbers)")
    try:
        coords = validate_coords(np.stack([table.column(col["lat"]).to_numpy(), table.column(col["lon"]).to_numpy()],
                                          axis=1), len(rel))
    except InputError as exc:
        raise FormatError(f"{path}: {exc}") from None
    given_ids = table.column(col["id"]).to_pylist() if col["id"] else [None] * len(rel)
    paths, ids = [], []
    for i, (r, v) in enumerate(zip(rel, given_ids, strict=True)):
        if r is None or str(r).strip() == "":
            raise FormatError(f"{path} row {i}: the image path is empty (null); expected a path relative to "
                              f"--images {str(images_dir)!r}")
        r = str(r)
        p = images_dir / check_relative(r, f"{path} row {i}")
        if not p.is_file():
            raise MissingFileError(f"{path} row {i}: image {str(p)!r} does not exist; expected it relative to "
                                   f"--images {str(images_dir)!r}")
        paths.append(str(p))
        # a missing id falls back to the image path, as an empty id field of a CSV does (never the text 'None')
        ids.append(r if v is None or str(v).strip() == "" else str(v))
    if not paths:
        raise FormatError(f"{path} lists no images; expected one row per tile")
    return paths, coords, ids


def tile_list_digest(paths: Sequence[str], coords: np.ndarray, ids: Sequence[str]) -> str:
    """sha256 over the tile list's content (paths, coordinate bits, ids): part of a job's identity."""
    h = hashlib.sha256()
    for p, i in zip(paths, ids, strict=True):
        h.update(p.encode("utf-8", "surrogatepass") + b"\0" + i.encode("utf-8", "surrogatepass") + b"\0")
    h.update(np.ascontiguousarray(coords, dtype=np.float64).tobytes())
    return h.hexdigest()


def plan_shards(n: int, shard_size: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges of ``shard_size`` rows; ``shard_size`` must be a multiple of
    ``batch_size`` so that shard boundaries are batch boundaries of a single-process build."""
    if shard_size < 1 or batch_size < 1 or shard_size % batch_size:
        raise InputError(f"shard size {shard_size} must be a positive multiple of the batch size {batch_size}, so "
                         "that every image is encoded in the same batch as in a single-process build; choose "
                         f"e.g. --shard-size {max(1, shard_size // max(1, batch_size)) * batch_size}")
    return [(s, min(n, s + shard_size)) for s in range(0, n, shard_size)]


# -- one shard --------------------------------------------------------------------------------------------
def shard_name(i: int) -> str:
    return f"shard-{i:06d}.parquet"


def shard_bytes(vectors: np.ndarray, coords: np.ndarray, ids: Sequence[str]) -> bytes:
    """One shard as Parquet bytes (``id``, ``lat``, ``lon``, ``vector`` float32 × d)."""
    pa, pq = import_pyarrow()
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = v.shape
    vec = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), type=pa.float32()), d)
    table = pa.table({"id": pa.array(list(ids), type=pa.string()),
                      "lat": pa.array(coords[:, 0], type=pa.float64()),
                      "lon": pa.array(coords[:, 1], type=pa.float64()), "vector": vec})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, n), compression="zstd")
    return buf.getvalue()


def write_shard(folder: Path, i: int, vectors: np.ndarray, coords: np.ndarray, ids: Sequence[str]) -> dict[str, Any]:
    """Write shard ``i`` atomically; returns its manifest entry (file, sha256, rows)."""
    data = shard_bytes(vectors, coords, ids)
    atomic_write_bytes(Path(folder) / shard_name(i), data)
    return {"shard": int(i), "file": shard_name(i), "sha256": sha256_bytes(data), "rows": int(vectors.shape[0])}


def read_shard(folder: Path, entry: dict[str, Any], dim: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(vectors float32 (n, d), coords (n, 2), ids)`` of a manifest entry, after checking its sha256."""
    pa, pq = import_pyarrow()
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise MissingFileError(f"shard {str(path)!r} listed in the manifest does not exist; rerun the build with "
                               "the same arguments to recompute it")
    data = path.read_bytes()
    if sha256_bytes(data) != entry["sha256"]:
        raise CorruptFileError(f"shard {str(path)!r} does not match the sha256 in the manifest (damaged or "
                               "replaced); rerun the build with the same arguments to recompute it")
    try:  # the sha256 matched, yet a hand-made manifest may list a file that is not a shard
        table = pq.read_table(io.BytesIO(data))
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = np.ascontiguousarray(flat, dtype=np.float32)
        coords = np.stack([table.column("lat").to_numpy(), table.column("lon").to_numpy()], axis=1).astype(np.float64)
        ids = [str(x) for x in table.column("id").to_pylist()]
    except Exception as exc:  # pyarrow's own error types, a missing column, values that are not numbers
        raise CorruptFileError(f"shard {str(path)!r} is not an embedding shard ({type(exc).__name__}: {exc}); "
                               "expected columns id, lat, lon, vector. Rerun the build with the same arguments to "
                               "recompute it") from None
    rows = int(entry["rows"])
    if vectors.size != rows * dim or coords.shape != (rows, 2) or len(ids) != rows:
        raise CorruptFileError(f"shard {str(path)!r}: {vectors.size} vector values, coords {coords.shape} and "
                               f"{len(ids)} ids; expected {rows} rows of {dim}-d vectors (the manifest's row count)")
    return vectors.reshape(rows, dim), coords, ids


# -- the manifest ------------------------------------------------------------------------------------------
def _manifest_entry(e: Any, where: str) -> dict[str, Any]:
    """One manifest entry, checked: the shard number, its own file name (so that a manifest can never make us
    read outside its folder), a sha256 and a row count."""
    if not isinstance(e, dict):
        raise CorruptFileError(f"{where}: expected an object with shard, file, sha256 and rows, got "
                               f"{type(e).__name__} {e!r:.60}; delete the shard folder and rebuild")
    i = e.get("shard")
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise CorruptFileError(f"{where}: expected a shard number >= 0, got {i!r:.60}; delete the shard folder and "
                               "rebuild")
    if e.get("file") != shard_name(i):
        raise CorruptFileError(f"{where}: file {e.get('file')!r:.80} is not the shard's own file name; expected "
                               f"{shard_name(i)!r} inside the shard folder. Delete the shard folder and rebuild")
    sha, rows = e.get("sha256"), e.get("rows")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)) or \
            isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise CorruptFileError(f"{where}: expected a 64-hex-digit sha256 and a row count >= 0, got {sha!r:.80} and "
                               f"{rows!r:.20}; delete the shard folder and rebuild")
    return dict(e)


@dataclass
class Manifest:
    """``manifest.json`` of a shard folder: the job identity and the finished shards."""

    folder: Path
    job: dict[str, Any]
    shards: dict[int, dict[str, Any]]

    @classmethod
    def open(cls, folder: str | Path, job: dict[str, Any]) -> Manifest:
        """The folder's manifest for ``job`` (a new one when there is none); a manifest of another job is
        refused rather than mixed with this one."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            man = cls(folder, dict(job), {})
            man.save()
            return man
        old = cls.read(folder)
        if old.job != job:
            diff = sorted(k for k in set(old.job) | set(job) if old.job.get(k) != job.get(k))
            raise StateError(f"{path} belongs to another build (differs in {', '.join(diff)}); expected the same "
                             "model, tile list, batch size and shard size to resume. Use another shard folder "
                             "(--shards DIR) or delete this one to start afresh")
        return old

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise MissingFileError(f"{str(path)!r} does not exist; expected the manifest of an embedding-shard folder")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptFileError(f"{path}: not valid JSON ({exc}); delete the shard folder and rebuild") from exc
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or doc.get("version") != MANIFEST_VERSION:
            raise FormatError(f"{path}: not an s4g shard manifest (format {MANIFEST_FORMAT!r} version "
                              f"{MANIFEST_VERSION} expected)")
        if not isinstance(doc.get("job"), dict) or not isinstance(doc.get("shards", []), list):
            raise CorruptFileError(f"{path}: expected an object 'job' and a list 'shards', got "
                                   f"{type(doc.get('job')).__name__} and {type(doc.get('shards')).__name__}; delete "
                                   "the shard folder and rebuild")
        shards = {}
        for n, e in enumerate(doc.get("shards", [])):
            entry = _manifest_entry(e, f"{path}: shards[{n}]")
            shards[entry["shard"]] = entry
        return cls(folder, dict(doc["job"]), shards)

    def save(self) -> None:
        doc = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "job": self.job,
               "shards": [self.shards[i] for i in sorted(self.shards)]}
        atomic_write_text(self.folder / MANIFEST, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def record(self, entry: dict[str, Any], *, save: bool = True) -> None:
        """Add a finished shard; rewrite the manifest (atomically) unless ``save`` is False. A shard whose file
        is written but not yet recorded is recomputed after a crash, so callers may save every few seconds
        (a manifest of 10⁵ shards is several MB: rewriting it per shard would cost O(shards²) bytes)."""
        self.shards[int(entry["shard"])] = dict(entry)
        if save:
            self.save()

    def finished(self, ranges: Sequence[tuple[int, int]]) -> set[int]:
        """Shards the manifest lists whose file still has its sha256 and the planned row range; others are
        forgotten (they will be recomputed)."""
        ok = set()
        for i, entry in list(self.shards.items()):
            path = self.folder / entry.get("file", "")
            good = (0 <= i < len(ranges) and [entry.get("start"), entry.get("stop")] == list(ranges[i])
                    and path.is_file() and sha256_of(path) == entry.get("sha256"))
            if good:
                ok.add(i)
            else:
                log.warning("shard %d: file missing, changed or from another plan; it will be recomputed", i)
                del self.shards[i]
        return ok

    def iter_shards(self, n_shards: int) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Every shard's ``(vectors, coords, ids)`` in order, each verified (all must be finished)."""
        missing = [i for i in range(n_shards) if i not in self.shards]
        if missing:
            raise StateError(f"{self.folder}: shards {missing[:10]} are not finished; rerun the build to complete them")
        dim = self.job.get("embed_dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise CorruptFileError(f"{self.folder / MANIFEST}: job.embed_dim {dim!r} is not a positive integer; "
                                   "delete the shard folder and rebuild")
        for i in range(n_shards):
            yield read_shard(self.folder, self.shards[i], dim)
