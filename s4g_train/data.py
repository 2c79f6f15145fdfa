"""torch Datasets over a :class:`~s4g_engine.datasets.CrossViewSplit`, preprocessed by the engine's data contract.

* :class:`PairedTrainDataset` — one item per training query: the ground view and its positive aerial tile,
  with docs/METHOD.md §5's augmentation: flip BOTH views horizontally (p=0.5); rotate the tile by r·90°
  counter-clockwise (``np.rot90(tile, r)``, r∈{1,2,3}, p=0.75) and circularly roll the panorama by
  **−r·W/4** columns; photometric noise per view (albumentations 2).
* :class:`ViewDataset` — one view for evaluation/mining: the contract's preprocessing only.

Both can also stop before normalisation and ship the uint8 stage images (``output="stage"`` / ``"raw"``,
``ViewDataset(uint8=True)``): :mod:`s4g_train.feed` then finishes the batch on the GPU
(:mod:`s4g_train.device_aug`) with the same values.

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
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from s4g_engine.preprocess import DataContract, ViewSpec, load_resized, polar_source_size
from s4g_engine.tile_centres import camera_shift, fill_colour, grid_step, shift_tile
from s4g_train.config import AugConfig, Config
from s4g_train.model import ModelConfig

log = logging.getLogger(__name__)

__all__ = ["BACKBONE", "OUTPUTS", "EpochBatchSampler", "ImageStore", "PairedTrainDataset", "ViewDataset",
           "build_contract", "checkpoint_contract", "data_contract", "geometric", "load_image", "photometric",
           "polar_source_size", "polar_tensor", "to_tensor"]

#: ``data.interpolation`` value that takes the resize filter from the backbone's timm data config.
from s4g_train.parsers import BACKBONE  # noqa: E402  (one definition, torch-free for the CLI parsers)

#: What a :class:`PairedTrainDataset` item holds: ``float`` = the normalised network inputs (the CPU path);
#: ``stage`` = augmented uint8 stage images (polar views still normalised); ``raw`` = un-augmented uint8
#: stage images plus the geometric draws, for the device to apply (s4g_train/feed.py).
OUTPUTS = ("float", "stage", "raw")


def build_contract(model_cfg: ModelConfig, backbone_data_config: Mapping[str, Any], *,
                   interpolation: str = "bilinear", jpeg_draft: bool = True) -> DataContract:
    """The data contract of a model: sizes and polar from ``model_cfg``; mean/std from the backbone's data
    config (:meth:`S4GModel.data_config`); ``interpolation`` a Pillow filter name or ``"backbone"``."""
    interp = str(backbone_data_config["interpolation"]) if interpolation == BACKBONE else interpolation
    return DataContract.build(ground_size=model_cfg.ground_size, aerial_size=model_cfg.aerial_size,
                              mean=backbone_data_config["mean"], std=backbone_data_config["std"],
                              interpolation=interp, polar_aerial=model_cfg.polar_aerial, jpeg_draft=jpeg_draft,
                              tile_centres=getattr(model_cfg, "tile_centres", 1))


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


def camera_stage_px(split: Any, contract: DataContract) -> np.ndarray:
    """float64 ``(Q, 2)``: per query of ``split``, the shift ``(dr, dc)`` in stage pixels of the aerial view that
    moves its camera to the centre of its positive tile (VIGOR offsets; docs/METHOD.md §9.1)."""
    off = np.asarray(getattr(split, "offsets", np.zeros((0, 0, 2))))
    mpp = getattr(split, "metres_per_pixel", None)
    if off.ndim != 3 or off.shape[0] != len(split.queries) or mpp is None or not np.isfinite(mpp):
        raise ValueError(f"model.tile_centres={contract.aerial.centres} re-centres each positive tile on its "
                         f"camera, which needs the camera offsets and metres per pixel of a VIGOR split; "
                         f"{getattr(split, 'name', 'this dataset')} has none — set model.tile_centres=1")
    stage = contract.aerial.stage_size[0]
    mpp_stage = float(mpp) * tile_side_px(split.references[int(split.positive[0])]) / stage
    return camera_shift(off[:, 0, 0], off[:, 0, 1], mpp_stage)


def tile_side_px(path: str) -> int:
    """The side in pixels of the square tile at ``path`` (read from the header)."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    if w != h:
        raise ValueError(f"{path}: expected a square tile, got {w}×{h} pixels")
    return int(w)


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


def _decode_threads() -> int:
    """Threads that fill an image cache: up to 8, never more than the CPUs this process may use."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, min(8, n))


class ImageStore:
    """Images of one view loaded to the contract's stage size (``spec.load``), optionally all at once into RAM
    (``cache=True``). ``decode="nvjpeg"`` fills the cache through the GPU decoder (s4g_train/gpu_decode.py)."""

    def __init__(self, paths: Sequence[str], spec: ViewSpec, *, cache: bool = False, desc: str = "decode",
                 threads: int | None = None, decode: str = "pil") -> None:
        self.paths = list(paths)
        self.spec = spec
        self.size = spec.stage_size
        self.decode = decode
        self._cache: np.ndarray | None = None
        self._rows: np.ndarray | None = None  # a subset store's rows of the shared cache
        threads = threads or _decode_threads()
        if cache and self.paths and decode == "nvjpeg":
            from s4g_train.gpu_decode import load_stage_batch

            self._cache = load_stage_batch(self.paths, spec, desc=desc)
        elif cache and self.paths:
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

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def subset(self, ids: Sequence[int] | np.ndarray) -> ImageStore:
        """The images ``ids`` of this store, sharing its RAM cache (no decoding, no copy)."""
        ids = np.asarray(ids, np.int64)
        sub = ImageStore.__new__(ImageStore)
        sub.paths, sub.spec, sub.size, sub.decode = [self.paths[i] for i in ids], self.spec, self.size, self.decode
        sub._cache = self._cache
        sub._rows = ids if self._rows is None else self._rows[ids]
        return sub

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Cached images ``start:stop`` as one uint8 ``(n, H, W, 3)`` array (a view when the rows are
        contiguous in the cache)."""
        if self._cache is None:
            raise ValueError("ImageStore.batch needs the RAM cache (cache=True)")
        if self._rows is None:
            return self._cache[start:stop]
        return self._cache[self._rows[start:stop]]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._cache is not None:
            return self._cache[i if self._rows is None else self._rows[i]]
        return self.spec.load(self.paths[i])


class PairedTrainDataset(Dataset):
    """Training pairs: item ``(epoch, i)`` → ``(ground (3,Hg,Wg), aerial (3,Ha,Wa), i)`` for query i.

    ``query_paths[i]`` pairs with ``reference_paths[positive[i]]``; ``contract`` says how each view is
    preprocessed (augmentation acts on the resized uint8 images, before normalisation / polar transform).
    :attr:`output` (:data:`OUTPUTS`, set with :meth:`set_output` before a loader forks its workers) makes
    items stop earlier for the device path: ``(ground, aerial, flip, r, i)`` with uint8 HWC stage images.
    """

    def __init__(self, query_paths: Sequence[str], reference_paths: Sequence[str], positive: np.ndarray, *,
                 contract: DataContract, aug: AugConfig, seed: int, cache: bool = False,
                 decode: str = "pil", camera_px: np.ndarray | None = None) -> None:
        positive = np.asarray(positive, np.int64)
        if positive.shape != (len(query_paths),):
            raise ValueError(f"positive must have shape ({len(query_paths)},), got {positive.shape}")
        if len(positive) and (positive.min() < 0 or positive.max() >= len(reference_paths)):
            raise ValueError(f"positive ids must lie in [0, {len(reference_paths)}), got "
                             f"[{positive.min()}, {positive.max()}]")
        self.positive = positive
        self.contract = contract
        # tiles re-centred on the camera (docs/METHOD.md §9.1): camera_px[i] = the (dr, dc) stage-pixel shift that
        # moves query i's camera to the centre of its positive tile; with contract.aerial.centres = n > 1 it is
        # applied with ± half the gallery grid spacing of jitter, before any other augmentation
        self.centres = contract.aerial.centres
        if self.centres > 1:
            if camera_px is None:
                raise ValueError(f"model.tile_centres={self.centres} re-centres each positive tile on its camera: "
                                 "it needs the dataset's camera offsets (VIGOR split files); this dataset has "
                                 "none — set model.tile_centres=1")
            camera_px = np.asarray(camera_px, np.float64)
            if camera_px.shape != (len(positive), 2) or not np.isfinite(camera_px).all():
                raise ValueError(f"camera_px must be finite ({len(positive)}, 2) pixel shifts, got "
                                 f"{camera_px.shape}")
            self._fill = fill_colour(contract.aerial.mean)
        self.camera_px = camera_px if self.centres > 1 else None
        self.aug = aug
        self.seed = int(seed)
        tile_size = contract.aerial.stage_size
        if tile_size[0] != tile_size[1] and aug.rotate_p > 0:
            raise ValueError(f"aerial_size {list(tile_size)} is not square: cannot rotate the tile by 90°; "
                             "use a square aerial size or set data.aug.rotate_p=0")
        self.grounds = ImageStore(query_paths, contract.ground, cache=cache, desc="decode ground", decode=decode)
        self.aerials = ImageStore(reference_paths, contract.aerial, cache=cache, desc="decode aerial", decode=decode)
        self._photo = [photometric(aug.jitter, aug.dropout_p), photometric(aug.jitter, aug.dropout_p)] \
            if aug.photometric else None
        self.output = "float"

    def set_output(self, output: str) -> None:
        """What items hold (:data:`OUTPUTS`). ``raw`` leaves the geometric augmentation to the device, which is
        only the same augmentation when nothing per-pixel follows it in the loader: no photometric step, no
        polar view."""
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: expected one of {OUTPUTS}")
        if output == "raw" and not self.device_geometric_ok:
            raise ValueError("output='raw' (geometric augmentation on the device) needs data.aug.photometric=false "
                             "and a non-polar aerial view; use output='stage'")
        self.output = output

    @property
    def device_geometric_ok(self) -> bool:
        """Whether the geometric augmentation may run on the device (see :meth:`set_output`)."""
        return self._photo is None and not self.contract.aerial.polar and not self.contract.ground.polar

    def __len__(self) -> int:
        return len(self.positive)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[Any, ...]:
        epoch, i = item if isinstance(item, tuple) else (0, int(item))
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        ground = self.grounds[i]
        aerial = self.aerials[int(self.positive[i])]
        if self.camera_px is not None:
            aerial = self._recentred(aerial, epoch, i)
        flip = bool(rng.random() < self.aug.flip_p)
        r = int(rng.integers(1, 4)) if rng.random() < self.aug.rotate_p else 0
        if self.output == "raw":  # the device flips / rotates / rolls (s4g_train.device_aug.geometric_batch)
            return _u8(ground), _u8(aerial), flip, r, int(i)
        ground, aerial = geometric(ground, aerial, flip, r)
        if self._photo is not None:
            s = rng.integers(0, 2**31 - 1, size=2)
            self._photo[0].set_random_seed(int(s[0]))
            ground = self._photo[0](image=ground)["image"]
            self._photo[1].set_random_seed(int(s[1]))
            aerial = self._photo[1](image=aerial)["image"]
        if self.output == "stage":  # non-polar views leave as uint8; the device normalises them
            return _stage_or_input(self.contract.ground, ground), _stage_or_input(self.contract.aerial, aerial), \
                flip, r, int(i)
        g = torch.from_numpy(self.contract.ground.normalise(ground))
        a = torch.from_numpy(self.contract.aerial.normalise(aerial))
        return g, a, int(i)


    def _recentred(self, tile: np.ndarray, epoch: int, i: int) -> np.ndarray:
        """Query i's positive tile with its camera moved to the centre ± half the gallery grid spacing (own
        random stream: runs without re-centring draw exactly what they drew before)."""
        h = grid_step(self.centres, tile.shape[0]) / 2.0
        j = np.random.default_rng([self.seed, int(epoch), int(i), 0x7C]).uniform(-h, h, size=2)
        dr, dc = np.rint(self.camera_px[i] + j).astype(np.int64)
        return shift_tile(tile, int(dr), int(dc), self._fill)


def _u8(img: np.ndarray) -> torch.Tensor:
    """A uint8 HWC image as a tensor (copied when it is read-only or strided, e.g. a decoded PIL buffer)."""
    return torch.from_numpy(img if img.flags.writeable and img.flags.c_contiguous else np.array(img, order="C"))


def _stage_or_input(spec: ViewSpec, stage: np.ndarray) -> torch.Tensor:
    """uint8 HWC stage image for a view the device normalises; the float32 network input for a polar view."""
    return torch.from_numpy(spec.normalise(stage)) if spec.polar else _u8(stage)


class ViewDataset(Dataset):
    """One view for evaluation or DSS mining: item i → ``(image (3,H,W), i)``, the contract's preprocessing only.

    ``store``: reuse an :class:`ImageStore` (e.g. the training dataset's cached images) when it serves ``spec``.
    ``uint8``: items hold the uint8 HWC stage image instead (the device normalises; non-polar views only).
    ``shifts``: ``(S, 2)`` pixel shifts — the dataset then has ``S`` items per image, image-major (item
    ``b·S + s`` = image ``b`` moved by ``shifts[s]``, :func:`s4g_engine.tile_centres.shift_tile`): the versions
    of a tile about several centres (docs/METHOD.md §9.1). ``image_shifts``: ``(len(paths), 2)`` — one shift per
    image instead (DSS mining sees each tile re-centred on a camera, as training does).
    """

    def __init__(self, paths: Sequence[str], spec: ViewSpec, *, cache: bool = False,
                 store: ImageStore | None = None, uint8: bool = False, shifts: np.ndarray | None = None,
                 image_shifts: np.ndarray | None = None) -> None:
        self.spec = spec
        if uint8 and spec.polar:
            raise ValueError(f"{spec.name} view: a polar view is normalised in the loader; uint8 items are for "
                             "non-polar views")
        self.uint8 = uint8
        if store is not None and store.serves(spec):
            self.store = store
        else:
            self.store = ImageStore(paths, spec, cache=cache, desc="decode eval")
        if shifts is not None and image_shifts is not None:
            raise ValueError("give shifts (versions of every image) or image_shifts (one per image), not both")
        self.shifts = None if shifts is None else np.asarray(shifts, np.int64).reshape(-1, 2)
        self.image_shifts = None if image_shifts is None else np.asarray(image_shifts, np.int64).reshape(-1, 2)
        if self.image_shifts is not None and len(self.image_shifts) != len(self.store):
            raise ValueError(f"image_shifts must hold one (dr, dc) per image ({len(self.store)}), got "
                             f"{len(self.image_shifts)}")
        self._fill = fill_colour(spec.mean)

    @property
    def versions(self) -> int:
        """Items per image (1 without ``shifts``)."""
        return 1 if self.shifts is None else len(self.shifts)

    @property
    def shifted(self) -> bool:
        """Whether items are moved copies of the stored images (no direct batches from the cache then)."""
        return self.shifts is not None or self.image_shifts is not None

    def with_uint8(self, uint8: bool) -> ViewDataset:
        """The same images with the other item type (shares the store)."""
        out = ViewDataset.__new__(ViewDataset)
        out.__dict__.update(self.__dict__)
        out.uint8 = bool(uint8)
        return out

    def __len__(self) -> int:
        return len(self.store) * self.versions

    def stage(self, i: int) -> np.ndarray:
        """The uint8 stage image of item ``i`` (shifted when the dataset has versions)."""
        if self.image_shifts is not None:
            dr, dc = self.image_shifts[int(i)]
            return shift_tile(self.store[int(i)], int(dr), int(dc), self._fill)
        if self.shifts is None:
            return self.store[int(i)]
        b, v = divmod(int(i), len(self.shifts))
        return shift_tile(self.store[b], int(self.shifts[v, 0]), int(self.shifts[v, 1]), self._fill)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.uint8:
            return _u8(self.stage(i)), int(i)
        return torch.from_numpy(self.spec.normalise(self.stage(i))), int(i)


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
