"""Logging set-up for every s4g command line: one format, one place.

Library modules only ever do ``log = logging.getLogger(__name__)``; the CLIs call :func:`setup_logging`
once in ``main``. Progress bars (tqdm) follow the level: they are hidden at WARNING and above.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging", "progress_disabled"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"


def setup_logging(verbose: bool | int = False, *, quiet: bool = False, rank: int = 0,
                  plain: bool = False) -> None:
    """Configure the root logger for a command line.

    ``verbose`` → DEBUG, ``quiet`` → WARNING, otherwise INFO; ranks other than 0 of a distributed run log
    WARNING and above only. ``plain`` prints bare messages (for benchmark tables). Calling it again
    reconfigures (``force=True``), so tests that call several ``main`` functions see the right level.
    """
    if rank != 0 or quiet:
        level = logging.WARNING
    else:
        level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s" if plain else LOG_FORMAT, datefmt=DATEFMT,
                        stream=sys.stderr, force=True)


def progress_disabled(logger: logging.Logger | None = None) -> bool:
    """``True`` when progress bars should be hidden (the logger does not show INFO)."""
    return not (logger or logging.getLogger("s4g")).isEnabledFor(logging.INFO)
