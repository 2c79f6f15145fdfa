"""The last preprocessing steps of a batch, done on the device the model runs on (s4g_train/feed.py).

The loader ships uint8 stage images (``ViewSpec.stage_size``, HWC, pinned memory); here they become the
network input with exactly the values the CPU path computes:

* :func:`geometric_batch` — docs/METHOD.md §5's paired geometric augmentation for a whole batch: flip both
  views (p=0.5), rotate the tile by r·90° counter-clockwise and roll the panorama by −r·W/4 columns. The
  random draws (``flip``, ``r``) come from the dataset, drawn exactly as for the CPU path; the result is
  equal, element for element, to :func:`s4g_train.data.geometric` on each pair (integer data: no rounding).
* :class:`DeviceNormaliser` — ``(x/255 − mean)/std`` per channel through the contract's own 256-entry
  float32 table (``ViewSpec``'s LUT), so the values are bit-identical to ``ViewSpec.normalise`` on any
  device; the output is NCHW, stored channels-last (NHWC memory) or contiguous as asked.

Only non-polar views are normalised here: a polar view's transform runs in the loader (the compiled core's
CPU kernel, which is the data contract; its CUDA twin agrees only to interpolation rounding, docs/METHOD.md
§13.7). The photometric augmentation stays in the loader's workers, on uint8, after the geometric step —
JPEG re-compression (8×8 blocks), blur kernels and dropout holes do not commute with flips, rotations and
rolls, so doing the geometry later would change the augmentation drawn for the same random numbers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from s4g_engine.preprocess import ViewSpec

log = logging.getLogger(__name__)

__all__ = ["DeviceNormaliser", "geometric_batch"]


def _index(mask: np.ndarray, device: torch.device) -> torch.Tensor:
    """Row indices where ``mask`` (host bool) holds, on ``device`` (no device→host sync needed)."""
    return torch.from_numpy(np.flatnonzero(mask)).to(device, non_blocking=True)


def geometric_batch(ground: torch.Tensor, aerial: torch.Tensor, flip: np.ndarray | torch.Tensor,
                    r: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired geometric augmentation of a batch, in place where possible.

    Args:
        ground: uint8 ``(B, Hg, Wg, C)`` panoramas (centre column north), any device.
        aerial: uint8 ``(B, A, A, C)`` north-up tiles, same device.
        flip: bool ``(B,)`` host array — flip both views of pair i horizontally.
        r: int ``(B,)`` host array in {0, 1, 2, 3} — ``np.rot90(tile, r)`` and ``np.roll(pano, −r·Wg/4)``.
    Returns:
        ``(ground, aerial)`` as :func:`s4g_train.data.geometric` gives them pair by pair (flip first, then the
        rotation and roll). The decisions are host arrays so that grouping the batch needs no device sync.
    """
    flip = np.asarray(flip.cpu() if isinstance(flip, torch.Tensor) else flip, dtype=bool)
    r = np.asarray(r.cpu() if isinstance(r, torch.Tensor) else r, dtype=np.int64)
    b, w = ground.shape[0], ground.shape[2]
    if flip.shape != (b,) or r.shape != (b,) or aerial.shape[0] != b:
        raise ValueError(f"geometric_batch: ground {tuple(ground.shape)}, aerial {tuple(aerial.shape)}, flip "
                         f"{flip.shape} and r {r.shape} must share the batch size")
    if r.size and (r.min() < 0 or r.max() > 3):
        raise ValueError(f"geometric_batch: r must lie in {{0, 1, 2, 3}}, got {sorted(set(r.tolist()))}")
    if r.any() and w % 4:
        raise ValueError(f"panorama width {w} is not divisible by 4: cannot match a 90° tile rotation")
    if aerial.shape[1] != aerial.shape[2] and r.any():
        raise ValueError(f"geometric_batch: tiles must be square to rotate, got {tuple(aerial.shape[1:3])}")
    dev = ground.device
    if flip.any():
        i = _index(flip, dev)
        ground[i] = ground[i].flip(2)
        aerial[i] = aerial[i].flip(2)
    for k in (1, 2, 3):
        m = r == k
        if m.any():
            i = _index(m, dev)
            aerial[i] = torch.rot90(aerial[i], k, dims=(1, 2))  # numpy's rot90 convention (axes 0 → 1)
            ground[i] = torch.roll(ground[i], shifts=-k * (w // 4), dims=2)
    return ground, aerial


class DeviceNormaliser:
    """uint8 ``(B, H, W, 3)`` → float32 ``(B, 3, H, W)`` network input of one view, bit-identical to
    ``spec.normalise_batch`` (the same float32 table, gathered per (value, channel))."""

    def __init__(self, spec: ViewSpec, device: torch.device | str) -> None:
        if spec.polar:
            raise ValueError(f"{spec.name} view: a polar view is normalised by the core's polar transform in the "
                             "loader, not on the device")
        self.spec = spec
        self.device = torch.device(device)
        # one flat table: entry 256·c + v is channel c's value for byte v
        self.lut = torch.from_numpy(np.ascontiguousarray(spec._lut, np.float32).reshape(-1)).to(self.device)
        self.offsets = torch.tensor([0, 256, 512], dtype=torch.int32, device=self.device)

    def __call__(self, x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        h, w = self.spec.input_size
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (h, w, 3):
            raise ValueError(f"{self.spec.name} view: expected uint8 (B, {h}, {w}, 3), got {x.dtype} "
                             f"{tuple(x.shape)}")
        idx = x.to(self.device, non_blocking=True).to(torch.int32) + self.offsets  # (B, H, W, 3)
        out = self.lut.index_select(0, idx.reshape(-1)).view(x.shape[0], h, w, 3).permute(0, 3, 1, 2)
        return out if channels_last else out.contiguous()  # the permuted NHWC buffer is channels-last NCHW
