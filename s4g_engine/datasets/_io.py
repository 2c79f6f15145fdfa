"""Low-level helpers shared by the dataset readers: split-file reading with line numbers, path checks,
and directory listings (one ``os.scandir`` per image folder instead of one ``stat`` per image).

Design decision (documented in DATASETS.md): the readers always check that the images a split refers to
exist, but they do it by listing every image directory ONCE into a set (``DirIndex``) — for CVACT's test
split that is two ``readdir`` passes over ~92k entries (tens of milliseconds) instead of 185k ``stat``
calls, which on a network file system can take minutes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from s4g_engine.errors import FormatError, MissingFileError, NotAFileError
from s4g_engine.limits import check_bytes

logger = logging.getLogger(__name__)

_EOL = re.compile(r"\r\n|\r|\n")  # the line ends editors count (str.splitlines also splits on \f, \x1c, ...)

__all__ = [
    "DirIndex",
    "MalformedRowError",
    "PathEscapeError",
    "SplitFileNotFoundError",
    "check_relative",
    "check_name",
    "read_rows",
    "read_text_lines",
]


class SplitFileNotFoundError(MissingFileError):
    """A split/label file the dataset layout requires is not where it is expected."""

    def __init__(self, path: Path, dataset: str, hint: str = "") -> None:
        self.path = Path(path)
        msg = f"{dataset}: required split file not found: expected {self.path}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class PathEscapeError(FormatError):
    """A split file names an absolute path or one that climbs out of the dataset root."""


class MalformedRowError(FormatError):
    """A row of a split file does not have the expected form. ``location`` is ``file:line``."""

    def __init__(self, path: Path | str, line: int, row: str, expected: str) -> None:
        self.path = str(path)
        self.line = int(line)
        self.row = row
        self.location = f"{path}:{line}"
        shown = row if len(row) <= 200 else row[:200] + "…"
        super().__init__(f"{self.location}: malformed row {shown!r}; expected {expected}")


def read_text_lines(path: Path, what: str) -> list[str]:
    """A UTF-8 text file (a byte-order mark is dropped) as lines; size-limited; errors name ``file:line``.

    A file that is not UTF-8 (Latin-1, Windows-1252, UTF-16 exports of spreadsheets) raises
    :class:`MalformedRowError` at the first offending line with how to convert it.
    """
    path = Path(path)
    if path.is_dir():
        raise NotAFileError(f"{what} {str(path)!r} is a folder; expected a text file")
    check_bytes(path.stat().st_size, f"{what} {path}", field="max_text_bytes")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise MalformedRowError(path, 1, repr(data[:40]), "UTF-8 text, got UTF-16 (a spreadsheet export?): "
                                "save it as 'CSV UTF-8' or convert it: iconv -f utf-16 -t utf-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = len(_EOL.findall(data[:exc.start].decode("latin-1"))) + 1
        raw = data.splitlines()[line - 1] if len(data.splitlines()) >= line else data
        raise MalformedRowError(path, line, repr(raw[:80]), f"UTF-8 text, got byte 0x{data[exc.start]:02x} that is "
                                "not UTF-8 (Latin-1/Windows-1252?): re-save the file as UTF-8, e.g. "
                                "iconv -f latin1 -t utf-8 IN > OUT") from None
    lines = _EOL.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_rows(path: Path, dataset: str, *, hint: str = "") -> list[tuple[int, str]]:
    """Read a text split file; return ``(line_number, stripped_line)`` for every non-empty line.

    Line numbers are 1-based as editors show them. A missing file raises ``SplitFileNotFoundError`` naming
    the expected path. A UTF-8 byte-order mark is ignored; other encodings raise ``MalformedRowError`` at the
    offending line (:func:`read_text_lines`).
    """
    path = Path(path)
    if not path.exists():
        raise SplitFileNotFoundError(path, dataset, hint)
    return [(i, line.strip()) for i, line in enumerate(read_text_lines(path, f"{dataset} split file"), start=1)
            if line.strip()]


def check_relative(rel: str, where: str) -> str:
    """Validate a dataset-relative path read from a split file; return it normalised with ``/``.

    Absolute paths and paths that climb out of the dataset root (``..``) raise ``PathEscapeError`` — a split
    file must never make us read outside the folder the user pointed us at.
    """
    if not rel:
        raise FormatError(f"{where}: empty path; expected a path relative to the dataset root")
    p = rel.replace("\\", "/")
    if "\0" in p:
        raise PathEscapeError(f"{where}: path {rel!r} contains a NUL byte; expected a relative path")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":") or os.path.isabs(rel):
        raise PathEscapeError(
            f"{where}: absolute path {rel!r} in a split file; paths must be relative to the dataset root "
            "(fix the split file or re-download it)"
        )
    norm = os.path.normpath(p)
    if norm == ".." or norm.startswith("../") or norm.startswith(".." + os.sep):
        raise PathEscapeError(
            f"{where}: path {rel!r} escapes the dataset root ('..'); paths must stay inside the root"
        )
    return norm.replace(os.sep, "/")


def check_name(name: str, where: str) -> str:
    """Validate a bare file name (no directory part) read from a split file."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise PathEscapeError(
            f"{where}: {name!r} is not a bare file name (a name with a directory part or '..' would escape "
            "the image folder)"
        )
    return name


class DirIndex:
    """Lazily lists directories (once each) and answers "does this file exist?" from the listing."""

    def __init__(self) -> None:
        self._listings: dict[str, frozenset[str] | None] = {}

    def listing(self, directory: str | Path) -> frozenset[str] | None:
        """Names of the regular entries in ``directory`` (None if the directory does not exist)."""
        key = os.fspath(directory)
        if key not in self._listings:
            try:
                with os.scandir(key) as it:
                    self._listings[key] = frozenset(e.name for e in it)
            except (FileNotFoundError, NotADirectoryError):
                self._listings[key] = None
        return self._listings[key]

    def exists_many(self, directory: str | Path, names: Iterable[str]) -> list[bool]:
        """Vector of "exists" flags for ``names`` inside one directory (one listing)."""
        lst = self.listing(directory)
        if lst is None:
            return [False for _ in names]
        return [n in lst for n in names]

    def exists_paths(self, root: Path, rels: Sequence[str]) -> list[bool]:
        """Exists flags for root-relative paths; each distinct parent directory is listed once."""
        out: list[bool] = []
        for rel in rels:
            head, _, tail = rel.rpartition("/")
            lst = self.listing(root / head if head else root)
            out.append(lst is not None and tail in lst)
        return out
