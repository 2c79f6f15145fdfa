"""torch Datasets over a :class:`~s4g_engine.datasets.CrossViewSplit`.

* :class:`PairedTrainDataset` — one item per training query: the ground view and its positive aerial tile,
  with SPEC §5's augmentation: flip BOTH views horizontally (p=0.5); rotate the tile by r·90°
  counter-clockwise (``np.rot90(tile, r)``, r∈{1,2,3}, p=0.75) and circularly roll the panorama by
  **−r·W/4** columns; photometric noise per view (albumentations 2).
* :class:`ViewDataset` — one view for evaluation/mining: resize + normalise only.

Roll direction, from SPEC §9 (panorama column W/2 faces north, 3W/4 east): ``np.rot90(tile, 1)`` turns the
tile 90° counter-clockwise, so what lay east is now north. The new panorama's centre column must show what
the old one showed at 3W/4, i.e. ``new[:, j] = old[:, j + W/4]`` = ``np.roll(old, -W/4, axis=1)``.
``tests/test_data.py`` pins this against the core's polar transform.

Randomness is a pure function of ``(seed, epoch, index)``: the batch sampler yields ``(epoch, index)``
items, so augmentation is identical whatever the number of workers, and a resumed run replays it exactly.

Optionally the tile is fed polar-transformed (``ModelConfig.polar_aerial``, SPEC §9) through the core's
``polar_transform``; the raw tile is then first resized to ``2·H_polar`` so one polar row ≈ one tile pixel.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from s4g_train.config import AugConfig

log = logging.getLogger(__name__)

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def load_image(path: str, size: tuple[int, int], *, draft: bool = True, interpolation: str = "bilinear") -> np.ndarray:
    """Decode ``path`` and resize to ``size`` = (H, W); returns uint8 ``(H, W, 3)`` RGB.

    With ``draft`` JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) still ≥ the target size,
    which is several times faster for the paper's 2048×1024 panoramas.
    """
    h, w = int(size[0]), int(size[1])
    try:
        img = Image.open(path)
        if draft and img.format == "JPEG":
            img.draft("RGB", (w, h))
        img = img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path!r} does not exist (was the dataset moved after loading the split?)")
    except OSError as exc:
        raise ValueError(f"cannot decode image {path!r}: {exc}") from exc
    if img.size != (w, h):
        img = img.resize((w, h), _RESAMPLE.get(interpolation, Image.BILINEAR), reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def polar_source_size(cfg_aerial_size: tuple[int, int]) -> tuple[int, int]:
    """Size the raw tile is resized to before the polar transform (radius = polar height in pixels)."""
    a = 2 * int(cfg_aerial_size[0])
    return (a, a)


def photometric(jitter: float = 0.15, dropout_p: float = 0.3) -> Any:
    """SPEC §5 photometric noise (as the reference's albumentations pipeline), one view, uint8 in/out."""
    import albumentations as A

    return A.Compose(
        [
            A.ImageCompression(quality_range=(90, 100), p=0.5),
            A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter, p=0.5),
            A.OneOf([A.AdvancedBlur(p=1.0), A.Sharpen(p=1.0)], p=0.3),
            A.OneOf(
                [
                    A.GridDropout(ratio=0.4, p=1.0),
                    A.CoarseDropout(num_holes_range=(10, 25), hole_height_range=(0.1, 0.2),
                                    hole_width_range=(0.1, 0.2), p=1.0),
                ],
                p=dropout_p,
            ),
        ],
        seed=0,
    )


def geometric(ground: np.ndarray, aerial: np.ndarray, flip: bool, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply the paired geometric augmentation: optional flip of both, then rot90 r ↔ roll −r·W/4.

    ``ground`` (Hg, Wg, C) panorama (centre column north), ``aerial`` (A, A, C) north-up tile.
    """
    if flip:
        ground = ground[:, ::-1]
        aerial = aerial[:, ::-1]
    if r:
        w = ground.shape[1]
        if w % 4:
            raise ValueError(f"panorama width {w} is not divisible by 4: cannot match a 90° tile rotation")
        aerial = np.rot90(aerial, r)
        ground = np.roll(ground, -r * (w // 4), axis=1)
    return np.ascontiguousarray(ground), np.ascontiguousarray(aerial)


def to_tensor(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, 3) → normalised float32 (3, H, W)."""
    x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


def polar_tensor(tile: np.ndarray, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 tile (A, A, 3) → normalised polar image (3, H, W) through the core kernel."""
    from s4g_engine import polar_transform

    out = polar_transform(tile, int(size[0]), int(size[1]),
                          mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous()


class ImageStore:
    """Decodes images at a fixed size, optionally all at once into RAM (``cache=True``)."""

    def __init__(self, paths: Sequence[str], size: tuple[int, int], *, cache: bool = False, draft: bool = True,
                 interpolation: str = "bilinear", desc: str = "decode", threads: int = 2) -> None:
        self.paths = list(paths)
        self.size = (int(size[0]), int(size[1]))
        self.draft = draft
        self.interpolation = interpolation
        self._cache: np.ndarray | None = None
        if cache and self.paths:
            arr = np.empty((len(self.paths), *self.size, 3), np.uint8)

            def one(i: int) -> None:
                arr[i] = load_image(self.paths[i], self.size, draft=draft, interpolation=interpolation)

            # PIL releases the GIL while decoding, so a small thread pool overlaps I/O and decode.
            with ThreadPoolExecutor(max(1, threads)) as ex:
                list(tqdm(ex.map(one, range(len(self.paths))), total=len(self.paths), desc=desc,
                          leave=False, mininterval=1.0))
            self._cache = arr

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._cache is not None:
            return self._cache[i]
        return load_image(self.paths[i], self.size, draft=self.draft, interpolation=self.interpolation)


class PairedTrainDataset(Dataset):
    """Training pairs: item ``(epoch, i)`` → ``(ground (3,Hg,Wg), aerial (3,Ha,Wa), i)`` for query i.

    ``query_paths[i]`` pairs with ``reference_paths[positive[i]]``.
    """

    def __init__(self, query_paths: Sequence[str], reference_paths: Sequence[str], positive: np.ndarray, *,
                 ground_size: tuple[int, int], aerial_size: tuple[int, int], mean: Sequence[float],
                 std: Sequence[float], aug: AugConfig, seed: int, polar_aerial: bool = False,
                 cache: bool = False, draft: bool = True, interpolation: str = "bilinear") -> None:
        positive = np.asarray(positive, np.int64)
        if positive.shape != (len(query_paths),):
            raise ValueError(f"positive must have shape ({len(query_paths)},), got {positive.shape}")
        if len(positive) and (positive.min() < 0 or positive.max() >= len(reference_paths)):
            raise ValueError(f"positive ids must lie in [0, {len(reference_paths)}), got "
                             f"[{positive.min()}, {positive.max()}]")
        self.positive = positive
        self.ground_size = tuple(ground_size)
        self.aerial_size = tuple(aerial_size)
        self.polar = polar_aerial
        self.mean, self.std = list(mean), list(std)
        self.aug = aug
        self.seed = int(seed)
        tile_size = polar_source_size(aerial_size) if polar_aerial else self.aerial_size
        if not polar_aerial and tile_size[0] != tile_size[1] and aug.rotate_p > 0:
            raise ValueError(f"aerial_size {list(tile_size)} is not square: cannot rotate the tile by 90°; "
                             "use a square aerial size or set data.aug.rotate_p=0")
        self.grounds = ImageStore(query_paths, self.ground_size, cache=cache, draft=draft,
                                  interpolation=interpolation, desc="decode ground")
        self.aerials = ImageStore(reference_paths, tile_size, cache=cache, draft=draft,
                                  interpolation=interpolation, desc="decode aerial")
        self._photo = [photometric(aug.jitter, aug.dropout_p), photometric(aug.jitter, aug.dropout_p)] \
            if aug.photometric else None

    def __len__(self) -> int:
        return len(self.positive)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, i = item if isinstance(item, tuple) else (0, int(item))
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        ground = self.grounds[i]
        aerial = self.aerials[int(self.positive[i])]
        flip = bool(rng.random() < self.aug.flip_p)
        r = int(rng.integers(1, 4)) if rng.random() < self.aug.rotate_p else 0
        ground, aerial = geometric(ground, aerial, flip, r)
        if self._photo is not None:
            s = rng.integers(0, 2**31 - 1, size=2)
            self._photo[0].set_random_seed(int(s[0]))
            ground = self._photo[0](image=ground)["image"]
            self._photo[1].set_random_seed(int(s[1]))
            aerial = self._photo[1](image=aerial)["image"]
        g = to_tensor(ground, self.mean, self.std)
        a = polar_tensor(aerial, self.aerial_size, self.mean, self.std) if self.polar \
            else to_tensor(aerial, self.mean, self.std)
        return g, a, int(i)


class ViewDataset(Dataset):
    """One view for evaluation or DSS mining: item i → ``(image (3,H,W), i)``, resize + normalise only."""

    def __init__(self, paths: Sequence[str], size: tuple[int, int], *, mean: Sequence[float], std: Sequence[float],
                 polar: bool = False, cache: bool = False, draft: bool = True, interpolation: str = "bilinear",
                 store: ImageStore | None = None) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.polar = polar
        self.mean, self.std = list(mean), list(std)
        src = polar_source_size(self.size) if polar else self.size
        if store is not None and store.size == src:
            self.store = store
        else:
            self.store = ImageStore(paths, src, cache=cache, draft=draft, interpolation=interpolation,
                                    desc="decode eval")

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.store[int(i)]
        if self.polar:
            return polar_tensor(img, self.size, self.mean, self.std), int(i)
        return to_tensor(img, self.mean, self.std), int(i)


class EpochBatchSampler:
    """Yields each batch of a precomputed epoch as a list of ``(epoch, id)`` items, from ``start`` on."""

    def __init__(self, batches: Sequence[np.ndarray], epoch: int, start: int = 0) -> None:
        self.batches = batches
        self.epoch = int(epoch)
        self.start = int(start)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for b in self.batches[self.start:]:
            yield [(self.epoch, int(i)) for i in b]
