"""The one preprocessing implementation of s4g and its data contract (torch-free).

Training, evaluation, export (INT8 calibration) and serving all turn an image into a network input here, so
that the model is served exactly as it was trained. An image travels:

1. **decode** (:func:`to_uint8_rgb`) → uint8 ``(h, w, 3)`` RGB. JPEG files decode at the smallest DCT scale
   still ≥ the stage size when the contract says ``jpeg_draft``; EXIF orientation is applied; grey, alpha,
   palette and 16-bit images are converted.
2. **resize** (:func:`resize_uint8`) to the view's *stage size* with Pillow, the contract's interpolation and
   ``reducing_gap=3.0``. The stage size is the network input size, or for a polar aerial view the square
   size the raw tile is brought to before the polar transform (:func:`polar_source_size`).
3. training only: augmentation of this uint8 stage image (``s4g_train.data``).
4. **normalise + layout** (:meth:`ViewSpec.normalise`) → float32 ``(3, H, W)`` = ``(x/255 − mean)/std``
   per channel, computed in float32 in exactly that order (a 256-entry table per channel). A polar aerial
   view goes through the compiled core's ``polar_transform`` instead, with the normalisation fused
   (docs/METHOD.md §9).

:class:`ViewSpec` is one view's contract, :class:`DataContract` both views'. ``s4g_train`` builds the contract
from the training config and the backbone's data config; ``s4g-export`` writes it into the bundle's
``config.json`` (``views.<name>``, :meth:`DataContract.to_config`) and :class:`~s4g_engine.Localiser` reads it
back (:meth:`DataContract.from_config`, which also reads bundles written before ``jpeg_draft`` existed).
:class:`BatchPipeline` runs steps 1, 2 and 4 on a thread pool ahead of the encoder.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageOps

from s4g_engine.errors import CorruptFileError, FormatError, InputError, InputTypeError, S4GError
from s4g_engine.imagecheck import BYTES_TYPES, check_array_layout, check_image_path, describe_source, open_image
from s4g_engine.limits import check_bytes, check_pixels
from s4g_engine.tile_centres import check_centres

log = logging.getLogger(__name__)

#: What the engine accepts as one image.
ImageLike = str | os.PathLike | bytes | Image.Image | np.ndarray

#: Resize filters a contract may name (Pillow's).
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
#: Pillow's ``reducing_gap``: images ≥ 3× larger than the target are first box-reduced by an integer factor.
REDUCING_GAP = 3.0
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_DRAFT_FORMATS = ("JPEG", "MPO")  # MPO = the multi-picture JPEG many cameras write
_NOT_JPEG = (".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")  # skip the JPEG sniffing for these


def polar_source_size(input_size: Sequence[int]) -> tuple[int, int]:
    """Square size ``(2H, 2H)`` a raw tile is resized to before the polar transform to ``input_size`` = (H, W):
    the tile's radius then spans ``H`` pixels, one polar row per tile pixel (docs/METHOD.md §9)."""
    a = 2 * int(input_size[0])
    return (a, a)


def _pair(name: str, value: Any, what: str) -> tuple[int, int]:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 2 or min(out) < 1:
        raise FormatError(f"data contract view {name!r}: {what} must be [H, W] with positive sides, got {value!r}")
    return out  # type: ignore[return-value]


def _triple(name: str, value: Any, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(np.isfinite(out)):
        raise FormatError(f"data contract view {name!r}: {what} must be 3 finite per-channel values (R, G, B), "
                          f"got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class ViewSpec:
    """The data contract of one view: how an image becomes the float32 ``(3, H, W)`` input of its graph.

    ``input_size`` is the ``(H, W)`` the network sees. With ``polar`` the raw tile is first resized to the
    square ``polar_source_size`` (default :func:`polar_source_size`) and polar-transformed to ``input_size``.
    ``jpeg_draft``: decode JPEG files at a reduced DCT scale (as the training run did). Only RGB channel
    order and NCHW layout exist; they are recorded so that a reader never has to guess. ``centres`` = n > 1:
    the tile is embedded about an n × n grid of centres and scores the best (:mod:`s4g_engine.tile_centres`).
    """

    name: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    polar: bool = False
    polar_source_size: tuple[int, int] | None = None
    jpeg_draft: bool = True
    channel_order: str = "RGB"
    layout: str = "NCHW"
    centres: int = 1

    def __post_init__(self) -> None:
        n = self.name
        set_ = object.__setattr__  # frozen: normalise the field types once, here
        set_(self, "input_size", _pair(n, self.input_size, "input_size"))
        set_(self, "mean", _triple(n, self.mean, "mean"))
        set_(self, "std", _triple(n, self.std, "std"))
        if min(self.std) <= 0:
            raise FormatError(f"data contract view {n!r}: std must be > 0 per channel, got {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise FormatError(f"data contract view {n!r}: interpolation {self.interpolation!r} is not one of "
                              f"{sorted(INTERPOLATIONS)}")
        if self.channel_order != "RGB" or self.layout != "NCHW":
            raise FormatError(f"data contract view {n!r}: only channel_order 'RGB' and layout 'NCHW' are "
                              f"supported, got {self.channel_order!r}/{self.layout!r}")
        set_(self, "polar", bool(self.polar))
        set_(self, "jpeg_draft", bool(self.jpeg_draft))
        if self.polar:
            src = _pair(n, self.polar_source_size or polar_source_size(self.input_size), "polar source_size")
            if src[0] != src[1]:
                raise FormatError(f"data contract view {n!r}: the polar source size must be square, got {list(src)}")
            set_(self, "polar_source_size", src)
        elif self.polar_source_size is not None:
            raise FormatError(f"data contract view {n!r}: polar_source_size given but polar is off")
        try:
            set_(self, "centres", check_centres(self.centres, f"data contract view {n!r}: centres"))
        except InputError as exc:
            raise FormatError(str(exc)) from None
        if self.centres > 1 and self.stage_size[0] != self.stage_size[1]:
            raise FormatError(f"data contract view {n!r}: centres > 1 (tiles embedded about several centres, "
                              f"docs/METHOD.md §9.1) needs a square tile, got {list(self.stage_size)}")

    @property
    def stage_size(self) -> tuple[int, int]:
        """``(H, W)`` of the uint8 image before normalisation (the polar source size for a polar view)."""
        return self.polar_source_size if self.polar else self.input_size  # type: ignore[return-value]

    @cached_property
    def _lut(self) -> np.ndarray:
        """float32 ``(3, 256)``: ``(v/255 − mean[c])/std[c]``, each operation rounded to float32 in that order
        (bit-identical to normalising the float32 image step by step, and one gather per pixel)."""
        v = np.arange(256, dtype=np.float32) / np.float32(255.0)
        return (v[None, :] - self._mean32[:, None]) / self._std32[:, None]

    @cached_property
    def _mean32(self) -> np.ndarray:
        return np.asarray(self.mean, np.float32)

    @cached_property
    def _std32(self) -> np.ndarray:
        return np.asarray(self.std, np.float32)

    # -- the steps ----------------------------------------------------------------------------------------
    def load(self, image: ImageLike) -> np.ndarray:
        """Decode (path, PIL image or uint8 array) and resize → uint8 ``stage_size + (3,)`` RGB."""
        return load_resized(image, self.stage_size, self.interpolation, draft=self.jpeg_draft)

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 ``(h, w, 3)`` RGB → uint8 at ``stage_size``."""
        return resize_uint8(rgb, self.stage_size, self.interpolation)

    def normalise(self, stage: np.ndarray) -> np.ndarray:
        """uint8 ``stage_size + (3,)`` RGB (after any augmentation) → float32 ``(3, H, W)`` network input."""
        return self.normalise_batch(np.asarray(stage)[None])[0]

    def normalise_batch(self, stages: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 ``(B,) + stage_size + (3,)`` → float32 ``(B, 3, H, W)``, the whole batch in one pass
        (into ``out``, a C-contiguous float32 ``(B, 3, H, W)`` array, when given: no extra copy)."""
        s = np.asarray(stages)
        if s.dtype != np.uint8 or s.ndim != 4 or s.shape[1:] != (*self.stage_size, 3):
            raise InputError(f"{self.name} view: expected uint8 images of shape (B, {self.stage_size[0]}, "
                             f"{self.stage_size[1]}, 3) (resized with ViewSpec.load/resize), got {s.dtype} "
                             f"{s.shape}")
        shape = (s.shape[0], 3, *self.input_size)
        if out is not None and (out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous):
            raise InputError(f"{self.name} view: out must be a C-contiguous float32 array of shape {shape}, got "
                             f"{out.dtype} {out.shape}")
        if self.polar:
            from s4g_engine import polar_transform  # the compiled core (docs/METHOD.md §9)

            res = polar_transform(s, self.input_size[0], self.input_size[1], mean=self._mean32, std=self._std32)
            res = np.asarray(res, dtype=np.float32).transpose(0, 3, 1, 2)
            if out is None:
                return np.ascontiguousarray(res)
            out[...] = res
            return out
        if out is None:
            out = np.empty(shape, np.float32)
        lut = self._lut
        # One gather per (image, channel) plane into a contiguous output plane: np.take is several times
        # slower when `out` spans planes; mode="clip" skips a bounds check that uint8 indices cannot fail.
        for b in range(s.shape[0]):
            for c in range(3):
                np.take(lut[c], s[b, :, :, c], out=out[b, c], mode="clip")
        return out

    def prepare(self, image: ImageLike) -> np.ndarray:
        """Any accepted image → float32 ``(3, H, W)`` network input (load, then normalise)."""
        return self.normalise(self.load(image))

    # -- config.json --------------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The ``views.<name>`` entries of ``config.json`` that make up the contract (JSON types)."""
        polar = None
        if self.polar:
            polar = {"height": self.input_size[0], "width": self.input_size[1],
                     "source_size": list(self.stage_size)}
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "channel_order": self.channel_order, "layout": self.layout,
                "polar": polar, "jpeg_draft": self.jpeg_draft, "centres": self.centres}

    @classmethod
    def from_config(cls, name: str, d: Mapping[str, Any]) -> ViewSpec:
        """Read the ``views[name]`` entry of ``config.json``; missing optional fields take the values every
        bundle had before they were recorded (bilinear, RGB, NCHW, JPEG draft on, source = 2·H)."""
        if not isinstance(d, Mapping):
            raise FormatError(f"config.json view {name!r}: expected an object, got {type(d).__name__}")
        missing = [k for k in ("input_size", "mean", "std") if k not in d]
        if missing:
            raise FormatError(f"config.json view {name!r} lacks {missing}; re-export the bundle with s4g-export")
        polar = d.get("polar") or None
        if polar is not None and not isinstance(polar, Mapping):
            raise FormatError(f"config.json view {name!r}: polar must be an object or null, got {polar!r}")
        spec = cls(name, d["input_size"], d["mean"], d["std"], str(d.get("interpolation", "bilinear")),
                   polar is not None, polar.get("source_size") if polar else None, bool(d.get("jpeg_draft", True)),
                   str(d.get("channel_order", "RGB")), str(d.get("layout", "NCHW")), d.get("centres", 1))
        if polar and [polar.get("height", spec.input_size[0]), polar.get("width", spec.input_size[1])] \
                != list(spec.input_size):
            raise FormatError(f"config.json view {name!r}: polar {polar.get('height')}×{polar.get('width')} "
                              f"differs from input_size {list(spec.input_size)}; re-export the bundle")
        return spec


@dataclass(frozen=True)
class DataContract:
    """Both views' contracts: ``contract["ground"]`` / ``contract.aerial``."""

    ground: ViewSpec
    aerial: ViewSpec
    VIEWS: ClassVar[tuple[str, str]] = ("ground", "aerial")

    def __getitem__(self, view: str) -> ViewSpec:
        if view not in self.VIEWS:
            raise KeyError(f"no view {view!r}; expected one of {self.VIEWS}")
        return self.ground if view == "ground" else self.aerial

    @classmethod
    def build(cls, *, ground_size: Sequence[int], aerial_size: Sequence[int], mean: Sequence[float],
              std: Sequence[float], interpolation: str = "bilinear", polar_aerial: bool = False,
              jpeg_draft: bool = True, tile_centres: int = 1) -> DataContract:
        """The contract of a model: per-view input sizes, the backbone's mean/std, one interpolation;
        ``tile_centres``: the aerial view's grid of tile centres (docs/METHOD.md §9.1)."""
        common = {"mean": mean, "std": std, "interpolation": interpolation, "jpeg_draft": jpeg_draft}
        return cls(ViewSpec("ground", ground_size, **common),  # type: ignore[arg-type]
                   ViewSpec("aerial", aerial_size, polar=polar_aerial, centres=tile_centres,  # type: ignore[arg-type]
                            **common))

    def to_config(self) -> dict[str, dict[str, Any]]:
        """``{"ground": {...}, "aerial": {...}}`` — the contract part of config.json's ``views``."""
        return {v: self[v].to_config() for v in self.VIEWS}

    @classmethod
    def from_config(cls, views: Mapping[str, Any]) -> DataContract:
        """Read config.json's ``views`` (extra per-view keys such as ``files`` are ignored)."""
        if not isinstance(views, Mapping) or any(v not in views for v in cls.VIEWS):
            got = sorted(views) if isinstance(views, Mapping) else type(views).__name__
            raise FormatError(f"config.json: expected 'views' with 'ground' and 'aerial' entries, got {got}")
        return cls(*(ViewSpec.from_config(v, views[v]) for v in cls.VIEWS))


# -- decode and resize ------------------------------------------------------------------------------------
def resize_uint8(rgb: np.ndarray | Image.Image, size: Sequence[int], interpolation: str) -> np.ndarray:
    """uint8 ``(h, w, 3)`` RGB (array or RGB PIL image) → uint8 ``(H, W, 3)`` at ``size`` = (H, W).

    Pillow with ``reducing_gap=3.0`` (fast and close to an exact area filter when shrinking a lot).
    """
    h, w = int(size[0]), int(size[1])
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"interpolation {interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
    img = rgb if isinstance(rgb, Image.Image) else None
    if img is None:
        if rgb.shape[0] == h and rgb.shape[1] == w:
            return rgb
        img = Image.fromarray(rgb)
    if img.size != (w, h):
        img = img.resize((w, h), INTERPOLATIONS[interpolation], reducing_gap=REDUCING_GAP)
    return np.asarray(img, dtype=np.uint8)


def _describe(image: Any) -> str:
    if isinstance(image, np.ndarray):
        return f"array shape={image.shape} dtype={image.dtype}"
    if isinstance(image, Image.Image):
        return f"PIL image mode={image.mode} size={image.size}"
    return repr(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8/uint16 ``(H, W)``, ``(H, W, 1|2|3|4)`` → uint8 ``(H, W, 3)``."""
    check_array_layout(arr)  # a channels-first (C, H, W) array is refused, not read as a C-pixel-tall image
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)  # 16-bit → 8-bit by dropping the low byte (PIL does the same)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise InputError(f"expected a uint8 (or uint16) image array in HWC RGB order, got dtype {arr.dtype}; "
                         "convert float images with (np.clip(x, 0, 1) * 255).astype(np.uint8)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"expected an image array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (RGB[A]), "
                         f"got shape {arr.shape}; pass a list of images for a batch")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"image array has an empty side: shape {arr.shape}")
    c = arr.shape[2]
    if c in (1, 2):  # grey (+ alpha): replicate grey, drop alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif c == 4:  # RGBA: drop alpha (tiles and photos carry no meaningful transparency)
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def _pil_to_rgb(img: Image.Image) -> np.ndarray | Image.Image:
    """A PIL image → an RGB PIL image (8-bit modes) or a uint8 ``(H, W, 3)`` array (16/32-bit modes)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img)
        if img.mode == "F":
            raise InputError("float (mode 'F') images are not supported: the engine expects 8- or 16-bit RGB/grey")
        a = np.clip(a, 0, 65535).astype(np.uint16) if a.dtype != np.uint16 else a
        if a.max(initial=0) <= 255 and img.mode == "I":
            a = a.astype(np.uint8)
        return _array_to_rgb(a)
    return img if img.mode == "RGB" else img.convert("RGB")


@functools.cache
def _simplejpeg() -> Any:
    """The ``simplejpeg`` module (libjpeg-turbo, part of the ``engine`` extra), or None when not installed."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _exif_orientation(data: bytes) -> int | None:
    """EXIF orientation (1–8) of JPEG bytes as Pillow reads it, 1 when there is none; None when this simple
    reader cannot be sure (XMP orientation, unusual tag type, malformed segment): then Pillow decodes."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata
            return 1
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        body = data[i + 4:i + 2 + seg]
        if marker == 0xE1 and body.startswith(b"Exif\0\0"):
            return _tiff_orientation(body[6:])
        if b"tiff:Orientation" in body:  # Pillow also honours an XMP orientation
            return None
        i += 2 + seg
    return None


def _tiff_orientation(t: bytes) -> int | None:
    if t[:4] not in (b"II*\0", b"MM\0*"):
        return None
    order = "little" if t[:2] == b"II" else "big"
    ifd = int.from_bytes(t[4:8], order)
    if ifd + 2 > len(t):
        return None
    for e in range(int.from_bytes(t[ifd:ifd + 2], order)):
        entry = t[ifd + 2 + 12 * e:ifd + 14 + 12 * e]
        if len(entry) < 12:
            return None
        if int.from_bytes(entry[:2], order) == _EXIF_ORIENTATION:
            if int.from_bytes(entry[2:4], order) != 3 or int.from_bytes(entry[4:8], order) != 1:
                return None  # not one SHORT
            return int.from_bytes(entry[8:10], order)
    return 1


#: EXIF orientation → the numpy equivalent of ImageOps.exif_transpose (pure permutations: bit-exact).
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _fast_jpeg(path: Path | bytes, draft_size: Sequence[int] | None) -> np.ndarray | None:
    """Decode a baseline/progressive YCbCr or grey JPEG with libjpeg-turbo (simplejpeg) at the same DCT scale
    as Pillow's ``draft`` and apply the EXIF orientation — bit-identical to the Pillow path (same libjpeg
    algorithms: accurate integer IDCT, fancy upsampling) at about half its cost per image. Returns None
    whenever Pillow should decide instead (no simplejpeg, not JPEG, CMYK, unusual metadata, any error —
    Pillow then raises or recovers exactly as it always did)."""
    sj = _simplejpeg()
    if sj is None:
        return None
    if isinstance(path, BYTES_TYPES):  # encoded bytes: their size limit first (Pillow's path reports it)
        data = bytes(path)
        try:
            check_bytes(len(data), "image bytes")
        except S4GError:
            return None
    else:
        data = path.read_bytes()
    if data[:3] != b"\xff\xd8\xff":
        return None
    orientation = _exif_orientation(data)
    if orientation is None:
        return None
    try:
        h, w, colorspace, _ = sj.decode_jpeg_header(data)
        check_pixels(w, h, describe_source(path))  # too large: Pillow's path below refuses it with the LimitError
        if colorspace not in ("YCbCr", "Gray"):
            return None
        s = 1
        if draft_size is not None:  # Pillow's JpegImageFile.draft: the largest of 8, 4, 2 that keeps ≥ the size
            th, tw = (int(draft_size[1]), int(draft_size[0])) if orientation in _TRANSPOSED else \
                (int(draft_size[0]), int(draft_size[1]))
            scale = min(w // max(1, tw), h // max(1, th))
            s = next((f for f in (8, 4, 2) if scale >= f), 1)
        want = (-(-h // s), -(-w // s))
        kw = {"min_height": want[0], "min_width": want[1], "min_factor": s} if s > 1 else {}
        if sj.decode_jpeg_header(data, **kw)[:2] != want:
            return None
        rgb = sj.decode_jpeg(data, colorspace="RGB" if colorspace == "YCbCr" else "GRAY", **kw)
    except (ValueError, OSError):
        return None
    if rgb.shape[:2] != want:
        return None
    if rgb.ndim == 2 or rgb.shape[2] == 1:
        rgb = np.repeat(rgb.reshape(*want, 1), 3, axis=2)
    if orientation in _ORIENT:
        rgb = np.ascontiguousarray(_ORIENT[orientation](rgb))
    return rgb


def _open(path: Path, draft_size: Sequence[int] | None, size: Sequence[int] | None, interpolation: str) -> np.ndarray:
    """Decode an image file (JPEG draft to ≥ ``draft_size`` = (H, W), EXIF orientation applied), resized to
    ``size`` unless None. Everything happens while the file is open: Pillow invalidates a closed image.
    JPEG files go through :func:`_fast_jpeg` first (identical pixels, faster)."""
    encoded = isinstance(path, BYTES_TYPES)  # the bytes of an image file, as a web service holds them
    if not encoded:
        check_image_path(path)  # missing, a folder, a device, too many bytes (pixels: open_image, _fast_jpeg)
    fast = _fast_jpeg(path, draft_size) if encoded or path.suffix.lower() not in _NOT_JPEG else None
    if fast is not None:
        return fast if size is None else resize_uint8(fast, size, interpolation)
    try:
        with open_image(path) as img:
            if draft_size is not None and img.format in _DRAFT_FORMATS:
                h, w = int(draft_size[0]), int(draft_size[1])
                turned = img.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED
                img.draft("RGB", (h, w) if turned else (w, h))  # the size as stored, before rotation
            img.load()  # decode fully here so truncated files fail now, with the path in the message
            oriented = ImageOps.exif_transpose(img) if img.getexif().get(_EXIF_ORIENTATION, 1) != 1 else img
            rgb = _pil_to_rgb(oriented)
            return np.asarray(rgb, dtype=np.uint8) if size is None else resize_uint8(rgb, size, interpolation)
    except S4GError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptFileError(f"cannot decode {describe_source(path)} (corrupt, truncated or not an image): "
                               f"{exc}") from exc


def _decode(image: ImageLike, draft_size: Sequence[int] | None = None, size: Sequence[int] | None = None,
            interpolation: str = "bilinear") -> np.ndarray:
    """Any accepted image → uint8 ``(h, w, 3)`` RGB, resized to ``size`` = (H, W) unless None."""
    if isinstance(image, (str, os.PathLike)):
        return _open(Path(image), draft_size, size, interpolation)
    if isinstance(image, BYTES_TYPES):
        return _open(image, draft_size, size, interpolation)
    if isinstance(image, np.ndarray):
        rgb: np.ndarray | Image.Image = _array_to_rgb(image)
    elif isinstance(image, Image.Image):
        rgb = _pil_to_rgb(image)
    else:
        raise InputTypeError(f"expected an image path, encoded image bytes, a PIL image or a uint8 numpy array "
                             f"(H, W, 3), got "
                             f"{_describe(image)}")
    return np.asarray(rgb, dtype=np.uint8) if size is None else resize_uint8(rgb, size, interpolation)


def load_resized(image: ImageLike, size: Sequence[int], interpolation: str = "bilinear", *,
                 draft: bool = True) -> np.ndarray:
    """Decode any accepted image and resize it → uint8 ``(H, W, 3)`` at ``size`` = (H, W); ``draft``: JPEG
    files decode at the smallest DCT scale still ≥ ``size`` (several times faster for large photos)."""
    return _decode(image, size if draft else None, size, interpolation)


def to_uint8_rgb(image: ImageLike, *, draft_size: Sequence[int] | None = None) -> np.ndarray:
    """Decode one image (path, PIL image, uint8 array HWC RGB) to uint8 ``(H, W, 3)`` RGB.

    Grey, grey+alpha, RGBA, palette and 16-bit inputs are converted; anything else raises ``ValueError``
    (or ``FileNotFoundError`` for a missing path) naming the image. ``draft_size`` = (H, W) lets JPEG
    files decode at a reduced DCT scale that is still ≥ that size.
    """
    return _decode(image, draft_size)


def as_image_list(images: Any) -> list[ImageLike]:
    """Normalise the ``images`` argument (one image or a sequence; a 4-D array is a batch) to a list."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, (str, os.PathLike, Image.Image, *BYTES_TYPES)):
        return [images]
    if isinstance(images, (list, tuple)):
        out = list(images)
    else:
        try:
            out = list(images)
        except TypeError:
            raise InputTypeError(f"expected an image path, image bytes, a PIL image or a uint8 array (H, W, 3), "
                                 f"or a list of them; "
                                 f"got {type(images).__name__}") from None
    if not out:
        raise InputError("empty batch: expected at least one image (path, PIL image or uint8 array)")
    return out


class BatchPipeline:
    """Decodes + preprocesses images on a thread pool, ``prefetch`` batches ahead of the consumer.

    ``for batch in pipeline.batches(images, spec, batch_size)`` yields float32 ``(n, 3, H, W)`` arrays in
    input order. The pool is shared (thread-safe): several callers may iterate concurrently. Each batch is
    split into ``threads`` chunks that decode into, and normalise into, their slice of the one batch array.
    An image that fails raises its error when its batch is consumed, in input order (the first failing
    image of the batch), exactly as :meth:`batches_inline` would.
    """

    def __init__(self, threads: int | None = None, prefetch: int = 2) -> None:
        self.threads = max(1, int(threads or min(8, os.cpu_count() or 1)))
        self.prefetch = max(1, int(prefetch))
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="s4g-decode")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _fill(images: Sequence[ImageLike], spec: ViewSpec, out: np.ndarray) -> tuple[float, float]:
        """Decode + resize ``images`` and normalise them into ``out``; returns (decode, preprocess) seconds."""
        t0 = time.perf_counter()
        stages = np.empty((len(images), *spec.stage_size, 3), dtype=np.uint8)
        for i, im in enumerate(images):
            stages[i] = spec.load(im)
        t1 = time.perf_counter()
        spec.normalise_batch(stages, out=out)
        return t1 - t0, time.perf_counter() - t1

    @staticmethod
    def _add(stats: dict[str, float] | None, times: Sequence[tuple[float, float]]) -> None:
        if stats is not None:
            stats["decode_work_s"] = stats.get("decode_work_s", 0.0) + sum(t[0] for t in times)
            stats["preprocess_work_s"] = stats.get("preprocess_work_s", 0.0) + sum(t[1] for t in times)

    def batches_inline(self, images: Sequence[ImageLike], spec: ViewSpec, batch_size: int,
                       stats: dict[str, float] | None = None) -> Iterator[np.ndarray]:
        """The same batches as :meth:`batches`, prepared on the calling thread when asked for (no overlap)."""
        bs = max(1, int(batch_size))
        for s in range(0, len(images), bs):
            part = images[s:s + bs]
            out = np.empty((len(part), 3, *spec.input_size), np.float32)
            self._add(stats, [self._fill(part, spec, out)])
            yield out

    def batches(self, images: Sequence[ImageLike], spec: ViewSpec, batch_size: int,
                stats: dict[str, float] | None = None) -> Iterator[np.ndarray]:
        """Yield preprocessed batches of up to ``batch_size`` images, in order.

        Each batch is split into ``threads`` chunks processed in parallel; up to ``prefetch`` batches are
        in flight ahead of the consumer so that the encoder is not starved. ``stats`` (optional) receives
        the pool's decode and preprocess seconds (``decode_work_s``, ``preprocess_work_s``).
        """
        n = len(images)
        bs = max(1, int(batch_size))
        starts = list(range(0, n, bs))
        chunk = max(1, -(-bs // self.threads))

        def submit(s: int) -> tuple[np.ndarray, list[Future[tuple[float, float]]]]:
            part = images[s:s + bs]
            out = np.empty((len(part), 3, *spec.input_size), np.float32)
            return out, [self._pool.submit(self._fill, part[c:c + chunk], spec, out[c:c + chunk])
                         for c in range(0, len(part), chunk)]

        pending: list[tuple[np.ndarray, list[Future[tuple[float, float]]]]] = []
        nxt = 0
        try:
            while nxt < len(starts) and len(pending) < self.prefetch:
                pending.append(submit(starts[nxt]))
                nxt += 1
            while pending:
                out, futs = pending.pop(0)
                if nxt < len(starts):
                    pending.append(submit(starts[nxt]))
                    nxt += 1
                self._add(stats, [f.result() for f in futs])
                yield out
        finally:
            for _, futs in pending:
                for f in futs:
                    f.cancel()
