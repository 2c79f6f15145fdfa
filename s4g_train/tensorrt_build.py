"""TensorRT engines for an exported bundle (``s4g-export ... --tensorrt [--int8 ...]``).

Written against TensorRT's documented Python API (TensorRT 8.6–10.x: ``Builder``, ``OnnxParser``,
``IBuilderConfig.set_memory_pool_limit``, optimisation profiles, ``build_serialized_network``;
``IInt8EntropyCalibrator2`` for INT8 post-training calibration) and ``cuda-python`` for device memory.
TensorRT cannot be installed on our CI machines (its wheels download from NVIDIA's servers), so this path
is import-guarded and **not exercised in CI**; its tests skip with that reason.

Per view, one engine with an optimisation profile for batch ``1 … max_batch`` (optimum at ``opt_batch``),
FP16 enabled (and INT8 with ``int8=True``, calibrated on images drawn from the training split). Engines
are stored in the bundle under ``tensorrt/<gpu>-sm<cc>-trt<version>/<view>.engine`` (see
:func:`s4g_engine.encoders.tensorrt_engine_key`): an engine only runs on the GPU model and TensorRT
version it was built with, so each machine builds (and caches) its own; the Localiser picks the one that
matches the machine it runs on, else falls back to ONNX Runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

NOT_INSTALLED = "TensorRT is not installed (cannot be installed in this workplace)"


def require_tensorrt() -> Any:
    """Import ``tensorrt`` (and check cuda-python) or raise ``RuntimeError`` saying how to get them."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(f"{NOT_INSTALLED}: on a machine with an NVIDIA GPU run `pip install tensorrt cuda-python` "
                           "(Jetson: JetPack ships TensorRT), then re-run with --tensorrt") from exc
    try:
        from s4g_engine.encoders import _cudart

        _cudart()
    except ImportError as exc:
        raise RuntimeError("TensorRT engines need cuda-python for device memory: `pip install cuda-python`") from exc
    return trt


def _calibration_batches(view: str, contract: dict[str, Any], *, dataset: str, root: str, split: str,
                         count: int, batch: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Preprocessed float32 ``(batch, 3, H, W)`` batches of ``count`` random images of the ``split`` (the
    ground view uses the queries, the aerial view the references), exactly as the engine preprocesses."""
    from s4g_engine.datasets import load_split
    from s4g_engine.preprocess import ViewSpec

    sp = load_split(dataset, root, split)
    paths = list(sp.queries if view == "ground" else sp.references)
    if not paths:
        raise ValueError(f"{dataset} {split} at {root} has no {view} images for INT8 calibration")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), size=min(count, len(paths)), replace=False)
    spec = ViewSpec.from_config(view, contract)
    for s in range(0, len(pick) - batch + 1, batch):  # full batches only: the calibrator has a fixed batch
        yield np.stack([spec.prepare(paths[i]) for i in pick[s:s + batch]]).astype(np.float32)


def _make_calibrator(trt: Any, batches: Iterator[np.ndarray], batch: int, shape: tuple[int, ...],
                     cache_file: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through one device buffer."""
    from s4g_engine.encoders import _cudart

    cudart = _cudart()

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.nbytes = int(np.prod((batch, *shape))) * 4
            err, self.ptr = cudart.cudaMalloc(self.nbytes)
            if int(err) != 0:
                raise RuntimeError(f"cudaMalloc failed ({err})")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            x = next(batches, None)
            if x is None:
                return None
            x = np.ascontiguousarray(x, dtype=np.float32)
            (err,) = cudart.cudaMemcpy(self.ptr, x.ctypes.data, x.nbytes,
                                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            if int(err) != 0:
                raise RuntimeError(f"cudaMemcpy failed ({err})")
            return [int(self.ptr)]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_file, bytes(cache))

    return Calibrator()


def build_engine(onnx_path: Path, engine_path: Path, *, input_shape: tuple[int, int, int], max_batch: int = 64,
                 opt_batch: int | None = None, fp16: bool = True, int8: bool = False, calibrator: Any = None,
                 workspace_gb: float = 4.0) -> Path:
    """Parse ``onnx_path`` and write a serialized engine to ``engine_path`` (atomically)."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = int(opt_batch or min(max_batch, 32))
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, *input_shape), (opt, *input_shape), (int(max_batch), *input_shape))
    config.add_optimization_profile(profile)
    if int8:
        if calibrator is None:
            raise ValueError("int8=True needs a calibrator (calibration images from the training split)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    log.info("TensorRT engine %s (fp16=%s int8=%s, batch 1…%d)", engine_path, fp16, int8, max_batch)
    return engine_path


def build_engines(bundle_dir: Path, views: dict[str, Any], *, int8: bool = False, max_batch: int = 64,
                  calib_dataset: str | None = None, calib_root: str | None = None, calib_split: str = "train",
                  calib_images: int = 512, calib_batch: int = 16) -> dict[str, dict[str, str]]:
    """Build one engine per view of the bundle being written in ``bundle_dir``.

    Returns ``{view: {engine_key: relative path}}`` for ``config.json``.
    """
    require_tensorrt()
    from s4g_engine.encoders import tensorrt_engine_key

    key = tensorrt_engine_key()
    if int8 and not (calib_dataset and calib_root):
        raise ValueError("--int8 needs calibration images: pass --calib-dataset NAME --calib-root DIR "
                         "[--calib-split train]")
    out: dict[str, dict[str, str]] = {}
    for view, contract in views.items():
        h, w = contract["input_size"]
        rel = f"tensorrt/{key}/{view}{'.int8' if int8 else ''}.engine"
        calibrator = None
        if int8:
            batches = _calibration_batches(view, contract, dataset=str(calib_dataset), root=str(calib_root),
                                           split=calib_split, count=calib_images, batch=calib_batch)
            calibrator = _make_calibrator(require_tensorrt(), batches, calib_batch, (3, h, w),
                                          bundle_dir / f"tensorrt/{key}/{view}.calib.cache")
        build_engine(bundle_dir / contract["files"]["fp32"], bundle_dir / rel, input_shape=(3, h, w),
                     max_batch=max_batch, fp16=True, int8=int8, calibrator=calibrator)
        out[view] = {key: rel}
    return out
