"""What this CPU can do, read from the operating system (never assumed): the flags that decide which encoder
runtimes and precisions are worth trying (:mod:`s4g_engine.backends.selection`).

Linux: ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``). Elsewhere the flags are unknown and only float32
paths are tried. The :attr:`CpuInfo.key` names the machine kind in the calibration cache: the CPU model,
the logical CPU count this process may use and the relevant flags.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

#: Flags that change which runtime/precision is fastest (x86 names as in /proc/cpuinfo; Arm: bf16, i8mm, asimddp).
RELEVANT_FLAGS = frozenset({
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "bf16", "i8mm", "sve",
})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


@dataclass(frozen=True)
class CpuInfo:
    """The CPU model, the CPUs this process may use and its relevant feature flags."""

    model: str
    cpus: int
    flags: frozenset[str] = field(default_factory=frozenset)
    arch: str = ""

    @property
    def bf16(self) -> bool:
        """Native bfloat16 dot products (AVX512_BF16, AMX-BF16 or Arm BF16)."""
        return bool(self.flags & BF16_FLAGS)

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    @property
    def int8_dot(self) -> bool:
        """int8 dot-product instructions (VNNI, AMX-INT8, Arm dot product/I8MM): what makes int8 fast."""
        return bool(self.flags & INT8_DOT_FLAGS)

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def kind(self) -> str:
        """A short name of the CPU kind for logs and benchmarks, e.g. ``avx512+bf16+vnni`` or ``avx2``."""
        parts = ["amx" if self.amx else "avx512" if "avx512f" in self.flags else "avx2" if self.avx2 else
                 (self.arch or "unknown")]
        parts += [name for name, on in (("bf16", self.bf16), ("vnni", self.int8_dot)) if on]
        return "+".join(parts)

    @property
    def key(self) -> str:
        """Stable identity of the machine kind for caches: sha256 of model, usable CPUs and relevant flags."""
        text = "|".join([self.arch, self.model, str(self.cpus), ",".join(sorted(self.flags))])
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "cpus": self.cpus, "arch": self.arch, "flags": sorted(self.flags),
                "kind": self.kind}


def usable_cpus() -> int:
    """Logical CPUs this process may run on (affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """``/proc/cpuinfo`` text → (model name, relevant flags of the first processor)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split()) & RELEVANT_FLAGS
        if model and flags:
            break
    return model, flags


def detect_cpu(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> CpuInfo:
    """Read this machine's CPU (flags are empty, i.e. nothing assumed, where ``cpuinfo`` cannot be read)."""
    model, flags = "", frozenset()
    try:
        model, flags = parse_cpuinfo(Path(cpuinfo).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        pass
    return CpuInfo(model=model or platform.processor() or "unknown", cpus=usable_cpus(), flags=flags,
                   arch=platform.machine().lower())
