"""The errors s4g raises for users, in one hierarchy.

Every error a user can cause (bad input, a corrupt or foreign file, a limit exceeded, a missing optional
package) is an :class:`S4GError`. Each also derives from the built-in class a caller would have caught
before (``ValueError``, ``FileNotFoundError``, ``ImportError``, ...), so existing ``except`` clauses keep
working. The command lines turn an ``S4GError`` into one line on stderr and exit code 2 (the traceback only
with ``--debug``). Messages say what was expected, what came, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "S4GError",
    "InputError",
    "FormatError",
    "CorruptFileError",
    "MissingFileError",
    "ModelMismatchError",
    "LimitError",
    "DependencyError",
    "StateError",
    "NotAFileError",
    "FileAccessError",
    "InputTypeError",
    "OutputExistsError",
]


class S4GError(Exception):
    """Base class of every error s4g raises on purpose."""


class InputError(S4GError, ValueError):
    """An argument, option or in-memory input has the wrong type, shape, range or value."""


class FormatError(S4GError, ValueError):
    """A file exists but its content is not in the expected format (wrong fields, types, version)."""


class CorruptFileError(FormatError):
    """A file fails its integrity check (checksum, truncated archive, parts that disagree)."""


class MissingFileError(S4GError, FileNotFoundError):
    """A file or folder the operation needs does not exist."""


class ModelMismatchError(S4GError, ValueError):
    """Two artefacts do not belong together (index built with another model, wrong embedding size)."""


class LimitError(InputError):
    """An input exceeds a configured resource limit (image pixels, file size, k, batch, request size)."""


class DependencyError(S4GError, ImportError):
    """An optional package that this feature needs is not installed; the message names the extra."""


class StateError(S4GError, RuntimeError):
    """The object is not in a state that allows the call (e.g. used after ``close()``)."""


class NotAFileError(InputError, IsADirectoryError):
    """A path names a folder where a file is expected (an image, an index, an output file)."""


class FileAccessError(S4GError, PermissionError):
    """A file or folder exists but this process may not read or write it (permissions, read-only disk)."""



class InputTypeError(InputError, TypeError):
    """An argument has the wrong type altogether (e.g. an int where an image was expected)."""


class OutputExistsError(S4GError, FileExistsError):
    """An output path already holds something that the operation would overwrite or mix with."""
