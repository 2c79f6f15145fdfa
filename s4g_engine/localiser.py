"""The production Localiser: exported model bundle + reference index → GPS candidates (torch-free).

>>> loc = Localiser.from_dir("models/s4g-synthetic")
>>> loc.index_references(tile_paths, tile_latlon)        # embeds the gallery once
>>> loc.save_index("tiles.s4gidx.npz")
>>> res = loc.localise(["pano.jpg"], k=5)                 # res.coords[0, 0] = best (lat, lon)

A bundle is a folder written by ``s4g-export``: ``ground.onnx``, ``aerial.onnx`` (+ ``*.fp16.onnx``,
TensorRT engines) and ``config.json`` with the data contract of each view, the sha256 of every file and
the model fingerprint. Loading verifies every listed file against its sha256.

A model whose aerial view has ``centres`` = n > 1 (docs/METHOD.md §10, :mod:`s4g_engine.tile_centres`) embeds
each gallery tile as S = n·n versions, shifted so that each point of an n × n grid over the tile's central half
becomes the centre: :meth:`Localiser.embed_aerial_versions` gives them (``(N·S, d)``, tile-major), the index keeps
them all and a tile scores its best version; each candidate then also carries that version's pixel shift and,
when the tiles' ground width is known (``tile_side_m``), the position it points to inside the tile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
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
from s4g_engine.index import ReferenceIndex, check_ids, check_tile_side_m
from s4g_engine.limits import check_batch
from s4g_engine.localise_result import LocaliseResult
from s4g_engine.preprocess import BatchPipeline, DataContract, ImageLike, ViewSpec, as_image_list
from s4g_engine.tile_centres import centre_grid, fill_colour, shift_tile, shift_to_offset

log = logging.getLogger(__name__)

#: ``precision=``: auto (CPU: fastest at full accuracy, see s4g_engine.backends; GPU: fp16 when present),
#: fp32, fp16 (GPU graphs), bf16 (OpenVINO on bf16 CPUs), int8 (an int8 graph from s4g-export --cpu-int8).
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


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
        aerial = self.specs["aerial"]
        #: Versions per gallery tile (S = n·n for the aerial view's ``centres`` = n) and their pixel shifts
        #: ``(S, 2)`` from the tile centre in the stage image (:func:`s4g_engine.tile_centres.centre_grid`).
        self.aerial_versions = aerial.centres * aerial.centres
        self.version_shifts = centre_grid(aerial.centres, aerial.stage_size[0])
        self.index_backend = index_backend
        self.index = ReferenceIndex(self.embed_dim, backend=index_backend, fingerprint=self.fingerprint,
                                    versions=self.aerial_versions)
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
    def _encoded(self, imgs: Sequence[Any], view: str, timings: dict[str, float], *,
                 progress: bool | None = None, pipelined: bool = True,
                 spec: Any = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, embeddings)`` per batch, in input order, adding the stage times to ``timings``.

        ``pipelined``: decode + preprocess run on the decode pool, batches ahead of the encoder (a bounded
        queue of :attr:`BatchPipeline.prefetch` batches), so the encoder does not wait for them; otherwise
        each batch is prepared on the calling thread right before it is encoded (the same batches, so the
        same results). ``decode_s`` = time the encoder waited for its input; ``decode_work_s`` /
        ``preprocess_work_s`` = the decode pool's own work (overlapped with the encoder when pipelined).
        ``spec``: what prepares ``imgs`` instead of the view's :class:`ViewSpec` (the tile versions' adapter).
        """
        spec, enc = spec or self.specs[view], self.encoders[view]
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
               timings: dict[str, float] | None = None, versions: bool = False) -> np.ndarray:
        self._check_open()
        imgs: list[Any] = as_image_list(images)
        spec = None
        if versions and self.aerial_versions > 1:
            S = self.aerial_versions
            holders = [_TileStage(im, S) for im in imgs]
            imgs = [(h, s) for h in holders for s in range(S)]  # tile-major: row t·S + s
            spec = _VersionView(self.specs[view], self.version_shifts)
        out = np.empty((len(imgs), self.embed_dim), dtype=np.float32)
        for pos, emb in self._encoded(imgs, view, {} if timings is None else timings, progress=progress, spec=spec):
            out[pos:pos + emb.shape[0]] = emb
        return out

    def embed_ground(self, images: ImageLike | Sequence[ImageLike], *, progress: bool | None = None) -> np.ndarray:
        """Ground/drone images (one or a list) → float32 ``(n, d)`` L2-normalised embeddings."""
        return self._embed(images, "ground", progress=progress)

    def embed_aerial(self, images: ImageLike | Sequence[ImageLike], *, progress: bool | None = None) -> np.ndarray:
        """Aerial tiles (one or a list) → float32 ``(n, d)`` L2-normalised embeddings, one per tile, each about
        its own centre. For a gallery of a model with aerial ``centres`` > 1 use :meth:`embed_aerial_versions`
        (what :meth:`index_references` stores); with ``centres`` = 1 the two are the same."""
        return self._embed(images, "aerial", progress=progress)

    def embed_aerial_versions(self, images: ImageLike | Sequence[ImageLike], *,
                              progress: bool | None = None) -> np.ndarray:
        """Aerial tiles → float32 ``(n·S, d)`` L2-normalised embeddings, tile-major: row ``t·S + s`` is tile ``t``
        shifted by :attr:`version_shifts` ``[s]`` (S = :attr:`aerial_versions`; pixels shifted in from outside
        the tile take the backbone's mean colour), then preprocessed as usual. S = 1: :meth:`embed_aerial`."""
        return self._embed(images, "aerial", progress=progress, versions=True)

    # -- index ------------------------------------------------------------------------------------------
    def index_references(self, images: ImageLike | Sequence[ImageLike], coords: Any,
                         ids: Sequence[str] | None = None, *, progress: bool | None = None,
                         tile_side_m: float | None = None) -> int:
        """Embed aerial tiles once and add them with their ``coords`` ``(n, 2)`` (lat, lon degrees): every
        version of each tile (:meth:`embed_aerial_versions`) when the model has aerial ``centres`` > 1.

        ``tile_side_m``: the tiles' ground width in metres (kept in the index file), which lets :meth:`localise`
        turn the best version's shift into a position inside the tile; it must agree with the index's.
        Returns the index size (tiles) afterwards. Coordinates and ids are validated before anything is embedded.
        """
        from s4g_engine.index import validate_coords

        self._check_open()
        imgs = as_image_list(images)
        c = validate_coords(coords, len(imgs))
        id_list = check_ids(ids, len(imgs))
        side = check_tile_side_m(tile_side_m)
        with self._index_lock:
            index = self.index
        self._check_index(index, side)
        emb = self._embed(imgs, "aerial", progress=progress, versions=True)
        with self._index_lock:  # the index that was current when embedding finished gets the rows
            index = self.index
        self._check_index(index, side)
        index.add(emb, c, id_list)
        if side is not None and hasattr(index, "tile_side_m"):
            index.tile_side_m = side
        return len(index)

    def _check_index(self, index: Any, tile_side_m: float | None) -> None:
        """The index holds as many versions per tile as this model makes, and no other tile width."""
        have = getattr(index, "versions", 1)
        if have != self.aerial_versions:
            raise StateError(f"the current index holds {have} version(s) per tile, this model makes "
                             f"{self.aerial_versions}; expected an index created for this model (Localiser(...) "
                             "makes one; ReferenceIndex(dim, versions=loc.aerial_versions))")
        old = getattr(index, "tile_side_m", None)
        if tile_side_m is not None and old is not None and len(index) and old != tile_side_m:
            raise InputError(f"tile_side_m={tile_side_m:g} m, but the index's tiles are {old:g} m wide; expected the "
                             "same ground width for every tile of one index (or tile_side_m=None)")

    def save_index(self, path: str | os.PathLike[str]) -> None:
        """Write the reference index atomically (``.npz``, no pickle) with this model's fingerprint; the file
        is a consistent snapshot even while other threads add references."""
        self._check_open()
        self.index.save(path)

    def load_index(self, path: str | os.PathLike[str]) -> int:
        """Replace the index by the one at ``path``.

        The file is read and checked completely first (format, integrity, fingerprint, embedding size); only
        then does it replace the current index, so a refused file leaves the working index untouched.
        Raises :class:`~s4g_engine.errors.ModelMismatchError` if another model built it, or it holds another
        number of versions per tile than this model makes (aerial ``centres``).
        """
        self._check_open()
        new = ReferenceIndex.load(path, expected_fingerprint=self.fingerprint, expected_dim=self.embed_dim,
                                  expected_versions=self.aerial_versions)
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
        self._check_index(index, None)  # versions per tile as this model makes (e.g. an index assigned by hand)
        versioned = self.aerial_versions > 1
        version = np.zeros((len(imgs), int(k)), np.int64)
        t_search = 0.0
        # Each batch is searched as soon as it is embedded (one call into the index per batch) while the
        # decode pool prepares the next ones; the search keeps half the cores so it does not oversubscribe them.
        with _kernel_threads(_search_threads()):
            for pos, emb in self._encoded(imgs, "ground", timings, pipelined=pipelined):
                t1 = time.perf_counter()
                rows = slice(pos, pos + emb.shape[0])
                if versioned:
                    scores[rows], idx[rows], version[rows] = index.search_versions(emb, int(k))
                else:
                    scores[rows], idx[rows] = index.search(emb, int(k))
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
        extra = self._version_fields(index, coords, version) if versioned else {}
        timings["total_s"] = time.perf_counter() - t0
        timings["other_s"] = max(0.0, timings["total_s"] - timings["decode_s"] - timings["encode_s"] - t_search)
        return LocaliseResult(scores=scores, indices=idx, ids=ids, coords=coords, timings=timings, **extra)

    def _version_fields(self, index: Any, coords: np.ndarray, version: np.ndarray) -> dict[str, Any]:
        """``versions``, ``shifts`` and (with the tiles' ground width known) ``refined`` of a result: the best
        version's centre, stage pixels → metres (tile_side_m / stage side) → (lat, lon) from the tile centre."""
        from s4g_engine.geo import offset_latlon

        shifts = self.version_shifts[version]
        out: dict[str, Any] = {"versions": version, "shifts": shifts}
        side = getattr(index, "tile_side_m", None)
        if side is not None:
            north_east = shift_to_offset(shifts, side / self.specs["aerial"].stage_size[0])
            lat, lon = offset_latlon(coords[..., 0], coords[..., 1], north_east[..., 0], north_east[..., 1])
            out["refined"] = np.stack([lat, lon], axis=-1)  # NaN where the candidate is missing
        return out

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


class _TileStage:
    """One tile's uint8 stage image, decoded once for its ``S`` versions (decode threads may share it) and
    dropped once every version has taken it."""

    __slots__ = ("image", "stage", "left", "lock")

    def __init__(self, image: ImageLike, versions: int) -> None:
        self.image, self.stage, self.left, self.lock = image, None, versions, threading.Lock()

    def get(self, spec: ViewSpec) -> np.ndarray:
        with self.lock:
            stage = self.stage if self.stage is not None else spec.load(self.image)
            self.left -= 1
            self.stage = stage if self.left > 0 else None
        return stage


class _VersionView:
    """Prepares the items ``(tile, version)`` for :class:`BatchPipeline` (which uses a view's ``stage_size``,
    ``input_size``, ``load`` and ``normalise_batch``): the tile's stage image shifted to the version's centre
    (:func:`s4g_engine.tile_centres.shift_tile`, mean colour outside), then the view's own normalisation."""

    def __init__(self, spec: ViewSpec, shifts: np.ndarray) -> None:
        self.spec, self.shifts, self.fill = spec, shifts, fill_colour(spec.mean)
        self.name, self.stage_size, self.input_size = spec.name, spec.stage_size, spec.input_size

    def load(self, item: tuple[_TileStage, int]) -> np.ndarray:
        tile, s = item
        return shift_tile(tile.get(self.spec), int(self.shifts[s, 0]), int(self.shifts[s, 1]), self.fill)

    def normalise_batch(self, stages: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.spec.normalise_batch(stages, out=out)


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
