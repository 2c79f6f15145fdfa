"""OpenVINO encoder backend (optional: ``pip install 's4g[openvino]'``).

OpenVINO reads the bundle's ONNX graphs directly and has CPU paths that ONNX Runtime's CPU provider lacks:
bfloat16 inference where the CPU has AVX512_BF16 or AMX (``precision="bf16"`` sets OpenVINO's
``INFERENCE_PRECISION_HINT``) and int8 for QDQ graphs on VNNI/AMX CPUs. ``precision="fp32"`` pins float32
explicitly, because OpenVINO defaults to bf16 on CPUs that have it.

OpenVINO is markedly faster on a static input shape (indicative, 2 cores, convnext_atto 32×128 batch 32 bf16:
~34 ms static vs ~51 ms dynamic), so the graph is compiled for the ``static_batches`` sizes (the Localiser's
batch size, compiled up front, and 1 for single-image latency, compiled on first use); any other size (the
last partial batch of a call) runs on one dynamic-batch compilation instead of paying a ~0.5 s compile per
new size. Thread-safe: one infer request per calling thread and compiled shape.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import DependencyError, InputError

log = logging.getLogger(__name__)

OPENVINO_MISSING = ("the OpenVINO backend needs the openvino package: pip install 's4g[openvino]' "
                    "(or pip install openvino), or use backend='onnxruntime'")
#: OpenVINO INFERENCE_PRECISION_HINT per s4g precision (s4g_engine.localiser.PRECISIONS names the choices)
INFERENCE_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the QDQ graph's int8 ops, f32 elsewhere


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports (and has a CPU device)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_LIBC: Any = None
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.sigaltstack.argtypes = [ctypes.POINTER(_StackT), ctypes.POINTER(_StackT)]
    except (OSError, AttributeError):  # pragma: no cover - a libc without sigaltstack
        _LIBC = None


@contextlib.contextmanager
def keep_sigaltstack() -> Iterator[None]:
    """Run an OpenVINO call and put the calling thread's alternate signal stack back as it was.

    Why: OpenVINO's CPU plugin (measured with openvino 2026.4 on Linux) installs an alternate signal stack of its
    own on the thread that compiles a model, remembering the previous one, and puts the remembered one back when
    that compiled model is destroyed. Destroyed out of order (compile A, compile B, free A, compile C, free B,
    free C) the thread is left pointing at a freed stack; the next signal delivered with ``SA_ONSTACK`` (every
    Python-level handler, e.g. the SIGCHLD handler a torch DataLoader installs, then any child process exiting)
    cannot be delivered and the kernel kills the process with SIGSEGV and no traceback. Restoring the stack right
    after each call keeps OpenVINO's stack from ever being installed, so its destructor finds a stack that is not
    its own and leaves it alone (tests/test_backends.py reproduces the crash without this guard).
    """
    if _LIBC is None:
        yield
        return
    saved = _StackT()
    if _LIBC.sigaltstack(None, ctypes.byref(saved)) != 0:  # pragma: no cover - cannot fail with these arguments
        yield
        return
    try:
        yield
    finally:
        current = _StackT()
        _LIBC.sigaltstack(None, ctypes.byref(current))
        if (current.ss_sp, current.ss_flags & 2, current.ss_size) != (saved.ss_sp, saved.ss_flags & 2, saved.ss_size):
            restore = _StackT(saved.ss_sp, saved.ss_flags & 2, saved.ss_size)  # 2 = SS_DISABLE
            if _LIBC.sigaltstack(ctypes.byref(restore), None) != 0:  # pragma: no cover
                log.warning("could not restore the thread's alternate signal stack after an OpenVINO call "
                            "(errno %d)", ctypes.get_errno())


def _openvino() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise DependencyError(OPENVINO_MISSING) from exc
    return ov


class OpenVinoEncoder:
    """An OpenVINO CPU compilation of one exported view graph (input ``image``, output ``embedding``)."""

    def __init__(self, path: str | os.PathLike[str], *, precision: str = "fp32", threads: int | None = None,
                 static_batches: tuple[int, ...] = (32, 1), compile_now: bool = False) -> None:
        ov = _openvino()
        if precision not in INFERENCE_HINTS:
            raise InputError(f"OpenVINO precision must be one of {sorted(INFERENCE_HINTS)}, got {precision!r}")
        self.path = Path(path)
        self.precision = precision
        self.name = f"openvino:{precision}"
        self.static_batches = frozenset(int(b) for b in static_batches if int(b) >= 1)
        self._core = ov.Core()
        self._model = self._core.read_model(str(self.path))
        inputs = self._model.inputs
        if len(inputs) != 1:
            raise InputError(f"{self.path}: expected one input (image), found {[i.get_any_name() for i in inputs]}")
        self.input_name = inputs[0].get_any_name()
        shape = inputs[0].get_partial_shape()
        if shape.rank.get_length() != 4 or not all(d.is_static for d in list(shape)[1:]):
            raise InputError(f"{self.path}: expected an input (batch, 3, H, W) with fixed C, H, W, got {shape}")
        self.input_chw = tuple(int(d.get_length()) for d in list(shape)[1:])
        if not any("embedding" in o.get_names() for o in self._model.outputs):
            raise InputError(f"{self.path}: expected an output named 'embedding'; re-export with s4g-export")
        # Threads: as many as ONNX Runtime would use; one stream (one batch at a time, lowest latency);
        # no pinning, so the decode threads can run beside the encoder without being starved.
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": INFERENCE_HINTS[precision], "NUM_STREAMS": 1,
                                       "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled: dict[int, Any] = {}  # batch size (0 = dynamic) → compiled model
        self._lock = threading.Lock()
        self._local = threading.local()
        log.info("encoder %s on OpenVINO %s (precision %s)", self.path.name, ov.__version__, precision)
        if compile_now and static_batches:
            self._compile(int(static_batches[0]))

    def _compile(self, batch: int) -> Any:
        key = batch if batch in self.static_batches else 0
        got = self._compiled.get(key)
        if got is not None:
            return got
        with self._lock:
            got = self._compiled.get(key)
            if got is None:
                model = self._model.clone()
                model.reshape({self.input_name: [key or -1, *self.input_chw]})
                with keep_sigaltstack():
                    got = self._core.compile_model(model, "CPU", self.config)
                self._compiled[key] = got
        return got

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.input_chw:
            raise InputError(f"{self.path.name}: expected a float32 batch (B, {', '.join(map(str, self.input_chw))}), "
                             f"got {x.shape}")
        compiled = self._compile(int(x.shape[0]))
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        req = requests.get(id(compiled))
        if req is None:
            with keep_sigaltstack():
                req = requests[id(compiled)] = (compiled.create_infer_request(), compiled.output("embedding"))
        request, out = req
        with keep_sigaltstack():
            result = request.infer({0: x})[out]
        return np.array(result, dtype=np.float32, copy=True)
