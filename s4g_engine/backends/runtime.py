"""The CPU encoder of one bundle view: the runtime/precision named by the caller, or (``auto``) the one
calibration found fastest at full accuracy on this machine, from the cache when it was calibrated before.
See :mod:`s4g_engine.backends.selection` for the rules."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.backends.cpu import CpuInfo, detect_cpu
from s4g_engine.backends.openvino_encoder import (
    OPENVINO_MISSING,
    OpenVinoEncoder,
    openvino_available,
)
from s4g_engine.backends.selection import (
    Candidate,
    ChoiceCache,
    calibrate,
    calibration_batch,
    choose,
    plan_candidates,
)
from s4g_engine.errors import DependencyError, InputError, MissingFileError

log = logging.getLogger(__name__)


@dataclass
class CpuEncoderChoice:
    """What :func:`cpu_encoder` picked and why (``measurements`` empty when nothing was calibrated)."""

    candidate: Candidate
    source: str  # "only" (one candidate), "cache" or "calibrated"
    measurements: list[dict[str, Any]] = field(default_factory=list)
    cpu_kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.candidate.runtime, "precision": self.candidate.precision,
                "graph": self.candidate.graph, "source": self.source, "cpu": self.cpu_kind,
                "measurements": self.measurements}


def installed_runtimes() -> list[str]:
    out = []
    try:
        import onnxruntime  # noqa: F401

        out.append("onnxruntime")
    except ImportError:
        pass
    if openvino_available():
        out.append("openvino")
    return out


def runtime_versions() -> dict[str, str]:
    vers = {}
    for mod in ("onnxruntime", "openvino"):
        try:
            vers[mod] = str(__import__(mod).__version__)
        except (ImportError, AttributeError):
            pass
    return vers


def build_candidate(c: Candidate, path: Path, threads: int | None,
                    batch_size: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    """The encoder of candidate ``c`` over the graph file ``path`` (OpenVINO: compiled for ``batch_size``)."""
    if c.runtime == "openvino":
        return OpenVinoEncoder(path, precision=c.precision, threads=threads, static_batches=(int(batch_size), 1),
                               compile_now=True)
    from s4g_engine.encoders import OrtEncoder

    return OrtEncoder(path, device="cpu", threads=threads)


def cpu_encoder(graphs: Mapping[str, Path], shas: Mapping[str, str], *,
                prepare: Callable[[np.ndarray], np.ndarray], stage_hw: tuple[int, int], backend: str = "auto",
                precision: str = "auto", threads: int | None = None, batch_size: int = 32,
                cpu: CpuInfo | None = None, cache: ChoiceCache | None = None,
                prebuilt: Mapping[Candidate, Any] | None = None) -> tuple[Any, CpuEncoderChoice]:
    """Build the CPU encoder of one view.

    ``graphs``: graph key (``fp32``, ``int8``) → file; ``shas``: graph key → sha256 (from config.json);
    ``prepare``/``stage_hw``: the view's normalisation and uint8 stage size (calibration inputs);
    ``backend``: ``auto``, ``onnxruntime`` or ``openvino``; ``precision``: ``auto``, ``fp32``, ``bf16`` or
    ``int8``; ``prebuilt``: encoders already built for some candidates (the reference ONNX Runtime session).
    Returns the encoder and the :class:`CpuEncoderChoice`.
    """
    cpu = cpu or detect_cpu()
    runtimes = installed_runtimes()
    if backend == "openvino" and "openvino" not in runtimes:
        raise DependencyError(OPENVINO_MISSING)
    cands = plan_candidates(cpu, graphs=list(graphs), runtimes=runtimes, backend=backend, precision=precision)
    if not cands:
        raise InputError(f"no CPU encoder for backend={backend!r} precision={precision!r}: installed runtimes "
                         f"{runtimes}, graphs in the bundle {sorted(graphs)}, CPU {cpu.kind}; use precision='fp32' "
                         "or another backend (an int8 graph comes from s4g-export --cpu-int8)")
    for c in cands:
        if not Path(graphs[c.graph]).is_file():
            raise MissingFileError(f"{graphs[c.graph]} is missing; copy the whole bundle folder or re-export it")
    ready = dict(prebuilt or {})

    def build(c: Candidate) -> Any:
        return ready.pop(c) if c in ready else build_candidate(c, Path(graphs[c.graph]), threads, batch_size)

    if len(cands) == 1 and cands[0].precision == "fp32":
        return build(cands[0]), CpuEncoderChoice(cands[0], "only", cpu_kind=cpu.kind)
    cache = cache if cache is not None else ChoiceCache()
    key = {"machine": cpu.key, "cpu": cpu.to_dict(), "runtimes": runtime_versions(), "threads": threads,
           "batch": int(batch_size), "candidates": [c.label for c in cands],
           "graphs": {c.graph: shas.get(c.graph, "") for c in cands}, "stage": list(stage_hw),
           "backend": backend, "precision": precision}
    hit = cache.get(key)
    chosen = None if hit is None else next((c for c in cands if c.label == hit["choice"].get("label")), None)
    if chosen is not None:
        log.info("encoder %s: %s (cached calibration for %s)", Path(graphs["fp32"]).name, chosen.label, cpu.kind)
        return build(chosen), CpuEncoderChoice(chosen, "cache", hit["measurements"], cpu.kind)  # type: ignore[index]
    batch = calibration_batch(prepare, stage_hw, int(batch_size))
    built: dict[Candidate, Any] = {}
    reference = None
    if cands[0].precision != "fp32":  # reduced precision only: the cosines still need a float32 reference
        ref_c = Candidate("onnxruntime" if "onnxruntime" in runtimes else "openvino", "fp32", "fp32")
        reference = np.asarray(build(ref_c)(batch))
    ms = calibrate(cands, build, batch, built=built, reference=reference)
    best = choose(ms)
    table = [m.to_dict() for m in ms]
    for m in ms:
        log.info("calibration %-20s %8.1f images/s  cosine %s%s", m.candidate.label, m.images_per_s,
                 "n/a" if np.isnan(m.cosine) else f"{m.cosine:.6f}", f"  ({m.error})" if m.error else "")
    if best is None:
        raise InputError(f"no encoder candidate reached the accuracy threshold on this machine: {table}")
    cache.put(key, {"label": best.candidate.label, **best.to_dict()}, table)
    log.info("encoder: %s chosen for %s (%.1f images/s)", best.candidate.label, cpu.kind, best.images_per_s)
    enc = built.pop(best.candidate)
    built.clear()
    return enc, CpuEncoderChoice(best.candidate, "calibrated", table, cpu.kind)
