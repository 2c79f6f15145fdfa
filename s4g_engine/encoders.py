"""Encoder backends: ONNX Runtime (TensorRT > CUDA > CPU execution providers) and native TensorRT engines;
the optional OpenVINO CPU backend and the choice of the CPU runtime by measurement live in
:mod:`s4g_engine.backends`.

Both take a float32 batch ``(B, 3, H, W)`` (already preprocessed) and return float32 ``(B, D)``
L2-normalised embeddings (the normalisation is inside the exported graph). Both are safe to call from
several threads at once (ONNX Runtime's ``InferenceSession.run`` is thread-safe; the TensorRT backend
keeps one execution context per thread).

TensorRT is optional and imported only when asked for: ``pip install tensorrt cuda-python`` (or JetPack's
TensorRT on Jetson). It cannot be installed on our CI machines, so that path is not exercised in CI.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

TENSORRT_MISSING = ("TensorRT is not installed: `pip install tensorrt cuda-python` on a machine with an NVIDIA GPU "
                    "(JetPack ships it on Jetson), or use backend='onnxruntime'")


class Encoder(Protocol):
    """What the Localiser needs from an encoder backend."""

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:  # (B, 3, H, W) float32 → (B, D) float32
        ...


def ort_providers(device: str = "auto") -> list[Any]:
    """The ONNX Runtime execution providers to use, in priority order TensorRT > CUDA > CPU.

    ``device``: ``"auto"`` (whatever is available), ``"cpu"``, ``"cuda"`` (CUDA EP, error if absent) or
    ``"tensorrt"`` (TensorRT EP, error if absent).
    """
    import onnxruntime as ort

    avail = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    want = {"auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
            "cuda": ["CUDAExecutionProvider"],
            "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}.get(device)
    if want is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'tensorrt', got {device!r}")
    chosen = [p for p in want if p in avail]
    if device != "auto" and want[0] not in avail:
        raise RuntimeError(f"device={device!r} needs ONNX Runtime's {want[0]}, but this onnxruntime offers "
                           f"{sorted(avail)}; install onnxruntime-gpu (it replaces onnxruntime) or use device='cpu'")
    providers: list[Any] = []
    for p in chosen:
        if p == "TensorrtExecutionProvider":
            cache = os.environ.get("S4G_TRT_CACHE", str(Path.home() / ".cache" / "s4g" / "trt"))
            providers.append((p, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                  "trt_engine_cache_path": cache}))
        else:
            providers.append(p)
    providers.append("CPUExecutionProvider")
    return providers


class OrtEncoder:
    """An ONNX Runtime session over one exported view model (input ``image``, output ``embedding``)."""

    def __init__(self, path: str | os.PathLike[str], *, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        if os.environ.get("S4G_ORT_SPIN", "0") == "0":  # yield, do not spin: decode threads share the cores
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), so, providers=ort_providers(device))
        self.providers = self.session.get_providers()
        self.name = f"onnxruntime:{self.providers[0]}"
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one input (image), found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = "embedding"
        outs = [o.name for o in self.session.get_outputs()]
        if self.output_name not in outs:
            raise ValueError(f"{self.path}: expected an output named 'embedding', found {outs}; "
                             "re-export with s4g-export")
        log.info("encoder %s on %s", self.path.name, self.providers)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float32)


class TensorRTEncoder:
    """A serialized TensorRT engine (built by ``s4g-export --tensorrt``) run through TensorRT's Python API.

    Uses TensorRT ≥ 8.5's named-tensor API (``set_input_shape`` / ``set_tensor_address`` /
    ``execute_async_v3``) and ``cuda-python`` for device memory. One execution context and one set of
    buffers per calling thread. Not exercised in CI (TensorRT cannot be installed there).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_batch: int | None = None) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise RuntimeError(TENSORRT_MISSING) from exc
        try:
            cudart = _cudart()
        except ImportError as exc:
            raise RuntimeError("the TensorRT backend needs cuda-python: `pip install cuda-python`") from exc
        self._trt, self._cudart = trt, cudart
        self.path = Path(path)
        self.name = "tensorrt"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{self.path}: TensorRT could not deserialize this engine (built for another GPU or "
                             "TensorRT version?); rebuild it with s4g-export --tensorrt on this machine")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = "embedding" if "embedding" in names else next(
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        _, _, prof_max = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.max_batch = int(max_batch or prof_max[0])
        self._local = threading.local()

    def _check(self, ret: Any) -> Any:
        err = ret[0] if isinstance(ret, tuple) else ret
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err} in the TensorRT backend")
        return ret[1] if isinstance(ret, tuple) and len(ret) == 2 else ret

    def _state(self) -> Any:
        st = getattr(self._local, "st", None)
        if st is None:
            st = SimpleNamespace()
            st.ctx = self.engine.create_execution_context()
            st.stream = self._check(self._cudart.cudaStreamCreate())
            st.bufs = {}
            self._local.st = st
        return st

    def _buffer(self, st: Any, name: str, nbytes: int) -> int:
        ptr, size = st.bufs.get(name, (None, 0))
        if size < nbytes:
            if ptr is not None:
                self._check(self._cudart.cudaFree(ptr))
            ptr = self._check(self._cudart.cudaMalloc(nbytes))
            st.bufs[name] = (ptr, nbytes)
        return int(ptr)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        outs: list[np.ndarray] = []
        for s in range(0, batch.shape[0], self.max_batch):
            x = np.ascontiguousarray(batch[s:s + self.max_batch], dtype=np.float32)
            st = self._state()
            st.ctx.set_input_shape(self.input_name, tuple(x.shape))
            out_shape = tuple(st.ctx.get_tensor_shape(self.output_name))
            y = np.empty(out_shape, dtype=np.float32)
            din = self._buffer(st, self.input_name, x.nbytes)
            dout = self._buffer(st, self.output_name, y.nbytes)
            st.ctx.set_tensor_address(self.input_name, din)
            st.ctx.set_tensor_address(self.output_name, dout)
            h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(cudart.cudaMemcpyAsync(din, x.ctypes.data, x.nbytes, h2d, st.stream))
            if not st.ctx.execute_async_v3(st.stream):
                raise RuntimeError(f"{self.path}: TensorRT execution failed")
            self._check(cudart.cudaMemcpyAsync(y.ctypes.data, dout, y.nbytes, d2h, st.stream))
            self._check(cudart.cudaStreamSynchronize(st.stream))
            outs.append(y)
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)


def _cudart() -> Any:
    try:
        from cuda import cudart  # type: ignore[import-not-found]
    except ImportError:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found,no-redef]
    return cudart


def tensorrt_engine_key(device: int = 0) -> str:
    """``<gpu-name>-sm<cc>-trt<version>``: TensorRT engines only run on the GPU model and TensorRT version
    they were built with, so bundles keep them under ``tensorrt/<key>/``."""
    import re

    import tensorrt as trt

    cudart = _cudart()
    err, props = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise RuntimeError(f"no usable CUDA device {device} (cudaGetDeviceProperties error {err})")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-sm{props.major}{props.minor}-trt{trt.__version__}"


def tensorrt_available() -> bool:
    """Whether the ``tensorrt`` Python package can be imported."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def make_encoder(files: Sequence[Path], *, backend: str = "auto", device: str = "auto",
                 threads: int | None = None, precision: str = "fp32") -> Encoder:
    """Pick the encoder for one view. ``files`` = candidate model files of that view (``.onnx``/``.engine``).

    ``backend``: ``"auto"`` (a TensorRT engine if one is present and TensorRT imports and the device is not
    ``"cpu"``, else ONNX Runtime), ``"onnxruntime"``, ``"tensorrt"`` or ``"openvino"`` (CPU; ``precision``
    fp32, bf16 or int8 for an int8 graph). The Localiser chooses among the CPU runtimes by measurement
    (:func:`s4g_engine.backends.runtime.cpu_encoder`).
    """
    engines = [f for f in files if f.suffix in (".engine", ".plan") and f.is_file()]
    onnx_files = [f for f in files if f.suffix == ".onnx" and f.is_file()]
    if backend not in ("auto", "onnxruntime", "tensorrt", "openvino"):
        raise ValueError(f"backend must be 'auto', 'onnxruntime', 'openvino' or 'tensorrt', got {backend!r}")
    if backend == "openvino":
        from s4g_engine.backends.openvino_encoder import OpenVinoEncoder

        if not onnx_files:
            raise FileNotFoundError(f"no ONNX model among {[str(f) for f in files]}")
        return OpenVinoEncoder(onnx_files[0], precision=precision, threads=threads)
    if backend == "tensorrt" or (backend == "auto" and engines and device != "cpu" and tensorrt_available()):
        if not engines:
            raise FileNotFoundError(f"backend='tensorrt' but the bundle has no TensorRT engine among "
                                    f"{[f.name for f in files]}; build one with `s4g-export CKPT --out DIR --tensorrt`")
        return TensorRTEncoder(engines[0])
    if not onnx_files:
        raise FileNotFoundError(f"no ONNX model among {[str(f) for f in files]}")
    return OrtEncoder(onnx_files[0], device=device, threads=threads)
