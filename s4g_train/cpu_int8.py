"""An optional int8 graph per view for CPUs with int8 dot products (``s4g-export --cpu-int8``).

Static post-training quantisation with ONNX Runtime's quantiser (QDQ format: int8 weights per channel,
uint8 activations), calibrated on images of the bundle's own TRAINING split, preprocessed exactly as the
engine does (never the test split). The graph is kept only if its embeddings reach
:data:`PARITY_INT8` cosine against the eager float32 model on *other* training images than the
calibration ones; otherwise it is left out (a warning says why) and the bundle is exported without it.
Whether it is used at run time is decided on each machine by calibration (``s4g_engine.backends``): int8
is only tried on CPUs with VNNI/AMX/Arm dot products and only chosen when it is the fastest at ≥ 0.999.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

PARITY_INT8 = 0.999
_REFUSED_SPLITS = ("test", "val", "eval", "query_test")


def check_calibration_split(split: str) -> None:
    """Calibration data comes from the training data: refuse evaluation splits by name."""
    if any(word in split.lower() for word in _REFUSED_SPLITS):
        raise ValueError(f"--calib-split {split!r}: int8 calibration must use the training split (e.g. 'train'), "
                         "never the data the model is evaluated on")


def training_batches(view: str, contract: dict[str, Any], *, dataset: str, root: str, split: str, count: int,
                     batch: int = 16) -> list[np.ndarray]:
    """Preprocessed float32 batches of ``count`` random ``split`` images of ``view`` (the engine's
    preprocessing; ground = queries, aerial = references)."""
    from s4g_train.tensorrt_build import (
        _calibration_batches,  # same sampling as TensorRT's INT8 calibration
    )

    check_calibration_split(split)
    return list(_calibration_batches(view, contract, dataset=dataset, root=root, split=split, count=count,
                                     batch=batch))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def quantize_view(model: Any, f32: Path, dst: Path, batches: Sequence[np.ndarray], *,
                  threshold: float | None = None) -> dict[str, Any]:
    """Quantise the float32 graph ``f32`` to ``dst``: the first ¾ of ``batches`` calibrate, the rest check.

    Returns ``{"min_cosine", "kept", "calibration_images", "check_images"}``; ``dst`` is deleted when the
    cosine to the eager model is below ``threshold`` (default :data:`PARITY_INT8`).
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    threshold = PARITY_INT8 if threshold is None else threshold
    if len(batches) < 2:
        raise ValueError(f"int8 calibration needs at least 2 batches of training images, got {len(batches)}")
    cut = max(1, (3 * len(batches)) // 4)
    calib, check = list(batches[:cut]), list(batches[cut:])

    class Reader(CalibrationDataReader):
        def __init__(self, items: Iterable[np.ndarray]) -> None:
            self._it = iter([{"image": np.ascontiguousarray(b, np.float32)} for b in items])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(str(f32), str(dst), Reader(calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
    worst = 1.0
    for x in check:
        with torch.no_grad():
            ref = model.embed(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
        worst = min(worst, _cosine(sess.run(["embedding"], {"image": x})[0], ref))
    kept = worst >= threshold
    if not kept:
        dst.unlink(missing_ok=True)
        log.warning("%s: int8 embeddings reach cosine %.5f < %s against the float32 model on held-out training "
                    "images; the int8 graph is left out of the bundle", f32.name, worst, threshold)
    return {"min_cosine": worst, "kept": kept, "calibration_images": int(sum(len(b) for b in calib)),
            "check_images": int(sum(len(b) for b in check))}
