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

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from s4g_engine.encoders import Encoder, make_encoder
from s4g_engine.index import ReferenceIndex
from s4g_engine.preprocess import BatchPipeline, DataContract, ImageLike, ViewSpec, as_image_list

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "s4g-bundle"
BUNDLE_VERSION = 1
VIEWS = ("ground", "aerial")


@dataclass(frozen=True, eq=False)
class LocaliseResult:
    """Top-``k`` candidates for ``n`` query images.

    ``scores`` float32 ``(n, k)`` cosine similarities, best first; ``indices`` int64 ``(n, k)`` rows of the
    index; ``ids`` ``n`` lists of ``k`` reference ids; ``coords`` float64 ``(n, k, 2)`` (lat, lon) degrees;
    an approximate index may return fewer than ``k``
    candidates: missing ones have index −1, score −inf (faiss: −3.4e38), id ``""`` and NaN coords. ``timings`` seconds per stage: ``decode_s`` (time the encoder waited for decoded/preprocessed
    images), ``encode_s``, ``search_s``, ``total_s``.
    """

    scores: np.ndarray
    indices: np.ndarray
    ids: list[list[str]]
    coords: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def to_geojson(self, query_names: Sequence[str] | None = None) -> dict[str, Any]:
        """A GeoJSON FeatureCollection: one Point ``[lon, lat]`` per candidate, with query, rank, score, id."""
        n, k = self.scores.shape
        names = list(query_names) if query_names is not None else [str(i) for i in range(n)]
        feats = []
        for i in range(n):
            for r in range(k):
                lat, lon = (float(v) for v in self.coords[i, r])
                feats.append({"type": "Feature",
                              "geometry": {"type": "Point", "coordinates": [lon, lat]},
                              "properties": {"query": names[i], "rank": r + 1, "score": float(self.scores[i, r]),
                                             "id": self.ids[i][r], "index": int(self.indices[i, r])}})
        return {"type": "FeatureCollection", "features": feats}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_bundle_config(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Read ``config.json`` of the bundle at ``path`` and (``verify``) check every listed file's sha256."""
    root = Path(path)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(root)!r} is not a model bundle: {cfg_path} does not exist "
                                "(create one with `s4g-export CHECKPOINT --out DIR`)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{cfg_path} is not valid JSON ({exc}); re-export the bundle") from exc
    if cfg.get("format") != BUNDLE_FORMAT or cfg.get("version") != BUNDLE_VERSION:
        raise ValueError(f"{cfg_path}: expected format {BUNDLE_FORMAT!r} version {BUNDLE_VERSION}, got "
                         f"{cfg.get('format')!r} version {cfg.get('version')!r}; re-export with this s4g")
    for key in ("views", "files", "fingerprint", "embed_dim"):
        if key not in cfg:
            raise ValueError(f"{cfg_path}: missing key {key!r}; re-export the bundle")
    if verify:
        for name, meta in cfg["files"].items():
            f = root / name
            if not f.is_file():
                raise FileNotFoundError(f"bundle {str(root)!r}: file {name!r} listed in config.json is missing; "
                                        "copy the whole folder or re-export it")
            digest = sha256_file(f)
            if digest != meta.get("sha256"):
                raise ValueError(f"bundle {str(root)!r}: {name} has sha256 {digest[:16]}…, config.json expects "
                                 f"{str(meta.get('sha256'))[:16]}… — the file is corrupt or was replaced; re-export")
    return cfg


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
        self.config = config
        self.fingerprint: str = str(config["fingerprint"])
        self.embed_dim = int(config["embed_dim"])
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if precision not in ("auto", "fp32", "fp16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'fp16', got {precision!r}")
        # The data contract the model was trained with: every image is preprocessed by it (s4g_engine.preprocess).
        self.contract = DataContract.from_config(config["views"])
        self.specs: dict[str, ViewSpec] = {view: self.contract[view] for view in VIEWS}
        self.encoders: dict[str, Encoder] = {}
        for view in VIEWS:
            vcfg = config["views"][view]
            self.encoders[view] = make_encoder(self._view_files(vcfg, device, backend, precision),
                                               backend=backend, device=device, threads=threads)
        self.index_backend = index_backend
        self.index = ReferenceIndex(self.embed_dim, backend=index_backend, fingerprint=self.fingerprint)
        self._pipeline = BatchPipeline(decode_threads)

    def _view_files(self, vcfg: dict[str, Any], device: str, backend: str, precision: str) -> list[Path]:
        files = vcfg.get("files", {})
        out: list[Path] = []
        trt = files.get("tensorrt") or {}
        if backend in ("auto", "tensorrt"):
            from s4g_engine.encoders import tensorrt_available, tensorrt_engine_key

            if trt and device != "cpu" and tensorrt_available():
                # Engines are specific to the GPU and TensorRT version they were built with.
                key = tensorrt_engine_key()
                if key in trt:
                    out.append(self.root / trt[key])
                else:
                    log.warning("bundle has TensorRT engines for %s, none for this machine (%s): using ONNX",
                                sorted(trt), key)
        use_fp16 = precision == "fp16" or (precision == "auto" and device != "cpu" and _has_gpu_provider())
        if use_fp16 and files.get("fp16"):
            out.append(self.root / files["fp16"])
        elif precision == "fp16":
            raise FileNotFoundError(f"precision='fp16' but the bundle {self.root} has no fp16 model; "
                                    "export with `s4g-export ... --fp16`")
        out.append(self.root / files["fp32"])
        return out

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], *, device: str = "auto", backend: str = "auto",
                 **kwargs: Any) -> "Localiser":
        """Load a bundle folder (verifying its files). ``device``: auto|cpu|cuda|tensorrt; ``backend``:
        auto|onnxruntime|tensorrt; kwargs: precision, batch_size, threads, decode_threads, index_backend."""
        cfg = read_bundle_config(path, verify=True)
        return cls(path, cfg, device=device, backend=backend, **kwargs)

    def close(self) -> None:
        self._pipeline.close()

    def __enter__(self) -> "Localiser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- embedding --------------------------------------------------------------------------------------
    def _embed(self, images: Any, view: str, *, progress: bool | None = None,
               timings: dict[str, float] | None = None) -> np.ndarray:
        imgs = as_image_list(images)
        spec, enc = self.specs[view], self.encoders[view]
        out = np.empty((len(imgs), self.embed_dim), dtype=np.float32)
        bar = _progress(len(imgs), progress, f"embed {view}")
        t_wait = t_enc = 0.0
        pos = 0
        it = self._pipeline.batches(imgs, spec, self.batch_size)
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
                out[pos:pos + batch.shape[0]] = emb
                pos += batch.shape[0]
                t_wait += t1 - t0
                t_enc += t2 - t1
                if bar is not None:
                    bar.update(batch.shape[0])
        finally:
            if bar is not None:
                bar.close()
        if timings is not None:
            timings["decode_s"] = timings.get("decode_s", 0.0) + t_wait
            timings["encode_s"] = timings.get("encode_s", 0.0) + t_enc
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

        Returns the index size afterwards. Coordinates are validated before anything is embedded.
        """
        from s4g_engine.index import validate_coords

        imgs = as_image_list(images)
        c = validate_coords(coords, len(imgs))
        if ids is not None and len(ids) != len(imgs):
            raise ValueError(f"got {len(ids)} ids for {len(imgs)} images; pass one id per image or None")
        emb = self._embed(imgs, "aerial", progress=progress)
        self.index.add(emb, c, ids)
        return len(self.index)

    def save_index(self, path: str | os.PathLike[str]) -> None:
        """Write the reference index atomically (``.npz``, no pickle) with this model's fingerprint."""
        self.index.save(path)

    def load_index(self, path: str | os.PathLike[str]) -> int:
        """Replace the index by the one at ``path``; ``ValueError`` if another model built it."""
        self.index = ReferenceIndex.load(path, expected_fingerprint=self.fingerprint)
        if self.index.dim != self.embed_dim:
            raise ValueError(f"index dim {self.index.dim} ≠ model embed dim {self.embed_dim}")
        return len(self.index)

    # -- query ------------------------------------------------------------------------------------------
    def localise(self, images: ImageLike | Sequence[ImageLike], k: int = 5) -> LocaliseResult:
        """Top-``k`` reference tiles for each ground image (see :class:`LocaliseResult`)."""
        t0 = time.perf_counter()
        n_index = len(self.index)
        if n_index == 0:
            raise ValueError("the index is empty: call index_references(...) or load_index(path) first")
        if not isinstance(k, (int, np.integer)) or k < 1 or k > n_index:
            raise ValueError(f"k must be an integer in [1, {n_index}] (the index size), got {k!r}")
        timings: dict[str, float] = {}
        q = self._embed(images, "ground", timings=timings)
        index = self.index
        t1 = time.perf_counter()
        scores, idx = index.search(q, int(k))
        timings["search_s"] = time.perf_counter() - t1
        # An approximate (IVF-PQ) search may find fewer than k candidates: faiss pads with −1.
        missing = idx < 0
        coords = index.coords[np.where(missing, 0, idx)]
        coords[missing] = np.nan
        ids = [[index.ids[j] if j >= 0 else "" for j in row] for row in idx.tolist()]
        timings["total_s"] = time.perf_counter() - t0
        return LocaliseResult(scores=scores, indices=idx, ids=ids, coords=coords, timings=timings)


def _has_gpu_provider() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    avail = set(ort.get_available_providers())
    return bool(avail & {"CUDAExecutionProvider", "TensorrtExecutionProvider"})
