"""The index file: one ``.npz`` (a zip of ``.npy`` arrays; no pickle), written atomically, read with checks.

Members: ``meta`` (UTF-8 JSON as uint8: format, version, backend, dim, count, model fingerprint, parameters,
``versions`` and ``tile_side_m``), ``coords`` float64 ``(N, 2)`` lat/lon degrees, ``ids`` unicode ``(N,)``, and
either ``embeddings`` (``float32``/``float16`` ``(N·versions, dim)``, exact backends) or ``faiss`` (faiss's own
serialisation as uint8).

``versions`` = S: each of the ``N`` tiles is embedded about ``S`` centres (the model's aerial ``centres`` n,
S = n·n, :mod:`s4g_engine.tile_centres`), stored tile-major (row ``t·S + s`` is tile ``t``, version ``s``); only
the exact backends hold S > 1. A file without the field (written before it existed) has S = 1.
``tile_side_m`` (optional, > 0): the ground width of a tile in metres, which turns a version's pixel shift into
a position inside the tile.

Writing goes through :mod:`s4g_engine.fileio` (temporary file, fsync, rename): a crash or ``kill -9`` leaves
the previous file intact. Reading trusts nothing: a file that is not a zip, a zip of other arrays, a member
that is missing or of the wrong type, shapes that disagree with ``count``/``dim``, NaN or out-of-range
coordinates, non-finite embeddings, a damaged faiss payload — each is a :class:`FormatError` or
:class:`CorruptFileError` naming the file and the member, and an index of another model a
:class:`ModelMismatchError`. The caller's current index is never touched by a failed read.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import (
    CorruptFileError,
    DependencyError,
    FileAccessError,
    FormatError,
    MissingFileError,
    ModelMismatchError,
    NotAFileError,
    S4GError,
)
from s4g_engine.fileio import atomic_write_with
from s4g_engine.tile_centres import MAX_CENTRES

__all__ = ["FORMAT", "VERSION", "write_index", "read_index", "import_faiss"]

FORMAT = "s4g-index"
VERSION = 1
_BACKENDS = ("exact", "exact-fp16", "faiss-flat", "faiss-ivfpq")
_MEMBERS = {"meta", "coords", "ids", "embeddings", "faiss"}
_REBUILD = "rebuild it with `s4g-index build`"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_META = 1 << 20
_MAX_RATIO = 1000  # a compressed member may not expand more than this (zip bomb)
MAX_VERSIONS = MAX_CENTRES * MAX_CENTRES  # versions per tile: an n × n grid of centres


def import_faiss() -> Any:
    """``import faiss`` without its loader's INFO noise ("Could not load library with AVX2 support ...", which
    only says which of its builds it picked); a clear error when faiss is missing."""
    loader = logging.getLogger("faiss.loader")
    if loader.level == logging.NOTSET:
        loader.setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as exc:
        raise DependencyError(f"this index backend needs faiss ({exc}); install the engine extra: "
                              "pip install 's4g[engine]' (faiss-cpu), or use the 'exact' backend") from exc
    return faiss


def write_index(path: str | os.PathLike[str], snap: dict[str, Any]) -> None:
    """Write a snapshot (:meth:`ReferenceIndex.snapshot`) atomically to ``path``."""
    meta = {"format": FORMAT, "version": VERSION, **snap["meta"]}
    arrays = dict(snap["arrays"])
    if arrays["ids"].size == 0:
        arrays["ids"] = np.zeros(0, dtype="<U1")
    arrays["meta"] = np.frombuffer(json.dumps(meta, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    atomic_write_with(Path(path), lambda f: np.savez(f, **arrays))


def _open_checked(p: Path) -> None:
    if p.is_dir():
        raise NotAFileError(f"index {str(p)!r} is a folder; expected an index file written by `s4g-index build`")
    if not p.is_file():
        raise MissingFileError(f"index file {str(p)!r} does not exist; build one with `s4g-index build`")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except PermissionError as exc:
        raise FileAccessError(f"cannot read index {str(p)!r}: {exc.strerror}; check its permissions") from exc
    if head not in _ZIP_MAGIC:
        kind = "a single .npy array" if head[:4] == b"\x93NUM" else f"a file starting with {head!r}"
        raise FormatError(f"{str(p)!r} is not an s4g index: expected a .npz written by `s4g-index build` "
                          f"(a zip), got {kind}; {_REBUILD}")


def _read_members(p: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_RATIO * max(
                        info.compress_size, 1024):
                    raise CorruptFileError(f"{str(p)!r}: member {info.filename!r} would expand {info.compress_size:,}"
                                           f" → {info.file_size:,} bytes (a zip bomb?); {_REBUILD}")
        with np.load(p, allow_pickle=False) as z:
            names = [n for n in z.files if n in _MEMBERS]
            data = {n: z[n] for n in names}
    except S4GError:
        raise
    except PermissionError as exc:
        raise FileAccessError(f"cannot read index {str(p)!r}: {exc.strerror}; check its permissions") from exc
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise FormatError(f"{str(p)!r}: holds Python objects (pickle), which s4g never loads; expected plain "
                              f"arrays written by `s4g-index build`; {_REBUILD}") from exc
        raise CorruptFileError(f"index file {str(p)!r} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                               f"{_REBUILD}") from exc
    except (zipfile.BadZipFile, OSError, KeyError, EOFError, zipfile.LargeZipFile, NotImplementedError,
            RuntimeError) as exc:
        raise CorruptFileError(f"index file {str(p)!r} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                               f"{_REBUILD}") from exc
    for name, value in data.items():
        if not isinstance(value, np.ndarray):  # np.load gives raw bytes for a member that is not an .npy
            raise CorruptFileError(f"{str(p)!r}: member {name!r} is not a NumPy array (.npy); expected the arrays "
                                   f"written by `s4g-index build`; {_REBUILD}")
    return data


def _int_field(meta: dict[str, Any], key: str, lo: int, hi: int, p: Path) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise FormatError(f"{str(p)!r}: meta.{key} must be an integer in [{lo}, {hi}], got {v!r}; {_REBUILD}")
    return v


def _parse_meta(raw: np.ndarray | None, p: Path) -> dict[str, Any]:
    if raw is None:
        raise FormatError(f"{str(p)!r} is not an s4g index: the 'meta' member is missing; {_REBUILD}")
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_META:
        raise FormatError(f"{str(p)!r}: 'meta' must be JSON bytes (uint8, 1-D, < 1 MB), got {raw.dtype} {raw.shape}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(f"{str(p)!r}: 'meta' is not UTF-8 JSON ({exc}); {_REBUILD}") from exc
    if not isinstance(meta, dict):
        raise FormatError(f"{str(p)!r}: 'meta' must be a JSON object, got {type(meta).__name__}; {_REBUILD}")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise FormatError(f"{str(p)!r}: not an s4g index (format {meta.get('format')!r} v{meta.get('version')!r}); "
                          f"expected {FORMAT!r} v{VERSION}; {_REBUILD}")
    if meta.get("backend") not in _BACKENDS:
        raise FormatError(f"{str(p)!r}: meta.backend must be one of {_BACKENDS}, got {meta.get('backend')!r}")
    _int_field(meta, "count", 1, 1 << 40, p)
    _int_field(meta, "dim", 1, 1 << 16, p)
    meta.setdefault("versions", 1)  # a file written before tiles had versions
    _int_field(meta, "versions", 1, MAX_VERSIONS, p)
    if meta["versions"] > 1 and meta["backend"] not in ("exact", "exact-fp16"):
        raise FormatError(f"{str(p)!r}: meta.versions = {meta['versions']} (tiles embedded about several centres) "
                          f"needs an exact backend, got {meta['backend']!r}; {_REBUILD}")
    side = meta.get("tile_side_m")
    if side is not None and (isinstance(side, bool) or not isinstance(side, (int, float)) or not 0 < side < 1e7):
        raise FormatError(f"{str(p)!r}: meta.tile_side_m must be a positive number of metres or null, got {side!r}; "
                          f"{_REBUILD}")
    fp = meta.get("fingerprint")
    if fp is not None and not isinstance(fp, str):
        raise FormatError(f"{str(p)!r}: meta.fingerprint must be a string or null, got {fp!r}")
    params = meta.get("params", {})
    if not isinstance(params, dict) or any(not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int)
                                           or v < 1 for k, v in params.items()):
        raise FormatError(f"{str(p)!r}: meta.params must map names to positive integers, got {params!r}")
    meta["params"] = params
    return meta


def _check_arrays(data: dict[str, np.ndarray], n: int, p: Path) -> tuple[np.ndarray, list[str]]:
    coords, ids = data.get("coords"), data.get("ids")
    if coords is None or ids is None or coords.shape != (n, 2) or ids.shape != (n,):
        raise CorruptFileError(f"{str(p)!r}: inconsistent index: meta.count says {n}, got coords "
                               f"{getattr(coords, 'shape', None)} and ids {getattr(ids, 'shape', None)}; {_REBUILD}")
    if coords.dtype.kind != "f":
        raise FormatError(f"{str(p)!r}: coords must be floating point (lat, lon), got dtype {coords.dtype}")
    if ids.dtype.kind not in "US":
        raise FormatError(f"{str(p)!r}: ids must be strings, got dtype {ids.dtype}")
    c = np.ascontiguousarray(coords, dtype=np.float64)
    bad = ~np.isfinite(c).all(axis=1) | (np.abs(c[:, 0]) > 90) | (np.abs(c[:, 1]) > 180)
    if bad.any():
        r = int(np.argmax(bad))
        raise CorruptFileError(f"{str(p)!r}: {int(bad.sum())} reference(s) have invalid coordinates (first: row {r} "
                               f"= ({c[r, 0]}, {c[r, 1]})); expected finite latitude in [-90, 90] and longitude in "
                               f"[-180, 180]; {_REBUILD}")
    id_list = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in ids.tolist()]
    return c, id_list


def _check_embeddings(data: dict[str, np.ndarray], meta: dict[str, Any], p: Path) -> np.ndarray:
    n, dim = meta["count"] * meta["versions"], meta["dim"]
    emb = data.get("embeddings")
    want = np.float16 if meta["backend"] == "exact-fp16" else np.float32
    if emb is None or emb.shape != (n, dim) or emb.dtype != want:
        raise CorruptFileError(f"{str(p)!r}: expected embeddings {np.dtype(want).name} ({n}, {dim}) as meta says "
                               f"({meta['count']} tiles × {meta['versions']} versions), got "
                               f"{getattr(emb, 'dtype', None)} {getattr(emb, 'shape', None)}; {_REBUILD}")
    if not np.isfinite(emb).all():
        raise CorruptFileError(f"{str(p)!r}: the embeddings contain NaN/Inf; expected finite values; {_REBUILD}")
    return np.ascontiguousarray(emb)


def _load_faiss(data: dict[str, np.ndarray], meta: dict[str, Any], p: Path) -> Any:
    faiss = import_faiss()
    n, dim, backend = meta["count"], meta["dim"], meta["backend"]
    payload = data.get("faiss")
    if payload is None or payload.dtype != np.uint8 or payload.ndim != 1 or payload.size == 0:
        raise CorruptFileError(f"{str(p)!r}: the faiss index payload is missing or not bytes; {_REBUILD}")
    try:
        index = faiss.deserialize_index(np.ascontiguousarray(payload))
    except Exception as exc:  # faiss raises RuntimeError with its own C++ message
        raise CorruptFileError(f"{str(p)!r}: the faiss payload cannot be read ({' '.join(str(exc).split())[:200]}); "
                               f"{_REBUILD}") from exc
    want = faiss.IndexFlatIP if backend == "faiss-flat" else faiss.IndexIVFPQ
    if not isinstance(index, want) or getattr(index, "metric_type", None) != faiss.METRIC_INNER_PRODUCT:
        raise FormatError(f"{str(p)!r}: meta says backend {backend!r}, the faiss payload is a "
                          f"{type(index).__name__}; {_REBUILD}")
    if index.ntotal != n or index.d != dim:
        raise CorruptFileError(f"{str(p)!r}: the faiss index holds {index.ntotal}×{index.d}, meta says {n}×{dim}; "
                               f"{_REBUILD}")
    if backend == "faiss-ivfpq":
        faiss.extract_index_ivf(index).nprobe = int(meta["params"].get("nprobe", 32))
    return index


def read_index(path: str | os.PathLike[str], *, expected_fingerprint: str | None = None,
               expected_dim: int | None = None,
               expected_versions: int | None = None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """``(meta, {"coords", "ids", "embeddings"?}, faiss index or None)`` from an index file, fully checked;
    ``expected_versions``: the versions per tile the model embeds (its aerial ``centres`` squared)."""
    p = Path(path)
    _open_checked(p)
    data = _read_members(p)
    meta = _parse_meta(data.get("meta"), p)
    if expected_fingerprint is not None and meta.get("fingerprint") != expected_fingerprint:
        raise ModelMismatchError(f"index {str(p)!r} was built by model {meta.get('fingerprint')!r}, but this model is "
                                 f"{expected_fingerprint!r}: embeddings of different models are not comparable; "
                                 "rebuild the index with this model (`s4g-index build --model ...`)")
    if expected_dim is not None and meta["dim"] != expected_dim:
        raise ModelMismatchError(f"index {str(p)!r} holds {meta['dim']}-dim embeddings, but this model embeds into "
                                 f"{expected_dim} dims; rebuild the index with this model (`s4g-index build`)")
    if expected_versions is not None and meta["versions"] != expected_versions:
        raise ModelMismatchError(f"index {str(p)!r} holds {meta['versions']} version(s) per tile, but this model "
                                 f"embeds each tile as {expected_versions} version(s) (an n × n grid of centres, "
                                 "config.json views.aerial.centres = n); rebuild the index with this model's bundle "
                                 "(`s4g-index build --model ...`)")
    coords, ids = _check_arrays(data, meta["count"], p)
    arrays: dict[str, Any] = {"coords": coords, "ids": ids}
    faiss_index = None
    if meta["backend"] in ("exact", "exact-fp16"):
        arrays["embeddings"] = _check_embeddings(data, meta, p)
    else:
        faiss_index = _load_faiss(data, meta, p)
    return meta, arrays, faiss_index
