"""The gallery in Milvus (the ``cluster`` extra): ``ReferenceIndex(dim, backend="milvus", uri=...)``.

Milvus Lite (a local file such as ``tiles.db``, ``pip install milvus-lite``) is the embedded default; a Milvus
server or cluster (``http://host:19530``) is the production path, with the same code. The collection holds
one row per tile: ``pk`` (INT64 primary key = the row number in tile-list order), ``tile_id``, ``lat``,
``lon`` (degrees) and ``vector`` (FLOAT_VECTOR, inner product on L2-normalised embeddings). The model's
fingerprint and the embedding size are collection properties: opening a collection built with another model
raises :class:`~s4g_engine.errors.ModelMismatchError`.

**Exact re-rank.** Milvus' approximate index (HNSW, IVF_PQ, DiskANN) only proposes candidates: a search
over-fetches ``R = max(overfetch·k, k + 32)`` (≤ 16384) candidates with their stored vectors, and s4g re-scores
them with the core kernel (:func:`s4g_engine.kernels.topk_similarity`, docs/METHOD.md §13), the candidates
ordered by row number. The final top-k is therefore in the engine's canonical order with the canonical
scores: whenever the true top-k are among the R candidates, the answer is bit-identical to the exact
backend's. Recall@k is the fraction of true top-k the index proposes; it grows with R and with the index's
search effort (``ef`` / ``nprobe`` / ``search_list``, set from R here).

**Index per size** (:func:`choose_index`; ``index_type`` overrides), memory for d=1024 float32:

* < 1M vectors: HNSW (M=16, efConstruction=200): the graph and the vectors in RAM (~4.2 KB/vector);
  search effort ``ef = max(2R, 64)``.
* 1M – 50M: IVF_PQ (nlist ≈ 4√N, m = d/8 sub-quantisers of 8 bits): ~d/8 bytes/vector in RAM; the raw
  vectors stay in the collection for the re-rank; ``nprobe = 64``.
* ≥ 50M: DISKANN: graph and vectors on SSD, compressed vectors in RAM; ``search_list = max(2R, 100)``.

Recall is a property of the data and the index parameters: ``s4g-bench scale`` measures recall@1/@10 of each
choice against the exact core index in the same run; the figures are in docs/SCALING.md.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import (
    DependencyError,
    InputError,
    MissingFileError,
    ModelMismatchError,
    S4GError,
    StateError,
)

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "s4g_tiles"
MAX_TOPK = 16384  # Milvus' limit on a search's limit
INSERT_BATCH = 2048
INDEX_TYPES = ("auto", "FLAT", "HNSW", "IVF_FLAT", "IVF_PQ", "DISKANN")
_URI_PREFIXES = ("http://", "https://", "tcp://", "grpc://", "unix:")


class MilvusUnavailableError(S4GError, ConnectionError):
    """The Milvus server (or Milvus Lite file) cannot be reached or opened."""


def is_gallery_uri(path: Any) -> bool:
    """Whether ``path`` names a Milvus gallery: a server URI, or a Milvus Lite ``.db`` file."""
    text = str(path)
    return text.startswith(_URI_PREFIXES) or text.endswith(".db")


def _client(uri: str, timeout: float) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise DependencyError(f"the milvus index backend needs pymilvus ({exc}); install the cluster extra: "
                              "pip install 's4g[cluster]' (Milvus Lite for local .db files comes with it)") from exc
    if str(uri).endswith(".db"):
        # Milvus Lite's embedded gRPC server logs a traceback for every RPC it does not implement
        # (AllocTimestamp, asked by pymilvus and answered by a fallback); the client still gets every real error.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        # Its server manager logs "server stopped" at INFO from an atexit hook, after logging streams may be
        # closed (a "--- Logging error ---" traceback at the end of every pytest run that opened a .db).
        logging.getLogger("milvus_lite.server_manager").setLevel(logging.WARNING)
    try:
        return MilvusClient(uri=str(uri), timeout=timeout)
    except Exception as exc:  # pymilvus raises MilvusException / ConnectionError variants
        local = str(uri).endswith(".db")
        hint = ("expected a writable Milvus Lite file path ending in .db (pip install milvus-lite)" if local else
                "expected a running Milvus server at that address (check host, port 19530 and the token), or a "
                "local Milvus Lite file such as tiles.db")
        raise MilvusUnavailableError(f"cannot open Milvus at {uri!r} ({exc}); {hint}") from exc


def choose_index(n: int, dim: int, index_type: str = "auto") -> tuple[str, dict[str, Any]]:
    """``(index_type, build params)`` for a gallery of ``n`` vectors of size ``dim`` (see the module table)."""
    if index_type not in INDEX_TYPES:
        raise InputError(f"milvus index type must be one of {INDEX_TYPES}, got {index_type!r}")
    if index_type == "auto":
        index_type = "HNSW" if n < 1_000_000 else "IVF_PQ" if n < 50_000_000 else "DISKANN"
    if index_type == "HNSW":
        return "HNSW", {"M": 16, "efConstruction": 200}
    if index_type in ("IVF_PQ", "IVF_FLAT"):
        nlist = int(min(65536, max(16, 4 * math.sqrt(max(1, n)))))
        if index_type == "IVF_FLAT":
            return "IVF_FLAT", {"nlist": nlist}
        m = next(mm for mm in (dim // 8, dim // 4, dim // 16, 16, 8, 4, 2, 1) if mm >= 1 and dim % mm == 0)
        return "IVF_PQ", {"nlist": nlist, "m": m, "nbits": 8}
    return index_type, {}


def search_params(index_type: str, r: int) -> dict[str, Any]:
    """Search effort for ``r`` candidates: larger ``r`` → more effort → higher recall, lower QPS."""
    if index_type == "HNSW":
        return {"ef": max(2 * r, 64)}
    if index_type in ("IVF_PQ", "IVF_FLAT"):
        return {"nprobe": 64}
    if index_type == "DISKANN":
        return {"search_list": max(2 * r, 100)}
    return {}


class MilvusIndex:
    """A Milvus collection with the interface of :class:`~s4g_engine.index.ReferenceIndex` (``add``, ``search``,
    ``save``, ``len``, ``lookup``). Search results are row numbers; :meth:`lookup` turns them into coords and
    ids (kept from the search that found them, queried from Milvus otherwise)."""

    backend = "milvus"

    def __init__(self, client: Any, uri: str, collection: str, dim: int, fingerprint: str | None, *,
                 index_type: str = "auto", overfetch: int = 4, count: int = 0) -> None:
        if overfetch < 1:
            raise InputError(f"overfetch must be >= 1, got {overfetch}")
        self._c, self.uri, self.collection = client, str(uri), collection
        self.dim, self.fingerprint, self.overfetch = int(dim), fingerprint, int(overfetch)
        self.requested_index = index_type
        self.params: dict[str, Any] = {"uri": self.uri, "collection": collection}
        self._count = int(count)
        self._lock = threading.RLock()
        self._indexed = False
        self._cache: OrderedDict[int, tuple[float, float, str]] = OrderedDict()

    # -- creating and opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, uri: str, dim: int, *, fingerprint: str | None, collection: str = DEFAULT_COLLECTION,
               index_type: str = "auto", expected_count: int | None = None, timeout: float = 30.0,
               overfetch: int = 4) -> MilvusIndex:
        """A new, empty collection (an interrupted build of the same model is replaced; a finished one, or one
        of another model, is refused)."""
        from pymilvus import DataType, MilvusClient

        c = _client(uri, timeout)
        if c.has_collection(collection):
            props = c.describe_collection(collection).get("properties") or {}
            if props.get("s4g.complete") == "1" or props.get("s4g.fingerprint") != str(fingerprint):
                raise StateError(f"Milvus collection {collection!r} at {uri!r} already holds a gallery; expected a new "
                                 "one: choose another --collection or file, or drop it first")
            c.drop_collection(collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("tile_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("lat", DataType.DOUBLE)
        schema.add_field("lon", DataType.DOUBLE)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        c.create_collection(collection, schema=schema, consistency_level="Strong")
        c.alter_collection_properties(collection, properties={
            "s4g.fingerprint": str(fingerprint), "s4g.dim": str(int(dim)), "s4g.complete": "0",
            "s4g.expected_count": str(int(expected_count or 0))})
        idx = cls(c, uri, collection, dim, fingerprint, index_type=index_type, overfetch=overfetch)
        # The vector index is created before any insert, chosen for the expected size: Milvus then indexes the
        # segments as they are sealed (creating it after large inserts is refused by Milvus Lite).
        idx._create_vector_index(int(expected_count or 0))
        return idx

    @classmethod
    def open(cls, uri: str, *, expected_fingerprint: str | None = None, expected_dim: int | None = None,
             collection: str = DEFAULT_COLLECTION, timeout: float = 30.0, overfetch: int = 4) -> MilvusIndex:
        """An existing gallery, checked against the model that will query it."""
        c = _client(uri, timeout)
        if not c.has_collection(collection):
            raise StateError(f"Milvus at {uri!r} has no collection {collection!r}; expected a gallery built with "
                             "`s4g-index build --index-backend milvus --uri ...`")
        desc = c.describe_collection(collection)
        props = desc.get("properties") or {}
        fp, dim = props.get("s4g.fingerprint"), int(props.get("s4g.dim", 0))
        if props.get("s4g.complete") != "1":
            raise StateError(f"Milvus collection {collection!r} at {uri!r} is an unfinished build; rerun "
                             "s4g-index build")
        if expected_fingerprint is not None and fp != expected_fingerprint:
            raise ModelMismatchError(f"Milvus collection {collection!r} at {uri!r} was built with model fingerprint "
                                     f"{fp!r}, not with this model ({expected_fingerprint!r}); rebuild the gallery "
                                     "with this model (s4g-index build) or load the model it was built with")
        if expected_dim is not None and dim != expected_dim:
            raise ModelMismatchError(f"Milvus collection {collection!r} holds {dim}-d vectors, the model embeds "
                                     f"{expected_dim}-d; rebuild the gallery with this model")
        count = int(c.get_collection_stats(collection).get("row_count", 0))
        idx = cls(c, uri, collection, dim, fp, overfetch=overfetch, count=count)
        idx._indexed = True
        c.load_collection(collection)
        return idx

    def __len__(self) -> int:
        return self._count

    # -- adding -------------------------------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, coords: Any, ids: Sequence[str] | None = None) -> None:
        """Insert rows (float32 ``(n, d)`` L2-normalised, coords ``(n, 2)`` lat/lon, ids) after the present ones."""
        from s4g_engine.index import check_ids, validate_coords

        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise InputError(f"expected embeddings of shape (n, {self.dim}), got {e.shape}")
        if not np.isfinite(e).all():
            raise InputError("embeddings contain NaN/Inf; expected finite values")
        c = validate_coords(coords, e.shape[0])
        id_list = check_ids(ids, e.shape[0])
        with self._lock:
            base = self._count
            for s in range(0, e.shape[0], INSERT_BATCH):
                rows = [{"pk": base + j, "tile_id": id_list[j] if id_list else str(base + j), "lat": float(c[j, 0]),
                         "lon": float(c[j, 1]), "vector": e[j]} for j in range(s, min(e.shape[0], s + INSERT_BATCH))]
                self._c.insert(self.collection, rows)
            self._count += e.shape[0]
            self._indexed = False

    def _create_vector_index(self, n: int) -> None:
        kind, params = choose_index(n, self.dim, self.requested_index)
        ip = self._c.prepare_index_params()
        ip.add_index("vector", index_type=kind, metric_type="IP", params=params)
        self._c.create_index(self.collection, ip)
        log.info("milvus: %s index %s for ~%d vectors", kind, params, n)

    def _ensure_index(self) -> None:
        """Flush the inserts and load the collection for search (once after each series of adds)."""
        with self._lock:
            if self._indexed:
                return
            self._c.flush(self.collection)
            self._c.load_collection(self.collection)
            self._indexed = True

    def index_type(self) -> str:
        desc = self._c.describe_index(self.collection, "vector") or {}
        return str(desc.get("index_type", "")) or choose_index(self._count, self.dim, self.requested_index)[0]

    def save(self, path: Any = None) -> None:
        """Flush, load and mark the collection complete (``path``, when given, must be the URI)."""
        if path is not None and str(path) != self.uri:
            raise InputError(f"a Milvus gallery is saved in its own URI {self.uri!r}, got {path!r}")
        self._ensure_index()
        self._c.alter_collection_properties(self.collection, properties={"s4g.complete": "1"})

    # -- search -------------------------------------------------------------------------------------------
    def candidates_for(self, k: int) -> int:
        return int(min(MAX_TOPK, self._count, max(self.overfetch * k, k + 32)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows per query, re-ranked exactly: ``(scores float32 (Q, k), rows int64 (Q, k))``."""
        from s4g_engine.kernels import topk_similarity

        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"expected queries of shape (Q, {self.dim}), got {q.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self._count:
            raise InputError(f"k must be an integer in [1, {self._count}] (the gallery size), got {k!r}")
        self._ensure_index()
        r = self.candidates_for(int(k))
        kind = self.index_type()
        hits = self._c.search(self.collection, q, limit=r, anns_field="vector",
                              output_fields=["vector", "lat", "lon", "tile_id"],
                              search_params={"metric_type": "IP", "params": search_params(kind, r)})
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        rows = np.full((q.shape[0], k), -1, np.int64)
        for i, found in enumerate(hits):
            if not found:
                continue
            pks = np.asarray([h["pk"] for h in found], np.int64)
            order = np.argsort(pks, kind="stable")  # row order = the canonical tie order
            vecs = np.asarray([found[j]["entity"]["vector"] for j in order], np.float32)
            self._remember(found)
            s, loc = topk_similarity(q[i:i + 1], vecs, min(k, len(found)))
            m = s.shape[1]
            scores[i, :m] = s[0]
            rows[i, :m] = np.where(loc[0] >= 0, pks[order][np.maximum(loc[0], 0)], -1)
        return scores, rows

    def _remember(self, found: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            for h in found:
                ent = h["entity"]
                self._cache[int(h["pk"])] = (float(ent["lat"]), float(ent["lon"]), str(ent["tile_id"]))
                self._cache.move_to_end(int(h["pk"]))
            while len(self._cache) > 200_000:
                self._cache.popitem(last=False)

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
        """``(coords float64 rows.shape + (2,), ids)`` for result rows; −1 → NaN coords and id ``""``."""
        rows = np.asarray(rows, np.int64)
        with self._lock:
            missing = sorted({int(x) for x in rows.ravel() if x >= 0 and int(x) not in self._cache})
        if missing:
            got = self._c.query(self.collection, ids=missing, output_fields=["lat", "lon", "tile_id"])
            with self._lock:
                for g in got:
                    self._cache[int(g["pk"])] = (float(g["lat"]), float(g["lon"]), str(g["tile_id"]))
        coords = np.full(rows.shape + (2,), np.nan)
        ids = np.full(rows.shape, "", dtype=object)
        with self._lock:
            for pos, x in np.ndenumerate(rows):
                if x >= 0:
                    lat, lon, tid = self._cache[int(x)]
                    coords[pos] = (lat, lon)
                    ids[pos] = tid
        return coords, ids.tolist()

    def sample_points(self, limit: int = 5000) -> tuple[np.ndarray, list[str]]:
        """Up to ``limit`` gallery rows spread over the gallery (for the service's map): coords and ids."""
        n = self._count
        pks = np.unique(np.linspace(0, max(0, n - 1), num=min(limit, n)).astype(np.int64)).tolist()
        got = self._c.query(self.collection, ids=pks, output_fields=["lat", "lon", "tile_id"])
        got.sort(key=lambda g: g["pk"])
        return np.asarray([(g["lat"], g["lon"]) for g in got], np.float64).reshape(-1, 2), [g["tile_id"] for g in got]

    def bytes_per_reference(self) -> float:
        return float(4 * self.dim)

    def describe(self) -> dict[str, Any]:
        return {"backend": "milvus", "count": self._count, "dim": self.dim, "fingerprint": self.fingerprint,
                "params": {**self.params, "index_type": self.index_type()}}

    def close(self) -> None:
        self._c.close()


def create_index(dim: int, uri: str | None, *, fingerprint: str | None = None, collection: str = DEFAULT_COLLECTION,
                 index_type: str = "auto", overfetch: int = 4, **unused: Any) -> MilvusIndex:
    """``ReferenceIndex(dim, backend="milvus", uri=...)``: a new, empty Milvus gallery."""
    if not uri:
        raise InputError("backend='milvus' needs uri=...: a Milvus Lite file such as 'tiles.db', or a server URI "
                         "such as 'http://host:19530'")
    if unused:
        raise InputError(f"backend='milvus' does not take {sorted(unused)}; its options are fingerprint, collection, "
                         "index_type and overfetch")
    return MilvusIndex.create(uri, dim, fingerprint=fingerprint, collection=collection, index_type=index_type,
                              overfetch=overfetch)


def open_index(uri: str, *, expected_fingerprint: str | None = None, expected_dim: int | None = None) -> MilvusIndex:
    """``ReferenceIndex.load(uri)`` of a Milvus gallery (the default collection)."""
    # a Milvus Lite gallery (a file or, for newer Milvus Lite versions, a folder): opening a missing one would
    # create an empty one
    if not str(uri).startswith(_URI_PREFIXES) and not Path(uri).exists():
        raise MissingFileError(f"Milvus Lite gallery {uri!r} does not exist; expected a .db written by "
                               "`s4g-index build --index-backend milvus --uri FILE.db`")
    return MilvusIndex.open(uri, expected_fingerprint=expected_fingerprint, expected_dim=expected_dim)
