"""Console entry points of ``s4g-train``, ``s4g-eval``, ``s4g-ablate`` and ``s4g-export``: thin shells.

``--help`` is answered from the torch-free parsers (:mod:`s4g_train.parsers`) without importing torch or timm;
anything else imports the command's module and runs its ``main``, which turns user errors into one line on
stderr and exit code 2 (:mod:`s4g_engine.console`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from s4g_train import parsers

__all__ = ["train_main", "eval_main", "ablate_main", "export_main"]


def _asks_for_help(argv: Sequence[str]) -> bool:
    end = list(argv).index("--") if "--" in argv else len(argv)
    return any(a in ("-h", "--help") for a in argv[:end])


def _run(parser: Callable[[], argparse.ArgumentParser], module: str, argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if _asks_for_help(args):
        parser().print_help()
        return 0
    return int(importlib.import_module(module).main(args) or 0)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``s4g-train``."""
    return _run(parsers.train_parser, "s4g_train.trainer", argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``s4g-eval``."""
    return _run(parsers.eval_parser, "s4g_train.evaluate", argv)


def ablate_main(argv: Sequence[str] | None = None) -> int:
    """``s4g-ablate``."""
    return _run(parsers.ablate_parser, "s4g_train.ablate", argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``s4g-export``."""
    return _run(parsers.export_parser, "s4g_train.export", argv)
