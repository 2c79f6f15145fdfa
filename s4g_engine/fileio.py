"""Atomic file writes: the one implementation every writer of s4g uses.

A file is written to a temporary file in the same folder, flushed and ``fsync``-ed, given ordinary
permissions (``0o666`` minus the process umask — ``mkstemp`` alone would leave ``0o600``), then
``os.replace``-d over the target, and the folder is ``fsync``-ed so the rename itself survives a power
loss. A crash or ``kill -9`` at any point leaves either the old file or the new one, never a mix; the
temporary file is removed when the writer raises.

Atomic rename does not make a *snapshot* consistent: callers that serialise mutable objects must take
their lock (or copy) before calling in here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from s4g_engine.errors import FileAccessError, NotAFileError

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_with", "fsync_dir",
           "check_writable", "publish_folder"]


def _umask() -> int:
    # os.umask can only be read by setting it; do it once per process (umask is process-wide anyway).
    global _UMASK
    if _UMASK is None:
        cur = os.umask(0o022)
        os.umask(cur)
        _UMASK = cur
    return _UMASK


_UMASK: int | None = None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """``fsync`` a folder so a rename inside it is durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None, durable: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it atomically becomes ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise). The parent folder is
    created when missing. If ``path`` is an existing folder, :class:`IsADirectoryError` is raised *before*
    anything is written, so callers fail early instead of after expensive work.

    ``durable=False`` skips the two ``fsync`` calls: the write is still atomic against a crash or
    ``kill -9`` of this process (the rename happens only after the data is written), but not against a power
    loss. Use it only for bulk output that is itself published atomically (a dataset written into a temporary
    folder that is renamed into place once complete) — ``fsync`` costs ~10 ms per file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    p = Path(path)
    if p.is_dir():
        raise NotAFileError(f"cannot write {str(p)!r}: it is a folder; expected a file name (e.g. one inside it)")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        kwargs: dict[str, Any] = {}
        if mode == "w":
            kwargs = {"encoding": encoding or "utf-8", "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(p.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open` for ``durable``)."""
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                      durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8, ``\\n`` line ends; see :func:`atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding, newline="\n", durable=durable) as f:
        f.write(text)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], *,
                      durable: bool = True) -> None:
    """Call ``write(binary_file)`` on a temporary file that atomically becomes ``path`` when it returns.

    For writers that want a file object: ``np.savez``, ``torch.save``, ``Image.save``, ``faiss`` buffers.
    """
    with atomic_open(path, "wb", durable=durable) as f:
        write(f)


def check_writable(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Fail early, before expensive work, if ``path`` cannot become a file: it is a folder, a parent is a
    file, or the nearest existing parent folder is not writable. Creates nothing."""
    p = Path(path)
    if p.is_dir():
        raise NotAFileError(f"{what} {str(p)!r} is a folder; expected a file name (e.g. {str(p / 'out')!r})")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotAFileError(f"{what} {str(p)!r}: {str(parent)!r} is a file, not a folder; expected a path inside "
                            "a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FileAccessError(f"{what} {str(p)!r}: the folder {str(parent)!r} is not writable by this user; "
                              "choose another location or fix its permissions")
    return p


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_folder(tmp: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Make the finished folder ``tmp`` (a sibling of ``out``) become ``out`` in one step.

    A missing ``out`` is a plain rename; an existing one is swapped atomically where the OS can
    (``renameat2(RENAME_EXCHANGE)``), so a crash or ``kill -9`` at any moment leaves either the complete old
    folder or the complete new one at ``out``; the old content is then deleted. Elsewhere the old folder is
    renamed aside first (a window of a few microseconds without ``out``). Permissions become
    ``0o777 & ~umask`` (``mkdtemp`` creates 0700).
    """
    import shutil

    tmp_p, out_p = Path(tmp), Path(out)
    os.chmod(tmp_p, 0o777 & ~_umask())
    if not out_p.exists():
        os.rename(tmp_p, out_p)
    elif _exchange(tmp_p, out_p):
        shutil.rmtree(tmp_p, ignore_errors=True)  # tmp now holds the old content
    else:
        old = out_p.with_name(f".{out_p.name}.old-{os.getpid()}")
        os.rename(out_p, old)
        os.rename(tmp_p, out_p)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out_p.parent)
