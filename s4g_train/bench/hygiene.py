"""Benchmark hygiene shared by every ``s4g-bench`` module: which machine a run measured, and whether it was quiet.

Every results JSON records the CPU model, its SIMD flags (AVX2, AVX-512, AVX512-BF16, VNNI, AMX), the
thread count, and the 1-minute load average before and after the run. A run whose load exceeds its own
thread count by more than 0.5 (before or after) is marked ``"noisy": true`` and says so on stdout: other
work competed for the cores, so its timings — above all those of multi-threaded BLAS contenders, which
collapse on a loaded machine — are not figures for BENCHMARKS.md.

Usage::

    guard = RunGuard.start(threads)
    results = run(...)
    guard.finish(results)          # adds results["machine"][...] and results["noisy"]
    write_results(out, results)    # atomic JSON
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s4g_engine.fileio import atomic_write_text

log = logging.getLogger(__name__)

# Flags of /proc/cpuinfo that decide which kernels run (and how fast the BLAS contenders are).
SIMD_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_int8")
NOISE_MARGIN = 0.5  # load above threads + this → noisy


def _cpuinfo() -> dict[str, str]:
    """First processor block of /proc/cpuinfo (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def cpu_model() -> str:
    """The CPU's marketing name (``model name`` of /proc/cpuinfo), else what ``platform`` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def simd_flags() -> list[str]:
    """The SIMD_FLAGS this CPU reports (x86 Linux; empty where /proc/cpuinfo has no flags line)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in SIMD_FLAGS if f in flags]


def load_1min() -> float | None:
    """1-minute load average, or None where the OS does not report one."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def machine_facts() -> dict[str, Any]:
    return {"cpu_model": cpu_model(), "simd_flags": simd_flags(), "cpus": os.cpu_count(),
            "platform": platform.platform()}


@dataclass
class RunGuard:
    """Load average around one benchmark run of ``threads`` threads."""

    threads: int
    load_before: float | None

    @classmethod
    def start(cls, threads: int | None) -> RunGuard:
        return cls(threads=int(threads or os.cpu_count() or 1), load_before=load_1min())

    def finish(self, results: dict[str, Any]) -> bool:
        """Record the machine and the load into ``results``; True (and a line on stdout) when noisy."""
        after = load_1min()
        loads = [v for v in (self.load_before, after) if v is not None]
        noisy = bool(loads) and max(loads) > self.threads + NOISE_MARGIN
        machine = results.setdefault("machine", {})
        machine.update(machine_facts())
        machine.update({"threads": self.threads, "load_avg_1min_before": self.load_before,
                        "load_avg_1min_after": after,
                        "noisy_rule": f"noisy when the 1-min load before or after > threads + {NOISE_MARGIN}"})
        results["noisy"] = noisy
        if noisy:
            print(f"NOISY RUN: 1-min load {self.load_before} before / {after} after on {self.threads} thread(s) "
                  f"(> threads + {NOISE_MARGIN}): other work shared the CPU — do not report these timings")
        return noisy


def write_results(out: Path, results: dict[str, Any]) -> None:
    """Results as JSON at ``out`` (atomically, folders created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
