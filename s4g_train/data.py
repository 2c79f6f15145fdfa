"""torch Datasets over a :class:`~s4g_engine.datasets.CrossViewSplit`, preprocessed by the engine's data contract.

* :class:`PairedTrainDataset` — one item per training query: the ground view and its positive aerial tile,
  with docs/METHOD.md §5's augmentation: flip BOTH views horizontally (p=0.5); rotate the tile by r·90°
  counter-clockwise (``np.rot90(tile, r)``, r∈{1,2,3}, p=0.75) and circularly roll the panorama by
  **−r·W/4** columns; photometric noise per view (albumentations 2).
* :class:`ViewDataset` — one view for evaluation/mining: the contract's preprocessing only.

Decoding, resizing, the polar transform and normalisation are :mod:`s4g_engine.preprocess` — the one
implementation serving uses too (:class:`~s4g_engine.preprocess.ViewSpec`). Augmentation happens in between,
on the resized uint8 image (``ViewSpec.load`` → augment → ``ViewSpec.normalise``). The contract of a run
(:func:`data_contract`) comes from the training config (input sizes, polar, ``data.interpolation``,
``data.draft``) and the backbone's timm data config (mean, std); ``s4g-export`` writes it into the bundle.

Roll direction, from docs/METHOD.md §9 (panorama column W/2 faces north, 3W/4 east): ``np.rot90(tile, 1)``
turns the tile 90° counter-clockwise, so what lay east is now north. The new panorama's centre column must
show what the old one showed at 3W/4, i.e. ``new[:, j] = old[:, j + W/4]`` = ``np.roll(old, -W/4, axis=1)``.
``tests/test_data.py`` pins this against the core's polar transform.

Randomness is a pure function of ``(seed, epoch, index)``: the batch sampler yields ``(epoch, index)``
items, so augmentation is identical whatever the number of workers, and a resumed run replays it exactly.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from s4g_engine.preprocess import DataContract, ViewSpec, load_resized, polar_source_size
from s4g_train.config import AugConfig, Config
from s4g_train.model import ModelConfig

log = logging.getLogger(__name__)

__all__ = ["BACKBONE", "EpochBatchSampler", "ImageStore", "PairedTrainDataset", "ViewDataset", "build_contract",
           "checkpoint_contract", "data_contract", "geometric", "load_image", "photometric", "polar_source_size",
           "polar_tensor", "to_tensor"]

#: ``data.interpolation`` value that takes the resize filter from the backbone's timm data config.
BACKBONE = "backbone"


def build_contract(model_cfg: ModelConfig, backbone_data_config: Mapping[str, Any], *,
                   interpolation: str = "bilinear", jpeg_draft: bool = True) -> DataContract:
    """The data contract of a model: sizes and polar from ``model_cfg``; mean/std from the backbone's data
    config (:meth:`S4GModel.data_config`); ``interpolation`` a Pillow filter name or ``"backbone"``."""
    interp = str(backbone_data_config["interpolation"]) if interpolation == BACKBONE else interpolation
    return DataContract.build(ground_size=model_cfg.ground_size, aerial_size=model_cfg.aerial_size,
                              mean=backbone_data_config["mean"], std=backbone_data_config["std"],
                              interpolation=interp, polar_aerial=model_cfg.polar_aerial, jpeg_draft=jpeg_draft)


def data_contract(cfg: Config, model: Any) -> DataContract:
    """The contract a training run uses (and exports): ``cfg`` + the backbone of ``model`` (an S4GModel)."""
    return build_contract(cfg.model, model.data_config(), interpolation=cfg.data.interpolation,
                          jpeg_draft=cfg.data.draft)


def checkpoint_contract(model: Any, train_config: Mapping[str, Any] | None, *,
                        interpolation: str | None = None) -> DataContract:
    """The contract of a loaded checkpoint: its training config's ``data`` section (``interpolation``,
    ``draft``; runs from before ``data.interpolation`` existed trained with bilinear), or the defaults for
    checkpoints without one (reference Sample4Geo checkpoints). ``interpolation`` overrides the config's."""
    data = train_config.get("data") if isinstance(train_config, Mapping) else None
    data = data if isinstance(data, Mapping) else {}
    interp = interpolation or data.get("interpolation") or "bilinear"
    return build_contract(model.cfg, model.data_config(), interpolation=interp,
                          jpeg_draft=bool(data.get("draft", True)))


def load_image(path: str, size: tuple[int, int], *, draft: bool = True, interpolation: str = "bilinear") -> np.ndarray:
    """Decode ``path`` and resize to ``size`` = (H, W) → uint8 ``(H, W, 3)`` RGB (the engine's
    :func:`~s4g_engine.preprocess.load_resized`; kept for callers outside a contract, e.g. heatmaps)."""
    return load_resized(path, size, interpolation, draft=draft)


def to_tensor(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, 3) → normalised float32 (3, H, W) through the engine's contract (no resize)."""
    return torch.from_numpy(ViewSpec("view", img.shape[:2], mean, std).normalise(img))  # type: ignore[arg-type]


def polar_tensor(tile: np.ndarray, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 tile (A, A, 3) → normalised polar image (3, H, W) through the engine's contract (the core kernel)."""
    spec = ViewSpec("aerial", size, mean, std, polar=True, polar_source_size=tile.shape[:2])  # type: ignore[arg-type]
    return torch.from_numpy(spec.normalise(tile))


def photometric(jitter: float = 0.15, dropout_p: float = 0.3) -> Any:
    """docs/METHOD.md §5 photometric noise (as the reference's albumentations pipeline), one view, uint8 in/out."""
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


class ImageStore:
    """Images of one view loaded to the contract's stage size (``spec.load``), optionally all at once into RAM
    (``cache=True``)."""

    def __init__(self, paths: Sequence[str], spec: ViewSpec, *, cache: bool = False, desc: str = "decode",
                 threads: int = 2) -> None:
        self.paths = list(paths)
        self.spec = spec
        self.size = spec.stage_size
        self._cache: np.ndarray | None = None
        if cache and self.paths:
            arr = np.empty((len(self.paths), *self.size, 3), np.uint8)

            def one(i: int) -> None:
                arr[i] = spec.load(self.paths[i])

            # PIL releases the GIL while decoding, so a small thread pool overlaps I/O and decode.
            with ThreadPoolExecutor(max(1, threads)) as ex:
                list(tqdm(ex.map(one, range(len(self.paths))), total=len(self.paths), desc=desc,
                          leave=False, mininterval=1.0))
            self._cache = arr

    def serves(self, spec: ViewSpec) -> bool:
        """Whether this store's images are what ``spec.load`` would give (same size, filter, decoding)."""
        return (self.spec.stage_size, self.spec.interpolation, self.spec.jpeg_draft) == \
            (spec.stage_size, spec.interpolation, spec.jpeg_draft)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._cache is not None:
            return self._cache[i]
        return self.spec.load(self.paths[i])


class PairedTrainDataset(Dataset):
    """Training pairs: item ``(epoch, i)`` → ``(ground (3,Hg,Wg), aerial (3,Ha,Wa), i)`` for query i.

    ``query_paths[i]`` pairs with ``reference_paths[positive[i]]``; ``contract`` says how each view is
    preprocessed (augmentation acts on the resized uint8 images, before normalisation / polar transform).
    """

    def __init__(self, query_paths: Sequence[str], reference_paths: Sequence[str], positive: np.ndarray, *,
                 contract: DataContract, aug: AugConfig, seed: int, cache: bool = False) -> None:
        positive = np.asarray(positive, np.int64)
        if positive.shape != (len(query_paths),):
            raise ValueError(f"positive must have shape ({len(query_paths)},), got {positive.shape}")
        if len(positive) and (positive.min() < 0 or positive.max() >= len(reference_paths)):
            raise ValueError(f"positive ids must lie in [0, {len(reference_paths)}), got "
                             f"[{positive.min()}, {positive.max()}]")
        self.positive = positive
        self.contract = contract
        self.aug = aug
        self.seed = int(seed)
        tile_size = contract.aerial.stage_size
        if tile_size[0] != tile_size[1] and aug.rotate_p > 0:
            raise ValueError(f"aerial_size {list(tile_size)} is not square: cannot rotate the tile by 90°; "
                             "use a square aerial size or set data.aug.rotate_p=0")
        self.grounds = ImageStore(query_paths, contract.ground, cache=cache, desc="decode ground")
        self.aerials = ImageStore(reference_paths, contract.aerial, cache=cache, desc="decode aerial")
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
        g = torch.from_numpy(self.contract.ground.normalise(ground))
        a = torch.from_numpy(self.contract.aerial.normalise(aerial))
        return g, a, int(i)


class ViewDataset(Dataset):
    """One view for evaluation or DSS mining: item i → ``(image (3,H,W), i)``, the contract's preprocessing only.

    ``store``: reuse an :class:`ImageStore` (e.g. the training dataset's cached images) when it serves ``spec``.
    """

    def __init__(self, paths: Sequence[str], spec: ViewSpec, *, cache: bool = False,
                 store: ImageStore | None = None) -> None:
        self.spec = spec
        if store is not None and store.serves(spec):
            self.store = store
        else:
            self.store = ImageStore(paths, spec, cache=cache, desc="decode eval")

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.spec.normalise(self.store[int(i)])), int(i)


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
