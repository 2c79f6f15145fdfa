"""Shared pieces of the property-based fuzzers (tests/test_fuzz_*.py, issue 15).

``FUZZ`` / ``FUZZ_FEW``: hypothesis settings (small example counts, ``derandomize=True``: every run the same).
:func:`watched`: fails a block that writes anything, or reads a data file outside the folder it was pointed at
(a Python audit hook on ``open``, renames, removals, ``mkdir``). :func:`expect_ok_or_ours`: the property
"works or raises one of our documented errors". ``JSON``: arbitrary JSON values.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from s4g_engine.errors import S4GError

__all__ = ["FUZZ", "FUZZ_FEW", "JSON", "watched", "expect_ok_or_ours"]

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ_FEW = settings(FUZZ, max_examples=30)

# ----------------------------------------------------------------------------------------- the watcher
_WATCH: dict[str, Any] = {"on": False, "events": []}
_EVENTS = {"open", "os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "os.mkdir", "shutil.rmtree",
           "os.chmod", "os.truncate", "os.symlink", "os.link"}


def _hook(event: str, args: tuple) -> None:
    if _WATCH["on"] and event in _EVENTS:
        _WATCH["events"].append((event, args))


sys.addaudithook(_hook)  # cannot be removed; costs one dict lookup per audited event while not watching
_CODE_ROOTS = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                   str(Path(__file__).resolve().parents[2]))})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextlib.contextmanager
def watched(root: Path) -> Iterator[None]:
    """Fail if the block writes anything, or reads a data file outside ``root``."""
    _WATCH["events"] = []
    _WATCH["on"] = True
    try:
        yield
    finally:
        _WATCH["on"] = False
    root_s = os.path.realpath(root)
    for event, args in _WATCH["events"]:
        if event != "open":
            raise AssertionError(f"the loader modified the file system: {event}{args}")
        path, mode, flags = args
        if isinstance(mode, str) and any(c in mode for c in "wax+") or isinstance(flags, int) and flags & _WRITE_FLAGS:
            raise AssertionError(f"the loader opened {path!r} for writing (mode {mode!r}, flags {flags})")
        if not isinstance(path, (str, bytes, os.PathLike)):
            continue  # a file descriptor
        real = os.path.realpath(os.fsdecode(path))
        if real.startswith(root_s + os.sep) or real == root_s or real == os.devnull:
            continue
        if real.endswith((".py", ".pyc", ".so", ".pth", ".json")) and real.startswith(_CODE_ROOTS):
            continue  # a lazy import (or a package's own data) — code, not user data
        raise AssertionError(f"the loader read {real!r}, outside {root_s!r}")


def expect_ok_or_ours(fn: Any, *, also: tuple[type[BaseException], ...] = ()) -> Any:
    try:
        return fn()
    except S4GError:
        return None
    except also:
        return None


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                    | st.text(max_size=12), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                                c, max_size=3),
                    max_leaves=6)
