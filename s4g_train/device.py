"""Device and numeric precision: which device a run uses, whether this CPU runs bf16 natively, which
autocast dtype (and GradScaler) follows from ``train.amp``, and the autocast context itself.

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


def pick_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler). auto: fp16+scaler on CUDA, bf16 on capable CPUs."""
    if mode == "off":
        return None, False
    if mode == "auto":
        if device.type == "cuda":
            return torch.float16, True
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
