"""The reference index: embeddings of geo-tagged aerial tiles + their coordinates and ids (torch-free).

Backends (all inner product on L2-normalised embeddings = cosine):

* ``exact``       — the core's ``topk_similarity`` over a float32 matrix (streams, never a Q×N matrix);
* ``exact-fp16``  — the same over float16 storage (half the memory; scores differ by ~1e-3);
* ``faiss-flat``  — faiss ``IndexFlatIP`` (exact), moved to the GPU when faiss has GPUs;
* ``faiss-ivfpq`` — faiss ``IndexIVFPQ`` for galleries beyond memory (approximate: recall@k < 100 %).

``auto`` picks by gallery size when the index is first searched or saved (see :func:`choose_backend`).

Concurrency: every mutation (``add``, building the searchable structure) and every snapshot taken for
``save`` happen under one lock, so a saved file never holds parts that disagree, and a search sees the
index either before or after an ``add``. The file format and its checks are in :mod:`s4g_engine.index_file`.

An approximate search may find fewer than ``k`` candidates: those are marked by the sentinel index −1 with
score −inf (faiss's own −3.4e38 is normalised to −inf).

Tiles with versions (``versions`` = S > 1, a model whose aerial view has ``centres`` = n, S = n·n; see
:mod:`s4g_engine.tile_centres`): the index holds ``N·S`` embeddings, tile-major, but counts, ids and coords are
per tile; a tile scores the best of its versions and :meth:`ReferenceIndex.search_versions` also says which
version that was. Only the exact backends support it (the grouping over versions is exact there); faiss and
Milvus refuse it with an :class:`~s4g_engine.errors.InputError`.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from s4g_engine.errors import DependencyError, InputError, ModelMismatchError, StateError
from s4g_engine.index_file import MAX_VERSIONS, import_faiss, read_index, write_index

log = logging.getLogger(__name__)

BACKENDS = ("auto", "exact", "exact-fp16", "faiss-flat", "faiss-ivfpq")
#: auto: exact float32 below this many references, float16 storage up to AUTO_IVFPQ_MIN, then IVF-PQ.
AUTO_FP16_MIN = 2_000_000
AUTO_IVFPQ_MIN = 10_000_000
MAX_DIM = 1 << 16
#: Gallery backends in their own module, imported by name when used (the plugin depends on this module, not
#: the reverse): ``create_index(dim, uri, **kw)``, ``is_gallery_uri(path)``, ``open_index(uri, ...)``.
PLUGIN_BACKENDS = {"milvus": "s4g_engine.milvus_backend"}


def faiss_gpus() -> int:
    """Number of GPUs faiss can use (0 for faiss-cpu or when faiss is missing)."""
    try:
        faiss = import_faiss()
    except DependencyError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def choose_backend(n: int) -> str:
    """The backend ``auto`` resolves to for a gallery of ``n`` references.

    Exact search is affordable up to ~10M references (a full scan of 10M × 512 fp16 is ~10 GB/query batch);
    beyond that IVF-PQ keeps ~d/4 bytes per reference. With a faiss GPU build, ``faiss-flat`` on the GPU.
    """
    if n >= AUTO_IVFPQ_MIN:
        return "faiss-ivfpq"
    if faiss_gpus() > 0:
        return "faiss-flat"
    return "exact-fp16" if n >= AUTO_FP16_MIN else "exact"


def validate_coords(coords: Any, n: int) -> np.ndarray:
    """``coords`` → float64 ``(n, 2)`` (lat, lon) degrees; :class:`InputError` on bad shape, NaN or range."""
    try:
        c = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected coords as numbers of shape ({n}, 2) = (lat, lon) degrees, got "
                         f"{type(coords).__name__} that is not numeric ({exc})") from None
    if c.ndim == 1 and c.shape[0] == 2 and n == 1:
        c = c[None]
    if c.shape != (n, 2):
        raise InputError(f"expected coords of shape ({n}, 2) = (lat, lon) degrees, one row per image, got {c.shape}")
    bad = ~np.isfinite(c).all(axis=1)
    if bad.any():
        raise InputError(f"coords contain NaN/Inf for {int(bad.sum())} image(s) (first at row {int(np.argmax(bad))}); "
                         "expected a finite (lat, lon) for every reference")
    out = (np.abs(c[:, 0]) > 90) | (np.abs(c[:, 1]) > 180)
    if out.any():
        r = int(np.argmax(out))
        raise InputError(f"coords out of range at row {r}: got ({c[r, 0]:g}, {c[r, 1]:g}); expected latitude in "
                         "[-90, 90] and longitude in [-180, 180] (pass (lat, lon), not (lon, lat) or projected metres)")
    return c


def check_ids(ids: Any, n: int) -> list[str] | None:
    """``ids`` → ``n`` strings (or None = numbered automatically); a bare string is refused, not split."""
    if ids is None:
        return None
    if isinstance(ids, (str, bytes, bytearray)):
        raise InputError(f"ids: expected a sequence of {n} ids (one per image), got the single string {ids!r}; "
                         "wrap it in a list: ids=[...]")
    if isinstance(ids, np.ndarray) and ids.ndim != 1:
        raise InputError(f"ids: expected a 1-D sequence of {n} ids, got an array of shape {ids.shape}")
    try:
        items = list(ids)
    except TypeError:
        raise InputError(f"ids: expected a sequence of {n} strings, got {type(ids).__name__}") from None
    out = []
    for i, v in enumerate(items):
        if isinstance(v, (str, np.str_)):
            out.append(str(v))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            out.append(str(int(v)))
        else:
            raise InputError(f"ids[{i}]: expected a string (or an integer), got {type(v).__name__} {v!r}")
    if len(out) != n:
        raise InputError(f"ids: got {len(out)} ids for {n} references; expected one id per image (or None)")
    return out


def check_versions(versions: Any) -> int:
    """``versions`` (embeddings per tile) as an int in ``[1, MAX_VERSIONS]``, else :class:`InputError`."""
    if isinstance(versions, (bool, np.bool_)) or not isinstance(versions, (int, np.integer)) \
            or not 1 <= versions <= MAX_VERSIONS:
        raise InputError(f"versions (embeddings per tile) must be an integer in [1, {MAX_VERSIONS}], got {versions!r}")
    return int(versions)


def check_tile_side_m(value: Any) -> float | None:
    """``tile_side_m`` (a tile's ground width in metres) as a positive finite float, or None (unknown)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 < float(value) < 1e7:
        raise InputError(f"tile_side_m must be a tile's ground width in metres (a number > 0), or None, got {value!r}")
    return float(value)


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise InputError(f"k={k} is larger than the index ({n} references); expected k <= {n}")
    return int(k)


class ReferenceIndex:
    """Embeddings ``(N·S, d)`` of ``N`` tiles (``S`` = ``versions`` per tile, tile-major; 1 = one per tile) +
    coords ``(N, 2)`` + ids, searched by inner product.

    ``search(queries (Q, d), k) -> (scores float32 (Q, k), indices int64 (Q, k))``, best tiles first (a tile
    scores the best of its versions); :meth:`search_versions` adds the best version of each hit. ``len`` counts
    tiles. ``tile_side_m``: the tiles' ground width in metres when known (kept in the file).
    ``add`` may be called many times; the backend is resolved (``auto``) and faiss structures are built
    lazily on the next ``search``/``save``. Safe to use from several threads (see the module docstring).
    """

    def __new__(cls, dim: int = 0, *, backend: str = "auto", uri: str | None = None, **kw: Any) -> Any:
        if backend in PLUGIN_BACKENDS:  # a new gallery in e.g. Milvus; __init__ is not run
            versions = kw.pop("versions", 1)
            kw.pop("tile_side_m", None)
            if versions != 1:
                raise InputError(f"index backend {backend!r} holds one embedding per tile, but this model embeds each "
                                 f"tile as {versions} versions (config.json views.aerial.centres > 1); expected "
                                 "backend 'exact' or 'exact-fp16' (or 'auto') for such a model")
            return importlib.import_module(PLUGIN_BACKENDS[backend]).create_index(dim, uri, **kw)
        return super().__new__(cls)

    def __init__(self, dim: int, *, backend: str = "auto", fingerprint: str | None = None,
                 nlist: int | None = None, pq_m: int | None = None, nprobe: int = 32, use_gpu: bool = True,
                 versions: int = 1, tile_side_m: float | None = None) -> None:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= MAX_DIM:
            raise InputError(f"index dim must be an integer in [1, {MAX_DIM}], got {dim!r}")
        if backend not in BACKENDS:
            raise InputError(f"index backend must be one of {BACKENDS}, got {backend!r}")
        for name, v in (("nlist", nlist), ("pq_m", pq_m), ("nprobe", nprobe)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        self.versions = check_versions(versions)
        if self.versions > 1 and backend not in ("auto", "exact", "exact-fp16"):
            raise InputError(f"index backend {backend!r} cannot hold tiles with {self.versions} versions each (a model "
                             "with views.aerial.centres > 1): only the exact backends group a tile's versions "
                             "exactly; expected backend 'exact', 'exact-fp16' or 'auto'")
        self.tile_side_m = check_tile_side_m(tile_side_m)
        self.dim = int(dim)
        self.requested = backend
        self.backend: str | None = None if backend == "auto" else backend
        self.fingerprint = fingerprint
        self.params: dict[str, Any] = {"nlist": nlist, "pq_m": pq_m, "nprobe": int(nprobe)}
        self.use_gpu = use_gpu
        self._lock = threading.RLock()
        self._pending: list[np.ndarray] = []
        self._emb: np.ndarray | None = None  # exact backends; replaced, never modified in place
        self._faiss: Any = None
        self._coords = np.zeros((0, 2), dtype=np.float64)  # replaced, never modified in place
        self._ids: list[str] = []  # append-only

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def coords(self) -> np.ndarray:
        """float64 ``(N, 2)`` lat/lon degrees."""
        return self._coords

    @property
    def ids(self) -> list[str]:
        return self._ids

    def add(self, embeddings: np.ndarray, coords: Any, ids: Sequence[str] | None = None) -> None:
        """Append ``n`` tiles: ``embeddings`` float32 ``(n·S, d)`` (L2-normalised; S = :attr:`versions`, row
        ``t·S + s`` = tile ``t``'s version ``s``) with ``coords`` ``(n, 2)`` and ``ids`` (one per tile)."""
        try:
            e = np.asarray(embeddings, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"expected embeddings as a float array (n, {self.dim}), got "
                             f"{type(embeddings).__name__}") from None
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise InputError(f"expected embeddings of shape (n, {self.dim}), got {e.shape}")
        if not np.isfinite(e).all():
            raise InputError("embeddings contain NaN/Inf; expected finite values — check the encoder and its inputs")
        if e.shape[0] % self.versions:
            raise InputError(f"expected {self.versions} embeddings per tile (this index's versions), got {e.shape[0]} "
                             "rows, not a whole number of tiles; embed tiles with Localiser.embed_aerial_versions")
        n = e.shape[0] // self.versions
        c = validate_coords(coords, n)
        id_list = check_ids(ids, n)
        with self._lock:
            new_ids = id_list if id_list is not None else [str(len(self._ids) + i) for i in range(n)]
            self._pending.append(np.ascontiguousarray(e))
            self._coords = np.concatenate([self._coords, c], axis=0)
            self._ids.extend(new_ids)

    # -- building ---------------------------------------------------------------------------------------
    def _resolve(self) -> str:
        if self.backend is None and self.versions > 1:
            # Only the exact backends group versions; float32 because grouped_topk scores in float32.
            self.backend = "exact"
            log.info("index backend auto → exact for %d tiles × %d versions", len(self), self.versions)
        if self.backend is None:
            self.backend = choose_backend(len(self))
            log.info("index backend auto → %s for %d references", self.backend, len(self))
        return self.backend

    def _new_faiss(self, train: np.ndarray) -> Any:
        faiss = import_faiss()
        d, n = self.dim, train.shape[0]
        if self.backend == "faiss-flat":
            index = faiss.IndexFlatIP(d)
        else:
            nlist = self.params["nlist"] or int(min(65536, max(1, math.sqrt(n))))
            nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
            # k-means needs ~39–256 points per centroid: train on a random sample, not the whole gallery.
            cap = 64 * nlist + 10_000
            if n > cap:
                train = train[np.random.default_rng(0).choice(n, cap, replace=False)]
            m = self.params["pq_m"] or next(mm for mm in (d // 4, d // 8, d // 16, 16, 8, 4, 2, 1)
                                           if mm >= 1 and d % mm == 0)
            if d % m:
                raise InputError(f"pq_m={m} must divide the embedding dim {d}; choose a divisor of {d}")
            nbits = 8 if train.shape[0] >= 256 * 39 else max(1, min(8, int(math.log2(max(2, train.shape[0] // 39)))))
            quant = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quant, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            index.train(train)
            index.nprobe = min(int(self.params["nprobe"]), nlist)
            self.params.update(nlist=nlist, pq_m=m, nbits=nbits)
        if self.use_gpu and faiss_gpus() > 0 and self.backend == "faiss-flat":
            index = faiss.index_cpu_to_all_gpus(index)
        return index

    def _materialise(self) -> None:
        """Move pending rows into the searchable structure (under the lock)."""
        with self._lock:
            if not self._pending and (self._emb is not None or self._faiss is not None):
                return
            backend = self._resolve()
            new = np.concatenate(self._pending, axis=0) if self._pending else np.zeros((0, self.dim), np.float32)
            if backend in ("exact", "exact-fp16"):
                dtype = np.float16 if backend == "exact-fp16" else np.float32
                parts = [self._emb] if self._emb is not None else []
                self._emb = np.ascontiguousarray(np.concatenate(parts + [new.astype(dtype)], axis=0))
            else:
                if self._faiss is None:
                    if new.shape[0] == 0:
                        self._pending = []
                        return
                    self._faiss = self._new_faiss(new)
                self._faiss.add(np.ascontiguousarray(new, dtype=np.float32))
            self._pending = []

    # -- search -----------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` references per query: ``(scores float32 (Q, k), indices int64 (Q, k))``, best first.

        Candidates an approximate backend did not find have index −1 and score −inf. With versions, a tile's
        score is its best version's (:meth:`search_versions`).
        """
        scores, idx, _ = self.search_versions(queries, k)
        return scores, idx

    def search_versions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` tiles per query and the best version of each: ``(scores float32 (Q, k), tile indices int64
        (Q, k), versions int64 (Q, k) in [0, S))``, best first; a tile scores the maximum over its versions and
        ties go to the lower tile index (exact: :func:`s4g_engine.tile_centres.grouped_topk`). With one version
        per tile the versions are all 0 and the rest is :meth:`search`'s answer."""
        try:
            q = np.ascontiguousarray(queries, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"expected queries as a float array (Q, {self.dim}), got "
                             f"{type(queries).__name__}") from None
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"expected queries of shape (Q, {self.dim}), got {q.shape}")
        if not np.isfinite(q).all():
            raise InputError("queries contain NaN/Inf; expected finite embeddings")
        with self._lock:
            n = len(self)
            if n == 0:
                raise InputError("the index is empty: expected references; add them first "
                                 "(Localiser.index_references or load_index)")
            k = _check_k(k, n)
            self._materialise()
            emb, backend = self._emb, self.backend
            if backend not in ("exact", "exact-fp16"):
                # faiss indexes are modified in place by add(): search them under the lock.
                scores, idx = self._faiss.search(q, k)
        version = None
        if backend in ("exact", "exact-fp16") and self.versions > 1:
            from s4g_engine.tile_centres import grouped_topk

            # a float16 gallery is converted to float32 by grouped_topk on every call (costly for big galleries)
            scores, idx, version = grouped_topk(q, emb, self.versions, k)
        elif backend in ("exact", "exact-fp16"):
            from s4g_engine.kernels import topk_similarity  # the compiled core

            scores, idx = topk_similarity(q, emb, k)  # emb: an immutable snapshot
        scores = np.asarray(scores, dtype=np.float32)
        idx = np.asarray(idx, dtype=np.int64)
        scores[idx < 0] = -np.inf  # faiss pads missing candidates with -3.4e38
        version = np.zeros(idx.shape, np.int64) if version is None else np.asarray(version, np.int64)
        return scores, idx, version

    def bytes_per_reference(self) -> float:
        """Memory of the searchable structure per reference tile, all its versions (without coords/ids)."""
        self._materialise()
        if self.backend in ("exact", "exact-fp16"):
            return float(self._emb.itemsize * self.dim * self.versions) if self._emb is not None else 0.0
        if self.backend == "faiss-flat":
            return float(4 * self.dim)
        return float(self._faiss.code_size) + 8.0  # PQ code + stored id

    # -- persistence ------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of everything a file needs (taken under the lock): ``meta`` and the arrays."""
        with self._lock:
            if len(self) == 0:
                raise StateError("refusing to save an empty index: expected references; add them first")
            self._materialise()
            n = len(self._ids)
            meta = {"backend": self.backend, "dim": self.dim, "count": n, "fingerprint": self.fingerprint,
                    "params": {k: v for k, v in self.params.items() if v is not None}, "versions": self.versions}
            if self.tile_side_m is not None:
                meta["tile_side_m"] = self.tile_side_m
            arrays: dict[str, np.ndarray] = {"coords": self._coords,
                                             "ids": np.asarray(self._ids, dtype=str)}
            if self.backend in ("exact", "exact-fp16"):
                arrays["embeddings"] = self._emb  # type: ignore[assignment]
                rows = self._emb.shape[0]  # type: ignore[union-attr]
            else:
                faiss = import_faiss()
                index = self._faiss
                if faiss_gpus() > 0 and hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
                    index = faiss.index_gpu_to_cpu(index)
                arrays["faiss"] = np.asarray(faiss.serialize_index(index), dtype=np.uint8)
                rows = int(index.ntotal)
        if not (rows == n * self.versions and n == arrays["coords"].shape[0] == arrays["ids"].shape[0]):  # a bug
            raise StateError(f"index snapshot is inconsistent ({rows} embeddings for {self.versions} version(s) per "
                             f"tile, {arrays['coords'].shape[0]} coords, {arrays['ids'].shape[0]} ids); nothing "
                             "was written")
        return {"meta": meta, "arrays": arrays}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index atomically to ``path`` (one ``.npz``, see :mod:`s4g_engine.index_file`).

        The content is a snapshot taken under the lock, so concurrent ``add`` calls cannot make the file's
        parts disagree; the file replaces ``path`` only once it is complete.
        """
        write_index(path, self.snapshot())
        log.info("saved %s index of %d references to %s", self.backend, len(self), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expected_fingerprint: str | None = None,
             expected_dim: int | None = None, expected_versions: int | None = None,
             use_gpu: bool = True) -> ReferenceIndex:
        """Read an index written by :meth:`save`, checking everything in it (:func:`index_file.read_index`).

        Raises :class:`MissingFileError`, :class:`FormatError` (not an index), :class:`CorruptFileError`
        (damaged, parts disagree, invalid coordinates) or :class:`ModelMismatchError` (another model, or
        another number of versions per tile than ``expected_versions``).
        """
        for module in PLUGIN_BACKENDS.values():  # e.g. a Milvus server URI or a Milvus Lite .db file
            plugin = importlib.import_module(module)
            if plugin.is_gallery_uri(path):
                if expected_versions not in (None, 1):
                    raise ModelMismatchError(f"gallery {str(path)!r} holds one embedding per tile, but this model "
                                             f"embeds each tile as {expected_versions} versions (config.json "
                                             "views.aerial.centres > 1); expected an index file built by "
                                             "`s4g-index build --index-backend exact` with this model")
                return plugin.open_index(str(path), expected_fingerprint=expected_fingerprint,
                                         expected_dim=expected_dim)
        meta, arrays, faiss_index = read_index(path, expected_fingerprint=expected_fingerprint,
                                               expected_dim=expected_dim, expected_versions=expected_versions)
        params = dict(meta["params"])
        idx = cls(meta["dim"], backend=meta["backend"], fingerprint=meta["fingerprint"],
                  nlist=params.get("nlist"), pq_m=params.get("pq_m"), nprobe=params.get("nprobe", 32),
                  use_gpu=use_gpu, versions=meta["versions"], tile_side_m=meta.get("tile_side_m"))
        idx.params.update(params)
        idx._coords = arrays["coords"]
        idx._ids = arrays["ids"]
        if faiss_index is None:
            idx._emb = arrays["embeddings"]
        else:
            if meta["backend"] == "faiss-flat" and use_gpu and faiss_gpus() > 0:
                faiss_index = import_faiss().index_cpu_to_all_gpus(faiss_index)
            idx._faiss = faiss_index
        return idx
