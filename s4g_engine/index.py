"""The reference index: embeddings of geo-tagged aerial tiles + their coordinates and ids (torch-free).

Backends (all inner product on L2-normalised embeddings = cosine):

* ``exact``       — the core's ``topk_similarity`` over a float32 matrix (streams, never a Q×N matrix);
* ``exact-fp16``  — the same over float16 storage (half the memory; scores differ by ~1e-3);
* ``faiss-flat``  — faiss ``IndexFlatIP`` (exact), moved to the GPU when faiss has GPUs;
* ``faiss-ivfpq`` — faiss ``IndexIVFPQ`` for galleries beyond memory (approximate: recall@k < 100 %).

``auto`` picks by gallery size when the index is first searched or saved (see :func:`choose_backend`).

Index files are one ``.npz`` (zip; no pickle, read with ``allow_pickle=False``): ``meta`` (JSON bytes:
format, version, backend, dim, count, model fingerprint, parameters), ``coords`` float64 ``(N, 2)``
lat/lon degrees, ``ids`` unicode ``(N,)``, and either ``embeddings`` (exact backends) or ``faiss`` (the
index in faiss's own serialisation, as uint8 bytes). Written to a temporary file in the same directory and
``os.replace``d, so a crash mid-write leaves the previous file intact; zip CRCs catch corrupt files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "s4g-index"
VERSION = 1
BACKENDS = ("auto", "exact", "exact-fp16", "faiss-flat", "faiss-ivfpq")
#: auto: exact float32 below this many references, float16 storage up to AUTO_IVFPQ_MIN, then IVF-PQ.
AUTO_FP16_MIN = 2_000_000
AUTO_IVFPQ_MIN = 10_000_000


def faiss_gpus() -> int:
    """Number of GPUs faiss can use (0 for faiss-cpu or when faiss is missing)."""
    try:
        import faiss
    except ImportError:
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
    """``coords`` → float64 ``(n, 2)`` (lat, lon) degrees; ``ValueError`` on bad shape, NaN or range."""
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim == 1 and c.shape[0] == 2 and n == 1:
        c = c[None]
    if c.shape != (n, 2):
        raise ValueError(f"expected coords of shape ({n}, 2) = (lat, lon) degrees, one row per image, got {c.shape}")
    bad = ~np.isfinite(c).all(axis=1)
    if bad.any():
        raise ValueError(f"coords contain NaN/Inf for {int(bad.sum())} image(s) (first at row {int(np.argmax(bad))}); "
                         "every reference needs a finite (lat, lon)")
    if (np.abs(c[:, 0]) > 90).any() or (np.abs(c[:, 1]) > 180).any():
        raise ValueError("coords out of range: expected latitude in [-90, 90] and longitude in [-180, 180] "
                         "(pass (lat, lon), not (lon, lat) or projected metres)")
    return c


class ReferenceIndex:
    """Embeddings ``(N, d)`` + coords ``(N, 2)`` + ids, searched by inner product.

    ``search(queries (Q, d), k) -> (scores float32 (Q, k), indices int64 (Q, k))``, best first.
    ``add`` may be called many times; the backend is resolved (``auto``) and faiss structures are built
    lazily on the next ``search``/``save``. ``search`` is safe to call from several threads.
    """

    def __init__(self, dim: int, *, backend: str = "auto", fingerprint: str | None = None,
                 nlist: int | None = None, pq_m: int | None = None, nprobe: int = 32, use_gpu: bool = True) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"index backend must be one of {BACKENDS}, got {backend!r}")
        self.dim = int(dim)
        self.requested = backend
        self.backend: str | None = None if backend == "auto" else backend
        self.fingerprint = fingerprint
        self.params: dict[str, Any] = {"nlist": nlist, "pq_m": pq_m, "nprobe": int(nprobe)}
        self.use_gpu = use_gpu
        self._lock = threading.RLock()
        self._pending: list[np.ndarray] = []
        self._emb: np.ndarray | None = None  # exact backends
        self._faiss: Any = None
        self._coords = np.zeros((0, 2), dtype=np.float64)
        self._ids: list[str] = []

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
        """Append ``embeddings`` float32 ``(n, d)`` (L2-normalised) with ``coords`` ``(n, 2)`` and ``ids``."""
        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {e.shape}")
        if not np.isfinite(e).all():
            raise ValueError("embeddings contain NaN/Inf; check the encoder and its inputs")
        n = e.shape[0]
        c = validate_coords(coords, n)
        with self._lock:
            if ids is None:
                new_ids = [str(len(self._ids) + i) for i in range(n)]
            else:
                new_ids = [str(i) for i in ids]
                if len(new_ids) != n:
                    raise ValueError(f"got {len(new_ids)} ids for {n} references; pass one id per image or None")
            self._pending.append(np.ascontiguousarray(e))
            self._coords = np.concatenate([self._coords, c], axis=0)
            self._ids.extend(new_ids)

    # -- building ---------------------------------------------------------------------------------------
    def _resolve(self) -> str:
        if self.backend is None:
            self.backend = choose_backend(len(self))
            log.info("index backend auto → %s for %d references", self.backend, len(self))
        return self.backend

    def _new_faiss(self, train: np.ndarray) -> Any:
        import faiss

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
                raise ValueError(f"pq_m={m} must divide the embedding dim {d}")
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
        with self._lock:
            if not self._pending and (self._emb is not None or self._faiss is not None):
                return
            backend = self._resolve()
            new = np.concatenate(self._pending, axis=0) if self._pending else np.zeros((0, self.dim), np.float32)
            self._pending = []
            if backend in ("exact", "exact-fp16"):
                dtype = np.float16 if backend == "exact-fp16" else np.float32
                parts = [self._emb] if self._emb is not None else []
                self._emb = np.ascontiguousarray(np.concatenate(parts + [new.astype(dtype)], axis=0))
            else:
                if self._faiss is None:
                    if new.shape[0] == 0:
                        return
                    self._faiss = self._new_faiss(new)
                self._faiss.add(np.ascontiguousarray(new, dtype=np.float32))

    # -- search -----------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` references per query: ``(scores float32 (Q, k), indices int64 (Q, k))``, best first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (Q, {self.dim}), got {q.shape}")
        n = len(self)
        if n == 0:
            raise ValueError("the index is empty: add references first (Localiser.index_references or load_index)")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > n:
            raise ValueError(f"k={k} is larger than the index ({n} references); ask for at most k={n}")
        self._materialise()
        if self.backend in ("exact", "exact-fp16"):
            from s4g_engine import topk_similarity  # the compiled core

            scores, idx = topk_similarity(q, self._emb, int(k))
        else:
            scores, idx = self._faiss.search(q, int(k))
        return np.asarray(scores, dtype=np.float32), np.asarray(idx, dtype=np.int64)

    def bytes_per_reference(self) -> float:
        """Memory of the searchable structure per reference (without coords/ids)."""
        self._materialise()
        if self.backend in ("exact", "exact-fp16"):
            return float(self._emb.itemsize * self.dim) if self._emb is not None else 0.0
        if self.backend == "faiss-flat":
            return float(4 * self.dim)
        return float(self._faiss.code_size) + 8.0  # PQ code + stored id

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index atomically to ``path`` (one ``.npz``; see the module docstring)."""
        if len(self) == 0:
            raise ValueError("refusing to save an empty index: add references first")
        self._materialise()
        with self._lock:
            meta = {"format": FORMAT, "version": VERSION, "backend": self.backend, "dim": self.dim,
                    "count": len(self), "fingerprint": self.fingerprint,
                    "params": {k: v for k, v in self.params.items() if v is not None}}
            arrays: dict[str, np.ndarray] = {
                "coords": self._coords,
                "ids": np.asarray(self._ids, dtype=str) if self._ids else np.zeros(0, dtype="<U1"),
            }
            if self.backend in ("exact", "exact-fp16"):
                arrays["embeddings"] = self._emb  # type: ignore[assignment]
            else:
                import faiss

                index = self._faiss
                if faiss_gpus() > 0 and hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
                    index = faiss.index_gpu_to_cpu(index)
                arrays["faiss"] = np.asarray(faiss.serialize_index(index), dtype=np.uint8)
            arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        atomic_savez(Path(path), arrays)
        log.info("saved %s index of %d references to %s", self.backend, len(self), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expected_fingerprint: str | None = None,
             use_gpu: bool = True) -> "ReferenceIndex":
        """Read an index written by :meth:`save`; ``ValueError`` if it is corrupt or from another model."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"index file {str(p)!r} does not exist; build one with `s4g-index build`")
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
            raise ValueError(f"index file {str(p)!r} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                             "rebuild it with `s4g-index build`") from exc
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{p}: not an s4g index (format {meta.get('format')!r} v{meta.get('version')}); "
                             f"expected {FORMAT!r} v{VERSION}")
        if expected_fingerprint is not None and meta.get("fingerprint") != expected_fingerprint:
            raise ValueError(f"index {str(p)!r} was built by model {meta.get('fingerprint')!r}, but this model is "
                             f"{expected_fingerprint!r}: embeddings of different models are not comparable; rebuild "
                             "the index with this model (`s4g-index build --model ...`)")
        n, dim, backend = int(meta["count"]), int(meta["dim"]), str(meta["backend"])
        coords, ids = data.get("coords"), data.get("ids")
        if coords is None or ids is None or coords.shape != (n, 2) or ids.shape != (n,):
            raise ValueError(f"{p}: inconsistent index (count {n}, coords {getattr(coords, 'shape', None)}, ids "
                             f"{getattr(ids, 'shape', None)}); rebuild it")
        params = meta.get("params", {})
        idx = cls(dim, backend=backend, fingerprint=meta.get("fingerprint"), nlist=params.get("nlist"),
                  pq_m=params.get("pq_m"), nprobe=params.get("nprobe", 32), use_gpu=use_gpu)
        idx.params.update(params)
        idx._coords = np.asarray(coords, dtype=np.float64)
        idx._ids = [str(s) for s in ids.tolist()]
        if backend in ("exact", "exact-fp16"):
            emb = data.get("embeddings")
            want = np.float16 if backend == "exact-fp16" else np.float32
            if emb is None or emb.shape != (n, dim) or emb.dtype != want:
                raise ValueError(f"{p}: embeddings missing or of the wrong shape/dtype "
                                 f"({getattr(emb, 'shape', None)}, {getattr(emb, 'dtype', None)}); rebuild it")
            idx._emb = np.ascontiguousarray(emb)
        else:
            import faiss

            if "faiss" not in data:
                raise ValueError(f"{p}: the faiss index payload is missing; rebuild it")
            index = faiss.deserialize_index(data["faiss"])
            if index.ntotal != n or index.d != dim:
                raise ValueError(f"{p}: faiss index holds {index.ntotal}×{index.d}, metadata says {n}×{dim}")
            if backend == "faiss-ivfpq":
                faiss.extract_index_ivf(index).nprobe = int(params.get("nprobe", 32))
            elif use_gpu and faiss_gpus() > 0:
                index = faiss.index_cpu_to_all_gpus(index)
            idx._faiss = index
        return idx


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temp file beside ``path``, fsync, then ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
