"""Resource limits: how large an input s4g accepts before it spends memory or time on it.

One frozen :class:`Limits` holds every limit with a default that no legitimate input reaches; the limits in
force are process-wide (:func:`get_limits`), read once from ``S4G_LIMIT_<FIELD>`` environment variables
(e.g. ``S4G_LIMIT_MAX_IMAGE_PIXELS=200000000``) and changed with :func:`set_limits` or, for one block,
:func:`limits_override`. The HTTP service reuses the same object for its request limits.

Exceeding a limit raises :class:`~s4g_engine.errors.LimitError` naming the limit, the value that came and
how to raise the limit. Images are checked from their header, before any pixel is decoded
(:mod:`s4g_engine.imagecheck`).

``k`` (candidates per query) is checked, not clamped: ``topk_similarity`` pads ``k > N`` with index −1
and score −inf, which is useful up to ``max_k``; beyond it, or when the ``Q × k`` result would not fit in
``max_topk_results`` entries, the call is refused with a message about ``k`` instead of a ``MemoryError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from s4g_engine.errors import InputError, LimitError

log = logging.getLogger(__name__)

__all__ = ["Limits", "get_limits", "set_limits", "limits_override", "check_k", "check_batch", "check_bytes",
           "check_pixels", "check_elements"]

ENV_PREFIX = "S4G_LIMIT_"


@dataclass(frozen=True)
class Limits:
    """Upper bounds on inputs (all positive integers)."""

    #: decoded pixels of one image (width × height), read from the header before decoding: 8192² ≈ 67 MP
    #: (a 12000² PNG would need ~0.5 GB decoded, several GB while resizing).
    max_image_pixels: int = 8192 * 8192
    #: bytes of one encoded image (a file, or the bytes a web service received).
    max_image_bytes: int = 256 * 1024 * 1024
    #: bytes of a text input read into memory at once (config.json, coords CSV, a preset).
    max_text_bytes: int = 64 * 1024 * 1024
    #: ``k`` beyond the number of references (the result is padded with −1 up to k).
    max_k: int = 10_000
    #: entries of a ``Q × k`` top-k result (2²⁸ ≈ 268M entries ≈ 3.2 GB of scores + indices).
    max_topk_results: int = 1 << 28
    #: images per encoder batch.
    max_batch: int = 4096
    #: elements of one array a kernel is asked to produce (polar maps, inverse polar tiles): 2³⁰ float32 = 4 GiB.
    max_array_elements: int = 1 << 30
    #: bytes of one HTTP request body (the service).
    max_request_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"Limits.{f.name}: expected a positive integer, got {v!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Limits:
        """Defaults overridden by ``S4G_LIMIT_<FIELD>`` variables (e.g. ``S4G_LIMIT_MAX_K=50000``)."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            try:
                kw[f.name] = int(raw.replace("_", ""))
            except ValueError:
                raise InputError(f"environment variable {ENV_PREFIX + f.name.upper()}={raw!r}: expected a "
                                 "positive integer") from None
        return cls(**kw)


_lock = threading.Lock()
_current: Limits | None = None


def get_limits() -> Limits:
    """The limits in force (from the environment on first use, unless :func:`set_limits` was called)."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = Limits.from_env()
    return _current


def set_limits(limits: Limits | None = None, **changes: Any) -> Limits:
    """Replace the process-wide limits (``limits``) or change some fields (``set_limits(max_k=50_000)``).

    Returns the previous limits (to restore them later).
    """
    global _current
    with _lock:
        prev = _current if _current is not None else Limits.from_env()
        base = limits if limits is not None else prev
        _current = dataclasses.replace(base, **changes) if changes else base
    return prev


@contextlib.contextmanager
def limits_override(**changes: Any) -> Iterator[Limits]:
    """Change some limits for the duration of a ``with`` block (process-wide: meant for tests and scripts)."""
    prev = set_limits(**changes)
    try:
        yield get_limits()
    finally:
        set_limits(prev)


def _how(field: str) -> str:
    return f"raise it with set_limits({field}=...) or the environment variable {ENV_PREFIX}{field.upper()}"


def check_k(k: int, n: int, q: int | None = None, *, what: str = "k") -> int:
    """Refuse a ``k`` that would pad beyond ``max_k`` or allocate more than ``max_topk_results`` entries."""
    lim = get_limits()
    if k > n and k > lim.max_k:
        raise LimitError(f"{what}={k} is larger than the {n} references and than the limit max_k={lim.max_k}; "
                         f"expected k <= {n} (results beyond N are only padding: index -1, score -inf); "
                         f"ask for fewer candidates or {_how('max_k')}")
    if q is not None and q * k > lim.max_topk_results:
        raise LimitError(f"{what}={k} for {q} queries asks for {q * k:,} results, more than the limit "
                         f"max_topk_results={lim.max_topk_results:,}; expected Q*k within it: query in smaller "
                         f"batches, ask for fewer candidates, or {_how('max_topk_results')}")
    return k


def check_batch(n: int, *, what: str = "batch_size") -> int:
    """Refuse a batch larger than ``max_batch`` images."""
    lim = get_limits()
    if n > lim.max_batch:
        raise LimitError(f"{what}={n} is larger than the limit max_batch={lim.max_batch}; expected a smaller "
                         f"batch, or {_how('max_batch')}")
    return n


def check_bytes(nbytes: int, source: str, *, field: str = "max_image_bytes") -> int:
    """Refuse an input of ``nbytes`` larger than the byte limit ``field`` (before reading it)."""
    limit = int(getattr(get_limits(), field))
    if nbytes > limit:
        raise LimitError(f"{source}: {nbytes:,} bytes is larger than the limit {field}={limit:,}; expected a "
                         f"smaller input, or {_how(field)}")
    return nbytes


def check_pixels(width: int, height: int, source: str) -> None:
    """Refuse an image whose header declares more than ``max_image_pixels`` pixels (or an empty side)."""
    lim = get_limits()
    if width < 1 or height < 1:
        raise LimitError(f"{source}: the image declares a size of {width}×{height} pixels; expected both sides >= 1")
    if width * height > lim.max_image_pixels:
        raise LimitError(f"{source}: the image declares {width}×{height} = {width * height:,} pixels, more than "
                         f"the limit max_image_pixels={lim.max_image_pixels:,} (checked before decoding); "
                         f"expected a smaller image: downscale it, or {_how('max_image_pixels')}")


def check_elements(n: int, what: str) -> int:
    """Refuse an output array of more than ``max_array_elements`` elements (before it is allocated)."""
    lim = get_limits()
    if n > lim.max_array_elements:
        raise LimitError(f"{what}: {n:,} elements requested, more than the limit max_array_elements="
                         f"{lim.max_array_elements:,}; expected a smaller output size, or {_how('max_array_elements')}")
    return n
