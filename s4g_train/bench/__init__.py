"""``s4g-bench``: benchmark dispatcher. ``s4g-bench <kernels|encoder|retrieval|engine|train> [options]``.

Each subcommand lives in ``s4g_train/bench/<name>.py`` with ``main(argv) -> int`` and is imported only
when asked for, so ``s4g-bench kernels`` runs without torch or onnxruntime installed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from s4g_engine.console import cli_main
from s4g_engine.fileio import atomic_write_with

SUBCOMMANDS: dict[str, str] = {
    "kernels": "compiled core vs cv2.remap / faiss / torch / NumPy (polar, top-k, positive ranks)",
    "encoder": "encoder backends (torch, ONNX Runtime fp32/fp16/int8) images/s",
    "retrieval": "index backends (exact core, faiss Flat, IVF-PQ) queries/s and recall",
    "engine": "end-to-end Localiser throughput and per-stage timings",
    "scale": "millions of vectors: in-process backends and Milvus Lite vs the exact core (build, memory, QPS, recall)",
    "serve": "s4g-serve under a bounded loopback load: p50/p99 latency and throughput vs max batch size",
    "train": "training-step throughput",
}


def save_chart(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically (parent folders created) and close it; shared by the
    benchmarks."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write_with(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _usage() -> str:
    lines = ["usage: s4g-bench <subcommand> [options]   (s4g-bench <subcommand> --help for its options)", ""]
    lines += [f"  {name:<10} {what}" for name, what in SUBCOMMANDS.items()]
    return "\n".join(lines)


@cli_main("s4g-bench")  # one line + exit 2 for user errors (--debug: traceback)
def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"s4g-bench: unknown subcommand {name!r}; expected one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"s4g_train.bench.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
