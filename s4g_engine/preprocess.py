"""Image decoding and preprocessing for the engine, driven by a bundle's ``config.json`` (torch-free).

Every image the engine sees goes through :func:`to_uint8_rgb` (decode + colour normalisation to
uint8 ``(H, W, 3)`` RGB) and then :meth:`ViewSpec.prepare` (resize to the view's input size with the
interpolation used in training, per-channel ``(x/255 − mean)/std``, CHW layout; or, for polar aerial
models, the core's ``polar_transform``). The resize mirrors ``s4g_train.data.load_image`` exactly (PIL,
``reducing_gap=3.0``, JPEG draft decoding) so that embeddings served here equal the ones evaluated in
training.

:class:`BatchPipeline` feeds an encoder: a thread pool decodes and preprocesses batch ``i+1`` while the
encoder runs batch ``i`` (PIL and the core release the GIL, so threads overlap with ONNX Runtime).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

#: What the engine accepts as one image.
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

_RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}


@dataclass(frozen=True)
class ViewSpec:
    """The data contract of one view, as written by ``s4g-export`` into ``config.json``.

    ``input_size`` is the ``(H, W)`` the network sees. For a polar aerial model (``polar=True``) the raw tile
    is first resized to ``polar_source_size`` (square) and then polar-transformed to ``input_size``.
    """

    name: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    polar: bool = False
    polar_source_size: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, name: str, d: dict[str, Any]) -> "ViewSpec":
        """Build from the ``views[name]`` entry of ``config.json`` (validated)."""
        try:
            size = tuple(int(v) for v in d["input_size"])
            mean = tuple(float(v) for v in d["mean"])
            std = tuple(float(v) for v in d["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"config.json view {name!r} lacks a valid input_size/mean/std ({exc}); "
                             "re-export the bundle with s4g-export") from exc
        if len(size) != 2 or min(size) < 1 or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"config.json view {name!r}: expected input_size [H, W], 3 means and 3 positive stds; "
                             f"got {d.get('input_size')}, {d.get('mean')}, {d.get('std')}")
        if d.get("channel_order", "RGB") != "RGB" or d.get("layout", "NCHW") != "NCHW":
            raise ValueError(f"config.json view {name!r}: only channel_order RGB and layout NCHW are supported, got "
                             f"{d.get('channel_order')!r}/{d.get('layout')!r}")
        interp = str(d.get("interpolation", "bilinear"))
        if interp not in _RESAMPLE:
            raise ValueError(f"config.json view {name!r}: interpolation {interp!r} is not one of {sorted(_RESAMPLE)}")
        polar = d.get("polar") or None
        src = None
        if polar:
            src = tuple(int(v) for v in polar.get("source_size", (2 * size[0], 2 * size[0])))
        return cls(name, size, mean, std, interp, bool(polar), src)  # type: ignore[arg-type]

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 ``(h, w, 3)`` RGB → float32 ``(3, H, W)`` network input."""
        if self.polar:
            from s4g_engine import polar_transform  # the compiled core (SPEC §9)

            assert self.polar_source_size is not None
            tile = resize_uint8(rgb, self.polar_source_size, self.interpolation)
            out = polar_transform(tile, self.input_size[0], self.input_size[1], mean=self.mean, std=self.std)
            return np.ascontiguousarray(np.asarray(out, dtype=np.float32).transpose(2, 0, 1))
        img = resize_uint8(rgb, self.input_size, self.interpolation)
        x = img.astype(np.float32)
        # (x/255 − mean)/std as one multiply-add per channel.
        scale = np.asarray([1.0 / (255.0 * s) for s in self.std], dtype=np.float32)
        shift = np.asarray([-m / s for m, s in zip(self.mean, self.std)], dtype=np.float32)
        x *= scale
        x += shift
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_uint8(rgb: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize uint8 ``(h, w, 3)`` to ``size`` = (H, W) exactly as ``s4g_train.data.load_image`` does."""
    h, w = int(size[0]), int(size[1])
    if rgb.shape[0] == h and rgb.shape[1] == w:
        return rgb
    img = Image.fromarray(rgb).resize((w, h), _RESAMPLE[interpolation], reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def _describe(image: Any) -> str:
    if isinstance(image, np.ndarray):
        return f"array shape={image.shape} dtype={image.dtype}"
    if isinstance(image, Image.Image):
        return f"PIL image mode={image.mode} size={image.size}"
    return repr(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8/uint16 ``(H, W)``, ``(H, W, 1|2|3|4)`` → uint8 ``(H, W, 3)``."""
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)  # 16-bit → 8-bit by dropping the low byte (PIL does the same)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (or uint16) image array in HWC RGB order, got dtype {arr.dtype}; "
                         "convert float images with (np.clip(x, 0, 1) * 255).astype(np.uint8)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an image array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (RGB[A]), "
                         f"got shape {arr.shape}; pass a list of images for a batch")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image array has an empty side: shape {arr.shape}")
    c = arr.shape[2]
    if c in (1, 2):  # grey (+ alpha): replicate grey, drop alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif c == 4:  # RGBA: drop alpha (tiles and photos carry no meaningful transparency)
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img)
        if img.mode == "F":
            raise ValueError("float (mode 'F') images are not supported: the engine expects 8- or 16-bit RGB/grey")
        a = np.clip(a, 0, 65535).astype(np.uint16) if a.dtype != np.uint16 else a
        if a.max(initial=0) <= 255 and img.mode == "I":
            a = a.astype(np.uint8)
        return _array_to_rgb(a)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def to_uint8_rgb(image: ImageLike, *, draft_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image (path, PIL image, uint8 array HWC RGB) to uint8 ``(H, W, 3)`` RGB.

    Grey, grey+alpha, RGBA, palette and 16-bit inputs are converted; anything else raises ``ValueError``
    (or ``FileNotFoundError`` for a missing path) naming the image. ``draft_size`` = (H, W) lets JPEG
    files decode at a reduced DCT scale that is still ≥ that size (as training does).
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        try:
            with Image.open(path) as img:
                if draft_size is not None and img.format == "JPEG":
                    img.draft("RGB", (int(draft_size[1]), int(draft_size[0])))
                img.load()  # decode fully here so truncated files fail now, with the path in the message
                img = ImageOps.exif_transpose(img) if img.format == "JPEG" else img
                return _pil_to_rgb(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot decode image {str(path)!r} (corrupt, truncated or not an image): {exc}") from exc
    raise TypeError(f"expected an image path, a PIL image or a uint8 numpy array (H, W, 3), got {_describe(image)}")


def as_image_list(images: Any) -> list[ImageLike]:
    """Normalise the ``images`` argument (one image or a sequence; a 4-D array is a batch) to a list."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (list, tuple)):
        out = list(images)
    else:
        try:
            out = list(images)
        except TypeError:
            raise TypeError(f"expected an image path, a PIL image or a uint8 array (H, W, 3), or a list of them; "
                            f"got {type(images).__name__}") from None
    if not out:
        raise ValueError("empty batch: expected at least one image (path, PIL image or uint8 array)")
    return out


class BatchPipeline:
    """Decodes + preprocesses images on a thread pool, ``prefetch`` batches ahead of the consumer.

    ``for batch, n in pipeline.batches(images, spec, batch_size)`` yields float32 ``(n, 3, H, W)`` arrays in
    input order. The pool is shared (thread-safe): several callers may iterate concurrently.
    """

    def __init__(self, threads: int | None = None, prefetch: int = 2) -> None:
        self.threads = max(1, int(threads or min(8, os.cpu_count() or 1)))
        self.prefetch = max(1, int(prefetch))
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="s4g-decode")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _one(self, image: ImageLike, spec: ViewSpec) -> np.ndarray:
        draft = spec.polar_source_size if spec.polar else spec.input_size
        return spec.prepare(to_uint8_rgb(image, draft_size=draft))

    def _batch(self, images: Sequence[ImageLike], spec: ViewSpec) -> np.ndarray:
        out = np.empty((len(images), 3, spec.input_size[0], spec.input_size[1]), dtype=np.float32)
        for i, im in enumerate(images):
            out[i] = self._one(im, spec)
        return out

    def batches(self, images: Sequence[ImageLike], spec: ViewSpec, batch_size: int) -> Iterator[np.ndarray]:
        """Yield preprocessed batches of up to ``batch_size`` images, in order.

        Each batch is split into ``threads`` chunks processed in parallel; up to ``prefetch`` batches are
        in flight ahead of the consumer so that the encoder is not starved.
        """
        n = len(images)
        bs = max(1, int(batch_size))
        starts = list(range(0, n, bs))
        chunk = max(1, -(-bs // self.threads))

        def submit(s: int) -> list[Future[np.ndarray]]:
            part = images[s:s + bs]
            return [self._pool.submit(self._batch, part[c:c + chunk], spec) for c in range(0, len(part), chunk)]

        pending: list[list[Future[np.ndarray]]] = []
        nxt = 0
        try:
            while nxt < len(starts) and len(pending) < self.prefetch:
                pending.append(submit(starts[nxt]))
                nxt += 1
            while pending:
                futs = pending.pop(0)
                if nxt < len(starts):
                    pending.append(submit(starts[nxt]))
                    nxt += 1
                parts = [f.result() for f in futs]
                yield parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        finally:
            for futs in pending:
                for f in futs:
                    f.cancel()
