"""Checks on an image before it is decoded: what kind of source it is, its size, its declared pixels.

:func:`open_image` opens a path or encoded bytes (what a web service holds) with Pillow, which reads only
the header, and refuses — before a single pixel is decoded — a folder, a device or pipe, a file or buffer
larger than ``max_image_bytes``, and an image whose header declares more than ``max_image_pixels``
(:mod:`s4g_engine.limits`; Pillow's own decompression-bomb error becomes a :class:`LimitError` too).
:func:`check_array_layout` catches channels-first ``(C, H, W)`` arrays that would otherwise be read as a
``C``-pixel-tall image.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import CorruptFileError, FileAccessError, InputError, LimitError, MissingFileError, NotAFileError
from s4g_engine.limits import check_bytes, check_pixels

__all__ = ["open_image", "check_image_path", "check_array_layout", "describe_source", "BYTES_TYPES", "ImageSource",
           "IMAGE_EXTS"]

#: Encoded image bytes (a JPEG/PNG/... file's content).
BYTES_TYPES = (bytes, bytearray, memoryview)
ImageSource = str | os.PathLike | bytes | bytearray | memoryview
#: File name endings taken as images when a command line is given a folder (lower case).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def describe_source(source: Any) -> str:
    """How an image source is named in messages (a path, or the size of a bytes buffer — never its bytes)."""
    if isinstance(source, BYTES_TYPES):
        return f"image bytes ({memoryview(source).nbytes:,} bytes)"
    return f"image {os.fspath(source)!r}" if isinstance(source, (str, os.PathLike)) else type(source).__name__


def check_image_path(path: Path) -> None:
    """Refuse a missing path, a folder, a device or pipe, or a file over ``max_image_bytes`` (one ``stat``)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MissingFileError(f"image {str(path)!r} does not exist; expected an image file") from None
    except PermissionError as exc:
        raise FileAccessError(f"image {str(path)!r}: {exc.strerror}; check its permissions") from None
    except OSError as exc:  # a name too long, a loop of symlinks, ...
        raise InputError(f"image {str(path)!r} cannot be opened ({exc.strerror}); expected an image file") from None
    except ValueError as exc:  # a NUL byte in the name (os.stat refuses it)
        raise InputError(f"image {str(path)!r} cannot be opened ({exc}); expected the path of an image file") from None
    if stat.S_ISDIR(st.st_mode):
        raise NotAFileError(f"image {str(path)!r} is a folder; expected an image file (pass the files inside it)")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"image {str(path)!r} is not a regular file (a device, pipe or socket); expected an image "
                         "file")
    check_bytes(st.st_size, f"image {str(path)!r}")


@contextlib.contextmanager
def open_image(source: ImageSource) -> Iterator[Any]:
    """A PIL image opened lazily (header only) from a path or encoded bytes, after the checks above."""
    from PIL import Image, UnidentifiedImageError

    name = describe_source(source)
    if isinstance(source, BYTES_TYPES):
        data = bytes(source)
        check_bytes(len(data), name)
        if not data:
            raise CorruptFileError("empty image bytes: expected the content of an image file (JPEG, PNG, ...)")
        fp: Any = io.BytesIO(data)
    else:
        fp = Path(source)
        check_image_path(fp)
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise LimitError(f"{name}: {exc}; expected a smaller image (Pillow's own limit, PIL.Image.MAX_IMAGE_PIXELS, "
                         "also applies)") from None
    except PermissionError as exc:
        raise FileAccessError(f"{name}: {exc.strerror}; check its permissions") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptFileError(f"cannot decode {name} (corrupt, truncated or not an image): {exc}") from None
    with img:
        w, h = img.size
        check_pixels(int(w), int(h), name)
        yield img


def check_array_layout(arr: np.ndarray) -> None:
    """Refuse a ``(C, H, W)`` array (C ∈ {1, 3, 4}, H > 4): the engine takes HWC, and such an array would
    otherwise be read as an image only C pixels tall."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[1] > 4:
        c, h, w = arr.shape
        raise InputError(f"image array of shape {arr.shape} looks channels-first (C, H, W) = ({c}, {h}, {w}); "
                         f"expected channels-last (H, W, C): pass np.transpose(x, (1, 2, 0))")
