"""The shell every s4g console script runs in: a user's error is one line on stderr and exit code 2.

>>> @cli_main("s4g-index")
... def main(argv: list[str] | None = None) -> int:
...     ...

An :class:`~s4g_engine.errors.S4GError` (bad input, a corrupt or foreign file, a limit, a missing extra) or
an ``OSError`` (a full disk, a permission, a folder where a file was expected) becomes
``s4g-index: error: <message>`` and exit code 2; Ctrl-C exits with 130; a closed pipe (``| head``) ends
quietly with 141. Anything else is a bug and keeps its traceback. ``--debug`` anywhere before a ``--`` (or
``S4G_DEBUG=1``) shows the traceback of a user error too; the wrapper removes the flag, so the script's own
parser never sees it (:func:`add_debug_flag` only documents it in ``--help``).

Importing this module is cheap (no numpy, no torch): scripts wrap ``main`` at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from s4g_engine.errors import S4GError

__all__ = ["cli_main", "run_cli", "add_debug_flag", "one_line", "USER_ERRORS", "DEBUG_FLAG"]

DEBUG_FLAG = "--debug"
#: What a command line reports as one line (exit code 2) rather than a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (S4GError, OSError)

Main = TypeVar("Main", bound=Callable[..., int | None])


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (line breaks become ``; ``), never empty."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, S4GError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename!s}"
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    args = list(argv)
    end = args.index("--") if "--" in args else len(args)
    debug = DEBUG_FLAG in args[:end]
    if debug:
        args = [a for a in args[:end] if a != DEBUG_FLAG] + args[end:]
    return args, debug or os.environ.get("S4G_DEBUG", "") not in ("", "0")


def run_cli(prog: str, main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` (``sys.argv[1:]`` by default) with the error handling of the module docstring."""
    args, debug = _split_debug(sys.argv[1:] if argv is None else argv)
    try:
        rc = main(args)
    except BrokenPipeError:  # the reader went away (`s4g-... | head`): stop quietly, as the shell's tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        if not isinstance(exc, S4GError):
            print(f"{prog}: (run with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return 2
    return int(rc or 0)


def cli_main(prog: str) -> Callable[[Main], Main]:
    """Decorator form of :func:`run_cli` for a ``main(argv: list[str] | None = None) -> int``."""

    def wrap(fn: Main) -> Main:
        @functools.wraps(fn)
        def main(argv: Sequence[str] | None = None) -> int:
            return run_cli(prog, fn, argv)

        return main  # type: ignore[return-value]

    return wrap


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """List ``--debug`` in ``--help`` (the flag itself is handled by :func:`run_cli`)."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on an error, show the full traceback instead of one line (also S4G_DEBUG=1)")
