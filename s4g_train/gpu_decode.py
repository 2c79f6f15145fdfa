"""JPEG decoding on the GPU (``data.decode: nvjpeg``): nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``
and an antialiased resize on the GPU, for filling the RAM image cache of a training run.

It is a switch, not the default, because it is not the data contract: the contract decodes with libjpeg-turbo
at a reduced DCT scale and resizes with Pillow (:mod:`s4g_engine.preprocess`), which is what serving does.
nvJPEG's IDCT and torch's antialiased bilinear/bicubic filter give images that differ by a few grey levels
(``s4g-bench train`` and benchmarks/gpu/train_figures.py report the difference and both decoders' rates).
Training on them is legitimate augmentation-sized noise, but a model trained this way is served with
slightly different inputs than it saw — use it only where CPU decoding cannot keep up (the figures say when).

Files that are not JPEG (PNG tiles of VIGOR, University-1652) and filters torch has no antialiased version
of (nearest, lanczos, box, hamming) go through the contract's CPU decoder, and so do JPEG files with an EXIF
orientation other than "normal" (nvJPEG does not apply it; the contract does).
On a machine without CUDA the same code runs torchvision's CPU decoder (``device="cpu"``, used by the tests).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from s4g_engine.errors import DependencyError
from s4g_engine.preprocess import ViewSpec

log = logging.getLogger(__name__)

__all__ = ["GPU_FILTERS", "decode_resize", "load_stage_batch"]

#: contract interpolation → torch ``interpolate`` mode with ``antialias=True``
GPU_FILTERS = {"bilinear": "bilinear", "bicubic": "bicubic"}
_JPEG_MAGIC = b"\xff\xd8\xff"


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _plain_jpeg(data: bytes) -> bool:
    """A JPEG file without an EXIF rotation (what nvJPEG decodes exactly as the file is meant to be seen)."""
    if data[:3] != _JPEG_MAGIC:
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return im.getexif().get(0x0112, 1) == 1
    except Exception:  # let the contract's decoder report what is wrong with the file
        return False


def decode_resize(data: Sequence[bytes], size: Sequence[int], interpolation: str,
                  device: torch.device | str) -> torch.Tensor:
    """JPEG bytes → uint8 ``(n, H, W, 3)`` RGB on ``device``, resized to ``size`` = (H, W) with the antialiased
    ``interpolation`` filter (bilinear or bicubic)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as exc:  # pragma: no cover - torchvision comes with timm
        raise DependencyError("data.decode=nvjpeg needs torchvision (pip install torchvision)") from exc
    if interpolation not in GPU_FILTERS:
        raise ValueError(f"interpolation {interpolation!r} has no antialiased GPU filter; expected one of "
                         f"{sorted(GPU_FILTERS)}")
    device = torch.device(device)
    h, w = int(size[0]), int(size[1])
    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    imgs = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    if isinstance(imgs, torch.Tensor):
        imgs = [imgs]
    out = torch.empty((len(imgs), h, w, 3), dtype=torch.uint8, device=device)
    for i, im in enumerate(imgs):  # sizes differ per file: one resize each
        x = im.unsqueeze(0).float()
        if tuple(x.shape[2:]) != (h, w):
            x = torch.nn.functional.interpolate(x, size=(h, w), mode=GPU_FILTERS[interpolation], antialias=True,
                                                align_corners=False)
        out[i] = x[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    return out


def load_stage_batch(paths: Sequence[str], spec: ViewSpec, *, desc: str = "decode (nvjpeg)", batch: int = 64,
                     device: torch.device | str | None = None, threads: int = 8) -> np.ndarray:
    """All ``paths`` at ``spec.stage_size`` → uint8 ``(N, H, W, 3)`` host array (the RAM cache), JPEG files
    decoded and resized on ``device`` (default: CUDA when available, else torchvision's CPU decoder)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = len(paths)
    out = np.empty((n, *spec.stage_size, 3), np.uint8)
    if spec.interpolation not in GPU_FILTERS:
        log.warning("data.decode=nvjpeg: interpolation %r has no GPU filter; decoding %s on the CPU",
                    spec.interpolation, desc)
    with ThreadPoolExecutor(max(1, threads)) as ex:
        for s in tqdm(range(0, n, batch), desc=desc, leave=False, mininterval=1.0):
            part = list(paths[s:s + batch])
            data = list(ex.map(_read, part))
            jpeg = [i for i, b in enumerate(data) if _plain_jpeg(b)] if spec.interpolation in GPU_FILTERS else []
            if jpeg:
                dec = decode_resize([data[i] for i in jpeg], spec.stage_size, spec.interpolation, device)
                out[[s + i for i in jpeg]] = dec.cpu().numpy()
            rest = sorted(set(range(len(part))) - set(jpeg))
            for i, img in zip(rest, ex.map(spec.load, [part[i] for i in rest]), strict=True):
                out[s + i] = img
    return out
