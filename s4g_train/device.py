"""Device and numeric precision: which device a run uses, whether this CPU / GPU runs bf16 natively, which
autocast dtype (and GradScaler) follows from ``train.amp``, the autocast context itself, and the layout /
input-path / backend choices that follow from the device (``channels_last``, ``device_preprocess``).

Used by the trainer and by ``s4g-eval``; it imports nothing else from ``s4g_train``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

_CPU_BF16: bool | None = None


def pick_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` → CUDA when available, else CPU. ``local_rank`` (a distributed run's, from
    :class:`s4g_train.dist.DistInfo`) picks ``cuda:local_rank``; without it CUDA means the current device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available; use auto or cpu")
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", int(local_rank))
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 / AMX / ARM BF16) and correctly.

    ``torch.backends.cpu.get_cpu_capability()`` reports "AVX512" on CPUs with and without the BF16
    extension, so we read the CPU flags and, as a check, run a tiny bf16 matmul against float32.
    Without native support bf16 autocast is emulated and several times *slower* than float32.
    """
    global _CPU_BF16
    if _CPU_BF16 is None:
        flags = ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = " ".join(line for line in f if line.startswith(("flags", "Features")))
        except OSError:
            pass
        cap = torch.backends.cpu.get_cpu_capability()
        native = any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16")) or "AMX" in cap.upper()
        ok = False
        if native:
            g = torch.Generator().manual_seed(0)
            a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
            ref = a @ b
            got = (a.bfloat16() @ b.bfloat16()).float()
            ok = bool(torch.allclose(got, ref, rtol=0.05, atol=0.5))
        _CPU_BF16 = native and ok
    return _CPU_BF16


def cuda_has_bf16(device: torch.device) -> bool:
    """True when the CUDA device runs bf16 natively (compute capability ≥ 8.0: Ampere, Hopper, …)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def pick_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler).

    auto: on CUDA bf16 where the GPU supports it natively — no GradScaler, hence no loss scaling and no
    per-step host sync on its overflow check — else fp16 + GradScaler; on a CPU bf16 when it runs natively,
    else float32 (emulated bf16 is slower than float32).
    """
    if mode == "off":
        return None, False
    if mode == "auto":
        if device.type == "cuda":
            return (torch.bfloat16, False) if cuda_has_bf16(device) else (torch.float16, True)
        return (torch.bfloat16, False) if cpu_has_native_bf16() else (None, False)
    if mode == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use bf16, auto or off on CPU")
    return torch.float16, True


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` for ``amp_dtype`` on ``device``, or a no-op context when ``amp_dtype`` is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """``train.channels_last`` resolved: None (auto) = NHWC on CUDA (tensor-core convolutions run NHWC
    natively), NCHW on a CPU (bf16 convolutions in NHWC were slower there, benchmarks/train.md)."""
    return device.type == "cuda" if setting is None else bool(setting)


def use_device_preprocess(setting: bool | None, device: torch.device) -> bool:
    """``data.device_preprocess`` resolved: None (auto) = on with CUDA, off on a CPU (s4g_train/feed.py)."""
    return device.type == "cuda" if setting is None else bool(setting)


def configure_backends(device: torch.device) -> None:
    """Per-process backend settings for a run on ``device``: cuDNN picks the fastest convolution algorithm
    for each input shape on CUDA (training shapes are fixed; one-off tuning per shape). Nothing on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing); a no-op on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_search_available(device: torch.device) -> bool:
    """Whether exact search on ``device``'s tensors can run on the GPU: a CUDA device and the compiled CUDA core
    ``s4g_engine._core_cuda`` (same results as the CPU core, docs/METHOD.md §13.4). Else search on the host."""
    if device.type != "cuda":
        return False
    try:
        from s4g_engine import _core_cuda  # type: ignore[attr-defined]

        return int(_core_cuda.device_count()) > 0
    except Exception as exc:  # not built with CUDA, or a driver problem: the CPU core does the search
        log.info("CUDA search unavailable (%s): DSS mining searches on the CPU", exc)
        return False
