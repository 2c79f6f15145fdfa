"""CPU encoder runtimes and their choice by measurement (torch-free).

* :mod:`~s4g_engine.backends.cpu` — what the CPU has (AVX2, AVX-512, bf16, VNNI, AMX), read from the OS;
* :mod:`~s4g_engine.backends.openvino_encoder` — the optional OpenVINO backend (fp32 / bf16 / int8);
* :mod:`~s4g_engine.backends.selection` — candidates, calibration, the choice rule and its cache;
* :mod:`~s4g_engine.backends.runtime` — the CPU encoder of one bundle view (what the Localiser calls).

ONNX Runtime (CPU, CUDA, TensorRT providers) and native TensorRT engines live in :mod:`s4g_engine.encoders`.
"""

from __future__ import annotations

from s4g_engine.backends.cpu import CpuInfo, detect_cpu
from s4g_engine.backends.selection import (
           COSINE_FP32,
           COSINE_REDUCED,
           Candidate,
           ChoiceCache,
           Measurement,
           choose,
)

__all__ = [
           "COSINE_FP32",
           "COSINE_REDUCED",
           "Candidate",
           "ChoiceCache",
           "CpuInfo",
           "Measurement",
           "choose",
           "detect_cpu",
]
