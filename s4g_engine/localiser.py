"""The production Localiser: exported model bundle + reference index → GPS candidates (torch-free).

>>> loc = Localiser.from_dir("models/s4g-synthetic")
>>> loc.index_references(tile_paths, tile_latlon)        # embeds the gallery once
>>> loc.save_index("tiles.s4gidx.npz")
>>> res = loc.localise(["pano.jpg"], k=5)                 # res.coords[0, 0] = best (lat, lon)

A bundle is a folder written by ``s4g-export``: ``ground.onnx``, ``aerial.onnx`` (+ ``*.fp16.onnx``,
TensorRT engines) and ``config.json`` with the data contract of each view, the sha256 of every file and
the model fingerprint. Loading verifies every listed file against its sha256.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Bundle reading and validation live in s4g_engine.bundle; the names stay importable from here.
from s4g_engine.bundle import (  # noqa: F401
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    VIEWS,
    config_fingerprint,
    open_view_encoder,
    read_bundle_config,
    sha256_file,
    validate_config,
    view_model_files,
)
from s4g_engine.encoders import Encoder
from s4g_engine.errors import InputError, MissingFileError, StateError
from s4g_engine.index import ReferenceIndex, check_ids
from s4g_engine.limits import check_batch
from s4g_engine.preprocess import BatchPipeline, DataContract, ImageLike, ViewSpec, as_image_list

log = logging.getLogger(__name__)

#: ``precision=``: auto (CPU: fastest at full accuracy, see s4g_engine.backends; GPU: fp16 when present),
#: fp32, fp16 (GPU graphs), bf16 (OpenVINO on bf16 CPUs), int8 (an int8 graph from s4g-export --cpu-int8).
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True, eq=False)
class LocaliseResult:
    """Top-``k`` candidates for ``n`` query images.

    ``scores`` float32 ``(n, k)`` cosine similarities, best first; ``indices`` int64 ``(n, k)`` rows of the
    index; ``ids`` ``n`` lists of ``k`` reference ids; ``coords`` float64 ``(n, k, 2)`` (lat, lon) degrees.
    An approximate (IVF-PQ) index may find fewer than ``k`` candidates; the missing ones are marked by the
    sentinel index −1, with score −inf, id ``""`` and NaN coords, and are left out of :meth:`to_geojson` and
    :meth:`to_dict` (whose output is strict JSON: no NaN, no Infinity). ``timings`` seconds per stage on the
    calling thread, adding up to ``total_s``: ``decode_s`` (time the encoder waited for decoded/preprocessed
    images), ``encode_s``, ``search_s``, ``other_s`` (validation, result building); plus the decode pool's
    own work, overlapped with the encoder when pipelined: ``decode_work_s`` (decode + resize) and
    ``preprocess_work_s`` (normalisation / polar transform).
    """

    scores: np.ndarray
    indices: np.ndarray
    ids: list[list[str]]
    coords: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def candidates(self, i: int) -> list[dict[str, Any]]:
        """Query ``i``'s found candidates as ``{rank, score, id, index, lat, lon}`` (sentinels left out)."""
        out = []
        for r in range(self.scores.shape[1]):
            j = int(self.indices[i, r])
            lat, lon = (float(v) for v in self.coords[i, r])
            if j < 0 or not (np.isfinite(lat) and np.isfinite(lon) and np.isfinite(self.scores[i, r])):
                continue  # the sentinel of a candidate an approximate index did not find
            out.append({"rank": r + 1, "score": float(self.scores[i, r]), "id": self.ids[i][r], "index": j,
                        "lat": lat, "lon": lon})
        return out

    def to_dict(self, query_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{"results": [{"image", "candidates": [{rank, score, id, index, lat, lon}]}], "timings"}``
        (strict JSON types; missing candidates left out)."""
        n = self.scores.shape[0]
        names = list(query_names) if query_names is not None else [str(i) for i in range(n)]
        return {"results": [{"image": names[i], "candidates": self.candidates(i)} for i in range(n)],
                "timings": {k: float(v) for k, v in self.timings.items()}}

    def to_geojson(self, query_names: Sequence[str] | None = None) -> dict[str, Any]:
        """A GeoJSON FeatureCollection: one Point ``[lon, lat]`` per candidate, with query, rank, score, id
        (missing candidates left out)."""
        n = self.scores.shape[0]
        names = list(query_names) if query_names is not None else [str(i) for i in range(n)]
        feats = []
        for i in range(n):
            for c in self.candidates(i):
                feats.append({"type": "Feature",
                              "geometry": {"type": "Point", "coordinates": [c["lon"], c["lat"]]},
                              "properties": {"query": names[i], "rank": c["rank"], "score": c["score"],
                                             "id": c["id"], "index": c["index"]}})
        return {"type": "FeatureCollection", "features": feats}


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    if enabled is None:
        enabled = total >= 2048 and log.isEnabledFor(logging.INFO)
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


class Localiser:
    """Embeds query photos and geo-tagged aerial tiles with an exported bundle, retrieves the nearest tiles.

    Thread-safe: ``localise``/``embed_*`` may be called from many threads at once (the encoders and the index
    search are re-entrant; adding references takes a lock).
    """

    def __init__(self, root: str | os.PathLike[str], config: dict[str, Any], *, device: str = "auto",
                 backend: str = "auto", precision: str = "auto", batch_size: int = 32, threads: int | None = None,
                 decode_threads: int | None = None, index_backend: str = "auto") -> None:
        self.root = Path(root)
        self.config = validate_config(config, str(self.root / "config.json"))
        # The identity indexes are tied to, derived from the weights' hashes (verified by from_dir).
        self.fingerprint: str = config_fingerprint(self.config)
        self.embed_dim = int(config["embed_dim"])
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.batch_size = check_batch(int(batch_size))
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
        # The data contract the model was trained with: every image is preprocessed by it (s4g_engine.preprocess).
        self.contract = DataContract.from_config(config["views"])
        self.specs: dict[str, ViewSpec] = {view: self.contract[view] for view in VIEWS}
        self.encoders: dict[str, Encoder] = {}
        self.encoder_choice: dict[str, dict[str, Any]] = {}  # per view: runtime, precision, why (calibration)
        for view in VIEWS:
            if self._cpu_runtime_choice(view, device, backend, precision):
                self.encoders[view] = self._open_cpu_encoder(view, backend, precision, threads)
                continue
            files = self._view_files(view, device, backend, precision)
            self.encoder_choice[view] = {"runtime": backend, "precision": precision, "source": "requested"}
            self.encoders[view] = open_view_encoder(self.root, view, files, self.specs[view], self.embed_dim,
                                                    backend=backend, device=device, threads=threads)
        self.index_backend = index_backend
        self.index = ReferenceIndex(self.embed_dim, backend=index_backend, fingerprint=self.fingerprint)
        self._index_lock = threading.Lock()  # load_index swaps the index only once the new one is valid
        self._closed = False
        self._pipeline = BatchPipeline(decode_threads)
        self._id_cache: tuple[ReferenceIndex, int, np.ndarray] | None = None

    def _cpu_runtime_choice(self, view: str, device: str, backend: str, precision: str) -> bool:
        """Whether ``view`` runs on the CPU runtime chosen by measurement (:mod:`s4g_engine.backends`) rather
        than on a GPU provider / TensorRT engine."""
        if backend == "openvino" or precision in ("bf16", "int8"):
            return True
        if backend == "tensorrt" or precision == "fp16" or device in ("cuda", "tensorrt"):
            return False
        if device == "cpu":
            return True
        from s4g_engine.encoders import tensorrt_available

        engines = (self.config["views"][view].get("files") or {}).get("tensorrt")
        return not (_has_gpu_provider() or (engines and tensorrt_available()))

    def _open_cpu_encoder(self, view: str, backend: str, precision: str, threads: int | None) -> Encoder:
        """The CPU encoder of ``view``: ``backend``/``precision`` as asked, or for ``auto`` the fastest runtime
        at full accuracy on this CPU, calibrated once and cached (:func:`s4g_engine.backends.runtime.cpu_encoder`)."""
        from s4g_engine.backends.runtime import cpu_encoder, installed_runtimes
        from s4g_engine.backends.selection import Candidate

        spec, vfiles = self.specs[view], dict(self.config["views"][view].get("files") or {})
        graphs = {"fp32": view_model_files(self.root, self.config, view)["fp32"]}
        if isinstance(vfiles.get("int8"), str):
            graphs["int8"] = self._listed_graph(view, vfiles["int8"])
        prebuilt: dict[Any, Any] = {}
        if backend in ("auto", "onnxruntime") and precision in ("auto", "fp32") \
                and "onnxruntime" in installed_runtimes():
            # The float32 ONNX Runtime session is the reference path: built (and its failures reported) as always.
            prebuilt[Candidate("onnxruntime", "fp32", "fp32")] = open_view_encoder(
                self.root, view, [graphs["fp32"]], spec, self.embed_dim, backend="onnxruntime", device="cpu",
                threads=threads)
        shas = {str(n): str(m.get("sha256", "")) for n, m in (self.config.get("files") or {}).items()}
        enc, choice = cpu_encoder(graphs, {g: shas.get(str(vfiles.get(g)), "") for g in graphs},
                                  prepare=spec.normalise_batch, stage_hw=spec.stage_size, backend=backend,
                                  precision=precision, threads=threads, batch_size=self.batch_size,
                                  prebuilt=prebuilt)
        self.encoder_choice[view] = choice.to_dict()
        return enc

    def _listed_graph(self, view: str, rel: str) -> Path:
        """A graph file named in ``views.<view>.files`` that is also listed (so sha256-verified) under ``files``."""
        from s4g_engine.bundle import bundle_path

        where = f"{self.root / 'config.json'}: views.{view}.files"
        if rel not in (self.config.get("files") or {}):
            raise MissingFileError(f"{where}: {rel!r} is not listed under 'files' with its sha256, so it cannot be "
                                   "verified; re-export the bundle with s4g-export")
        return bundle_path(self.root, rel, where)

    def _view_files(self, view: str, device: str, backend: str, precision: str) -> list[Path]:
        """Candidate model files of ``view`` in order of preference; every one is listed (verified) in the
        bundle and lies inside it (:func:`s4g_engine.bundle.view_model_files`)."""
        files = view_model_files(self.root, self.config, view)
        out: list[Path] = []
        trt = files.get("tensorrt") or {}
        if backend in ("auto", "tensorrt"):
            from s4g_engine.encoders import tensorrt_available, tensorrt_engine_key

            if trt and device != "cpu" and tensorrt_available():
                # Engines are specific to the GPU and TensorRT version they were built with.
                key = tensorrt_engine_key()
                if key in trt:
                    out.append(trt[key])
                else:
                    log.warning("bundle has TensorRT engines for %s, none for this machine (%s): using ONNX",
                                sorted(trt), key)
        use_fp16 = precision == "fp16" or (precision == "auto" and device != "cpu" and _has_gpu_provider())
        if use_fp16 and files.get("fp16"):
            out.append(files["fp16"])
        elif precision == "fp16":
            raise MissingFileError(f"precision='fp16' but the bundle {self.root} has no fp16 model; "
                                   "export with `s4g-export ... --fp16`")
        out.append(files["fp32"])
        return out

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], *, device: str = "auto", backend: str = "auto",
                 **kwargs: Any) -> Localiser:
        """Load a bundle folder (verifying its files). ``device``: auto|cpu|cuda|tensorrt; ``backend``:
        auto|onnxruntime|tensorrt; kwargs: precision, batch_size, threads, decode_threads, index_backend."""
        cfg = read_bundle_config(path, verify=True)
        return cls(path, cfg, device=device, backend=backend, **kwargs)

    def close(self) -> None:
        """Stop the decode threads; any later call raises :class:`~s4g_engine.errors.StateError`."""
        self._closed = True
        self._pipeline.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("this Localiser was closed (close() or the end of its `with` block); expected an open "
                             "one: create a new Localiser with Localiser.from_dir(...)")

    def __enter__(self) -> Localiser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- embedding --------------------------------------------------------------------------------------
    def _encoded(self, imgs: Sequence[ImageLike], view: str, timings: dict[str, float], *,
                 progress: bool | None = None, pipelined: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, embeddings)`` per batch, in input order, adding the stage times to ``timings``.

        ``pipelined``: decode + preprocess run on the decode pool, batches ahead of the encoder (a bounded
        queue of :attr:`BatchPipeline.prefetch` batches), so the encoder does not wait for them; otherwise
        each batch is prepared on the calling thread right before it is encoded (the same batches, so the
        same results). ``decode_s`` = time the encoder waited for its input; ``decode_work_s`` /
        ``preprocess_work_s`` = the decode pool's own work (overlapped with the encoder when pipelined).
        """
        spec, enc = self.specs[view], self.encoders[view]
        bar = _progress(len(imgs), progress, f"embed {view}")
        work: dict[str, float] = {}
        t_wait = t_enc = 0.0
        pos = 0
        # One image cannot overlap with anything: prepare it on this thread, sparing the hop to the pool.
        it = (self._pipeline.batches(imgs, spec, self.batch_size, stats=work) if pipelined and len(imgs) > 1 else
              self._pipeline.batches_inline(imgs, spec, self.batch_size, stats=work))
        try:
            while True:
                t0 = time.perf_counter()
                batch = next(it, None)
                t1 = time.perf_counter()
                if batch is None:
                    break
                emb = enc(batch)
                t2 = time.perf_counter()
                if emb.shape != (batch.shape[0], self.embed_dim):
                    raise RuntimeError(f"{view} encoder returned {emb.shape}, expected ({batch.shape[0]}, "
                                       f"{self.embed_dim}); the bundle is inconsistent, re-export it")
                t_wait += t1 - t0
                t_enc += t2 - t1
                yield pos, emb
                pos += batch.shape[0]
                if bar is not None:
                    bar.update(batch.shape[0])
        finally:
            if hasattr(it, "close"):
                it.close()  # cancels the batches still queued (an error or an abandoned generator)
            if bar is not None:
                bar.close()
            for key, val in (("decode_s", t_wait), ("encode_s", t_enc), *work.items()):
                timings[key] = timings.get(key, 0.0) + val

    def _embed(self, images: Any, view: str, *, progress: bool | None = None,
               timings: dict[str, float] | None = None) -> np.ndarray:
        self._check_open()
        imgs = as_image_list(images)
        out = np.empty((len(imgs), self.embed_dim), dtype=np.float32)
        for pos, emb in self._encoded(imgs, view, {} if timings is None else timings, progress=progress):
            out[pos:pos + emb.shape[0]] = emb
        return out

    def embed_ground(self, images: ImageLike | Sequence[ImageLike], *, progress: bool | None = None) -> np.ndarray:
        """Ground/drone images (one or a list) → float32 ``(n, d)`` L2-normalised embeddings."""
        return self._embed(images, "ground", progress=progress)

    def embed_aerial(self, images: ImageLike | Sequence[ImageLike], *, progress: bool | None = None) -> np.ndarray:
        """Aerial tiles (one or a list) → float32 ``(n, d)`` L2-normalised embeddings."""
        return self._embed(images, "aerial", progress=progress)

    # -- index ------------------------------------------------------------------------------------------
    def index_references(self, images: ImageLike | Sequence[ImageLike], coords: Any,
                         ids: Sequence[str] | None = None, *, progress: bool | None = None) -> int:
        """Embed aerial tiles once and add them with their ``coords`` ``(n, 2)`` (lat, lon degrees).

        Returns the index size afterwards. Coordinates and ids are validated before anything is embedded.
        """
        from s4g_engine.index import validate_coords

        self._check_open()
        imgs = as_image_list(images)
        c = validate_coords(coords, len(imgs))
        id_list = check_ids(ids, len(imgs))
        emb = self._embed(imgs, "aerial", progress=progress)
        with self._index_lock:  # the index that was current when embedding finished gets the rows
            index = self.index
        index.add(emb, c, id_list)
        return len(index)

    def save_index(self, path: str | os.PathLike[str]) -> None:
        """Write the reference index atomically (``.npz``, no pickle) with this model's fingerprint; the file
        is a consistent snapshot even while other threads add references."""
        self._check_open()
        self.index.save(path)

    def load_index(self, path: str | os.PathLike[str]) -> int:
        """Replace the index by the one at ``path``.

        The file is read and checked completely first (format, integrity, fingerprint, embedding size); only
        then does it replace the current index, so a refused file leaves the working index untouched.
        Raises :class:`~s4g_engine.errors.ModelMismatchError` if another model built it.
        """
        self._check_open()
        new = ReferenceIndex.load(path, expected_fingerprint=self.fingerprint, expected_dim=self.embed_dim)
        with self._index_lock:
            self.index = new
        return len(new)

    # -- query ------------------------------------------------------------------------------------------
    def localise(self, images: ImageLike | Sequence[ImageLike], k: int = 5, *,
                 pipelined: bool = True) -> LocaliseResult:
        """Top-``k`` reference tiles for each ground image (see :class:`LocaliseResult`).

        Decode → preprocess → encode → search are overlapped (``pipelined``, the default); ``pipelined=False``
        runs the same batches one stage after another on the calling thread, with identical results.
        """
        t0 = time.perf_counter()
        self._check_open()
        index = self.index  # one index for the whole call, even if load_index swaps it meanwhile
        n_index = len(index)
        if n_index == 0:
            raise InputError("the index is empty: expected references; call index_references(...) or "
                             "load_index(path) first")
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1 or k > n_index:
            raise InputError(f"k must be an integer in [1, {n_index}] (the index size), got {k!r}")
        imgs = as_image_list(images)
        timings: dict[str, float] = {}
        scores = np.empty((len(imgs), int(k)), np.float32)
        idx = np.empty((len(imgs), int(k)), np.int64)
        t_search = 0.0
        # Each batch is searched as soon as it is embedded (one call into the index per batch) while the
        # decode pool prepares the next ones; the search keeps half the cores so it does not oversubscribe them.
        with _kernel_threads(_search_threads()):
            for pos, emb in self._encoded(imgs, "ground", timings, pipelined=pipelined):
                t1 = time.perf_counter()
                scores[pos:pos + emb.shape[0]], idx[pos:pos + emb.shape[0]] = index.search(emb, int(k))
                t_search += time.perf_counter() - t1
        timings["search_s"] = t_search
        # An approximate (IVF-PQ) search may find fewer than k candidates: faiss pads with −1.
        missing = idx < 0
        if hasattr(index, "lookup"):  # a gallery that keeps coords and ids outside this process (Milvus)
            coords, ids = index.lookup(idx)
        else:
            coords = index.coords[np.where(missing, 0, idx)]
            coords[missing] = np.nan
            ids = self._id_table(index)[idx].tolist()  # row −1 of the table is "", the id of a missing candidate
        timings["total_s"] = time.perf_counter() - t0
        timings["other_s"] = max(0.0, timings["total_s"] - timings["decode_s"] - timings["encode_s"] - t_search)
        return LocaliseResult(scores=scores, indices=idx, ids=ids, coords=coords, timings=timings)

    def _id_table(self, index: ReferenceIndex) -> np.ndarray:
        """The index's ids as an object array with ``""`` appended (so that index −1 gives ``""``), built once
        per index state: turning a ``(Q, k)`` index array into ids is then one gather, not a Python loop."""
        n = len(index)
        cached = self._id_cache
        if cached is None or cached[0] is not index or cached[1] != n:
            table = np.empty(n + 1, dtype=object)
            table[:-1] = index.ids[:n]
            table[-1] = ""
            cached = self._id_cache = (index, n, table)
        return cached[2]


def _search_threads() -> int:
    """Kernel threads for the per-batch search inside ``localise``: half the usable CPUs (at least 1). The
    decode pool and the encoder's threads are busy at the same time; OpenMP threads that wait at a barrier
    for a descheduled peer make an oversubscribed search many times slower (indicative: 32 queries × 10,000
    references on 2 busy cores, ~140 ms with 2 threads vs ~15 ms with 1)."""
    from s4g_engine.backends.cpu import usable_cpus

    return max(1, usable_cpus() // 2)


@contextlib.contextmanager
def _kernel_threads(n: int) -> Iterator[None]:
    """Run the block with at most ``n`` compiled-core (OpenMP) threads. OpenMP's thread count is a per-thread
    setting, so this changes nothing for other threads; the caller's setting is restored afterwards."""
    from s4g_engine import get_num_threads, set_num_threads

    before = get_num_threads()
    if n >= before:
        yield
        return
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)


def _has_gpu_provider() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    avail = set(ort.get_available_providers())
    return bool(avail & {"CUDAExecutionProvider", "TensorrtExecutionProvider"})
