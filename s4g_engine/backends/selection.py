"""Choosing the CPU encoder runtime by measurement: which runtime/precision runs this bundle fastest on this
machine without losing accuracy.

1. :func:`plan_candidates`: what is worth trying, from what is installed, what the bundle holds and what the
   CPU has (:mod:`s4g_engine.backends.cpu`): ONNX Runtime fp32 always; OpenVINO fp32; OpenVINO bf16 only
   where the CPU has native bf16 (AVX512_BF16/AMX/Arm BF16); int8 graphs (``files.int8`` of a view, written by
   ``s4g-export --cpu-int8``) only where it has int8 dot products (VNNI/AMX/Arm DOT) — without them int8 is
   slower than fp32 on x86.
2. :func:`calibrate`: each candidate embeds the same fresh batch (the bundle's own graph, the Localiser's
   batch size); timed back to back in interleaved rounds; its embeddings are compared with the float32
   ONNX Runtime reference.
3. :func:`choose`: the fastest candidate whose worst cosine to the reference reaches
   :data:`COSINE_FP32` (float32 paths) or :data:`COSINE_REDUCED` (bf16/int8); another runtime replaces the
   first (reference) candidate only when it is at least ``min_gain`` faster, so timing noise does not flip
   the choice. A candidate that fails to build or run, or loses accuracy, is never picked.
4. :class:`ChoiceCache`: the choice is cached per machine kind (CPU model, flags, CPUs), bundle graph
   (sha256), input shape, batch size, threads and runtime versions — a small JSON file in the user cache
   folder, written atomically and verified on read (checksum, key, candidate); anything wrong → recalibrate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.backends.cpu import CpuInfo
from s4g_engine.errors import InputError

log = logging.getLogger(__name__)

COSINE_FP32 = 0.9999
COSINE_REDUCED = 0.999
CACHE_FORMAT = "s4g-backend-choice"
CACHE_VERSION = 1
RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Candidate:
    """One way to run a view graph on the CPU: ``runtime`` × ``precision`` over the bundle graph ``graph``
    (a key of the view's ``files``: ``fp32`` or ``int8``)."""

    runtime: str
    precision: str
    graph: str

    @property
    def label(self) -> str:
        return f"{self.runtime}:{self.precision}"

    @property
    def threshold(self) -> float:
        return COSINE_FP32 if self.precision == "fp32" else COSINE_REDUCED


@dataclass(frozen=True)
class Measurement:
    """One candidate's calibration: seconds per batch (median), worst cosine to the reference, or the error."""

    candidate: Candidate
    seconds: float = float("inf")
    cosine: float = float("nan")
    batch: int = 0
    error: str = ""

    @property
    def eligible(self) -> bool:
        return not self.error and np.isfinite(self.seconds) and bool(self.cosine >= self.candidate.threshold)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds if self.seconds > 0 and np.isfinite(self.seconds) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.candidate), "seconds_per_batch": self.seconds if np.isfinite(self.seconds) else None,
                "images_per_s": self.images_per_s, "cosine": None if np.isnan(self.cosine) else self.cosine,
                "batch": self.batch, "eligible": self.eligible, "error": self.error}


def plan_candidates(cpu: CpuInfo, *, graphs: Sequence[str], runtimes: Sequence[str], backend: str = "auto",
                    precision: str = "auto") -> list[Candidate]:
    """The candidates worth calibrating, reference first (ONNX Runtime fp32 when ONNX Runtime is there).

    ``graphs``: the view's graph keys in the bundle (``fp32``, maybe ``int8``); ``runtimes``: the installed
    ones; ``backend``: ``auto`` or one runtime; ``precision``: ``auto`` or one of fp32/bf16/int8.
    """
    if backend not in ("auto", *RUNTIMES):
        raise InputError(f"CPU backend must be 'auto', 'onnxruntime' or 'openvino', got {backend!r}")
    if precision not in ("auto", "fp32", "bf16", "int8"):
        raise InputError(f"CPU precision must be 'auto', 'fp32', 'bf16' or 'int8', got {precision!r}")
    want_rt = [r for r in RUNTIMES if r in runtimes and backend in ("auto", r)]
    out: list[Candidate] = []
    for rt in want_rt:
        if "fp32" in graphs:
            out.append(Candidate(rt, "fp32", "fp32"))
        if rt == "openvino" and "fp32" in graphs and (cpu.bf16 or precision == "bf16"):
            out.append(Candidate(rt, "bf16", "fp32"))
        if "int8" in graphs and (cpu.int8_dot or precision == "int8"):
            out.append(Candidate(rt, "int8", "int8"))
    if precision != "auto":
        out = [c for c in out if c.precision == precision]
    return out


def choose(measurements: Sequence[Measurement], *, min_gain: float = 0.03) -> Measurement | None:
    """The eligible measurement with the most images/s (ties → earlier candidate). The first measurement is
    the reference path: another one must beat it by ``min_gain`` (3 %) to replace it. None if none is eligible."""
    ok = [m for m in measurements if m.eligible]
    if not ok:
        return None
    best = max(ok, key=lambda m: (m.images_per_s, -measurements.index(m)))
    first = measurements[0]
    if first.eligible and best is not first and best.images_per_s < first.images_per_s * (1.0 + min_gain):
        return first
    return best


def calibration_batch(prepare: Callable[[np.ndarray], np.ndarray], stage_hw: Sequence[int], batch: int,
                      seed: int = 0) -> np.ndarray:
    """A fresh batch of image-like inputs: smooth random uint8 images plus noise (``stage_hw`` = (H, W) of
    the uint8 stage), passed through the view's own ``prepare`` (normalisation / polar transform)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = int(stage_hw[0]), int(stage_hw[1])
    stages = np.empty((batch, h, w, 3), np.uint8)
    for i in range(batch):
        low = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BILINEAR), np.int16)
        stages[i] = np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
    return prepare(stages)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("nan")
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min((a * b).sum(1) / np.maximum(den, 1e-30)))


def calibrate(candidates: Sequence[Candidate], build: Callable[[Candidate], Callable[[np.ndarray], np.ndarray]],
              batch: np.ndarray, *, rounds: int = 5, max_seconds: float = 30.0,
              built: dict[Candidate, Any] | None = None,
              reference: np.ndarray | None = None) -> list[Measurement]:
    """Build and time every candidate on ``batch``: one warm-up, then ``rounds`` interleaved rounds (each
    candidate once per round, so load on a shared machine hits all alike), median per candidate; stops
    after the first round once ``max_seconds`` have passed. Cosines are against ``reference`` (float32
    embeddings of ``batch``), else against the first buildable candidate's output, which must then be the
    float32 reference path. ``built`` receives the encoders, so the chosen one need not be built twice."""
    encs: dict[Candidate, Callable[[np.ndarray], np.ndarray]] = {} if built is None else built
    errors: dict[Candidate, str] = {}
    outs: dict[Candidate, np.ndarray] = {}
    for c in candidates:
        try:
            enc = build(c)
            outs[c] = np.asarray(enc(batch))  # warm-up (compiles lazy shapes) and the embeddings compared
            encs[c] = enc
        except Exception as exc:  # noqa: BLE001 - a runtime that fails here is simply not chosen
            errors[c] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.warning("encoder candidate %s failed: %s", c.label, errors[c])
    times: dict[Candidate, list[float]] = {c: [] for c in encs}
    start = time.perf_counter()
    for _ in range(max(1, rounds)):
        for c, enc in encs.items():
            t = time.perf_counter()
            enc(batch)
            times[c].append(time.perf_counter() - t)
        if time.perf_counter() - start > max_seconds:
            break
    ref = reference if reference is not None else (outs[next(iter(encs))] if encs else None)
    out = []
    for c in candidates:
        if c in errors:
            out.append(Measurement(c, batch=int(batch.shape[0]), error=errors[c]))
        else:
            out.append(Measurement(c, seconds=float(np.median(times[c])), cosine=_cosine(outs[c], ref),
                                   batch=int(batch.shape[0])))
    return out


# -- the cache --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$S4G_CACHE_DIR``, else ``$XDG_CACHE_HOME/s4g``, else ``~/.cache/s4g``."""
    if os.environ.get("S4G_CACHE_DIR"):
        return Path(os.environ["S4G_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "s4g"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class ChoiceCache:
    """Calibration results, one JSON file per key under ``<cache_dir>/backend-choice/`` (no pickle).

    A file holds ``format``, ``version``, ``key`` (everything the choice depends on), ``choice``,
    ``measurements`` and ``sha256`` over the rest. :meth:`get` returns None — so the caller recalibrates — for
    a missing, unreadable, corrupt or foreign file (checksum or key mismatch), logging why.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "backend-choice"

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / (hashlib.sha256(_canonical(key).encode()).hexdigest()[:32] + ".json")

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        p = self.path(key)
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("backend cache %s unreadable (%s): recalibrating", p, exc)
            return None
        try:
            body = {k: doc[k] for k in ("format", "version", "key", "choice", "measurements")}
            ok = (doc["sha256"] == hashlib.sha256(_canonical(body).encode()).hexdigest()
                  and body["format"] == CACHE_FORMAT and body["version"] == CACHE_VERSION)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            log.warning("backend cache %s is corrupt or of another format: recalibrating", p)
            return None
        if body["key"] != json.loads(_canonical(key)):
            log.warning("backend cache %s belongs to another machine/bundle: recalibrating", p)
            return None
        return body

    def put(self, key: dict[str, Any], choice: dict[str, Any], measurements: list[dict[str, Any]]) -> Path | None:
        """Write atomically; a cache that cannot be written (read-only home) only costs a recalibration."""
        from s4g_engine.fileio import atomic_write_text

        body = json.loads(_canonical({"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key,
                                      "choice": choice, "measurements": measurements}))
        doc = {**body, "sha256": hashlib.sha256(_canonical(body).encode()).hexdigest()}
        p = self.path(key)
        try:
            atomic_write_text(p, json.dumps(doc, indent=1, sort_keys=True) + "\n", durable=False)
        except OSError as exc:
            log.warning("cannot write the backend cache %s (%s); the next start calibrates again", p, exc)
            return None
        return p
