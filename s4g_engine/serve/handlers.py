"""Request checks and answers of the service, independent of the serving framework.

Every refusal is an :class:`ApiError` with an HTTP status and a message that says what was expected, what
came and how to fix it. The limits are :mod:`s4g_engine.limits` (request bytes, image bytes, pixels, k) —
one place, shared with the rest of the engine — plus the service's own ``max_images`` / ``max_k``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import CorruptFileError, LimitError, S4GError
from s4g_engine.limits import get_limits

log = logging.getLogger(__name__)

FORMATS = ("json", "geojson")


class ApiError(Exception):
    """An answer other than 200: ``status`` and a JSON body ``{"error": code, "detail": message}``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail}


def check_content_length(headers: Mapping[str, str]) -> int:
    """The declared body size, refused over ``max_request_bytes`` before a byte of the body is read."""
    limit = get_limits().max_request_bytes
    raw = headers.get("content-length")
    if raw is None:
        raise ApiError(411, "length_required", "the request has no Content-Length; expected a multipart/form-data "
                       "body of known size (curl -F 'image=@photo.jpg' sets it)")
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):  # int() alone would also take '-5', '+5' and '1_000'
        raise ApiError(400, "bad_request", f"Content-Length {raw!r} is not a number of bytes; expected a "
                       "non-negative integer")
    n = int(text)
    if n > limit:
        raise ApiError(413, "request_too_large", f"the request body is {n:,} bytes, more than the limit "
                       f"max_request_bytes={limit:,}; send fewer or smaller images per request")
    return n


def parse_k(raw: Any, gallery: int, max_k: int) -> int:
    """``k`` from the query or form: an integer in [1, min(max_k, gallery size)] (default 5)."""
    if raw is None or raw == "":
        return min(5, gallery)
    try:
        k = int(str(raw))
    except ValueError:
        raise ApiError(422, "bad_k", f"k must be an integer, got {raw!r}") from None
    top = min(max_k, gallery, get_limits().max_k)
    if not 1 <= k <= top:
        raise ApiError(422, "bad_k", f"k must be in [1, {top}] (the service's max_k={max_k} and the gallery of "
                       f"{gallery} tiles), got {k}")
    return k


def parse_format(raw: Any) -> str:
    fmt = (raw or "json").lower()
    if fmt not in FORMATS:
        raise ApiError(422, "bad_format", f"format must be one of {FORMATS}, got {raw!r}")
    return fmt


def check_image(data: bytes, name: str) -> None:
    """Bytes and pixel limits and a readable header (:func:`s4g_engine.imagecheck.open_image`), before decoding."""
    from s4g_engine.imagecheck import open_image

    try:
        with open_image(data):
            pass
    except LimitError as exc:
        raise ApiError(413, "image_too_large", f"{name}: {exc}") from None
    except CorruptFileError as exc:
        raise ApiError(415, "not_an_image", f"{name}: {exc}") from None


def check_images(files: Sequence[tuple[str, bytes]], max_images: int) -> None:
    if not files:
        raise ApiError(422, "no_image", "no image in the request; expected one or more multipart file fields "
                       "named 'image' (curl -F 'image=@photo.jpg' http://host:port/v1/localise)")
    if len(files) > max_images:
        raise ApiError(413, "too_many_images", f"{len(files)} images in one request, more than max_images="
                       f"{max_images}; split them over several requests")
    for name, data in files:
        check_image(data, name)


def error_from(exc: BaseException, name: str) -> ApiError:
    """An engine error raised while localising one image, as an answer."""
    if isinstance(exc, LimitError):
        return ApiError(413, "image_too_large", f"{name}: {exc}")
    if isinstance(exc, (CorruptFileError, TypeError)):
        return ApiError(415, "not_an_image", f"{name}: {exc}")
    if isinstance(exc, S4GError):
        return ApiError(422, "bad_input", f"{name}: {exc}")
    log.exception("localise failed for %s", name)
    return ApiError(500, "internal", f"{name}: the service failed ({type(exc).__name__}); see its log")


def candidates(result: Any, i: int, k: int) -> list[dict[str, Any]]:
    """Query ``i``'s first ``k`` candidates (the engine's canonical order) as JSON objects."""
    return [{"rank": c["rank"], "id": c["id"], "lat": c["lat"], "lon": c["lon"], "score": c["score"]}
            for c in result.candidates(i)[:k]]


def answer(names: Sequence[str], cands: Sequence[list[dict[str, Any]]], fmt: str, k: int) -> dict[str, Any]:
    if fmt == "geojson":
        feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [c["lon"], c["lat"]]},
                  "properties": {"query": n, "rank": c["rank"], "score": c["score"], "id": c["id"]}}
                 for n, cs in zip(names, cands, strict=True) for c in cs]
        return {"type": "FeatureCollection", "features": feats}
    return {"k": k, "results": [{"image": n, "candidates": cs} for n, cs in zip(names, cands, strict=True)]}


def gallery_points(index: Any, limit: int) -> dict[str, Any]:
    """Up to ``limit`` gallery coordinates spread over the gallery, and its bounds (the page's map)."""
    n = len(index)
    if hasattr(index, "sample_points"):
        pts, ids = index.sample_points(limit)
    else:
        rows = np.unique(np.linspace(0, n - 1, num=min(limit, n)).astype(np.int64))
        pts, ids = np.asarray(index.coords)[rows], [index.ids[int(r)] for r in rows]
    bounds = [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())] \
        if len(pts) else None
    return {"count": n, "points": [[float(a), float(b)] for a, b in pts], "ids": list(ids), "bounds": bounds}


def thumbnail(tiles: str | None, tile_id: str, px: int) -> bytes:
    """A PNG thumbnail of the tile named ``tile_id`` inside the ``tiles`` folder (never outside it)."""
    from s4g_engine.imagecheck import open_image

    if not tiles:
        raise ApiError(404, "no_tiles", "this service was started without --tiles DIR, so it has no tile images")
    root = Path(tiles).resolve()
    path = (root / tile_id).resolve()
    if root not in path.parents or not path.is_file():
        raise ApiError(404, "unknown_tile", f"no tile image {tile_id!r} in the service's tile folder")
    try:
        with open_image(str(path)) as img:
            img.draft("RGB", (px, px))
            thumb = img.convert("RGB")
            thumb.thumbnail((px, px))
            buf = io.BytesIO()
            thumb.save(buf, format="PNG")
    except S4GError as exc:
        raise ApiError(422, "bad_tile", f"tile {tile_id!r}: {exc}") from None
    return buf.getvalue()
