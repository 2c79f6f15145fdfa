"""Training-side datasets: paired geometric augmentation (flip both; rot90 of the tile ↔ roll of the
panorama, direction pinned against the docs/METHOD.md §9 polar transform), determinism, eval datasets, JPEG draft.

Training/serving identity of the preprocessing is tested in test_data_contract.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s4g_engine.preprocess import DataContract, to_uint8_rgb
from s4g_train.config import AugConfig
from s4g_train.data import EpochBatchSampler, PairedTrainDataset, ViewDataset, geometric, load_image, to_tensor


def polar_ref(tile: np.ndarray, h: int, w: int) -> np.ndarray:
    """docs/METHOD.md §9 written out plainly (float64, bilinear, zero outside): the convention under test."""
    a = tile.shape[0]
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    r = (a / 2) * (h - 1 - i) / h
    row = a / 2 + r * np.cos(2 * np.pi * j / w)
    col = a / 2 - r * np.sin(2 * np.pi * j / w)
    r0, c0 = np.floor(row).astype(int), np.floor(col).astype(int)
    fr, fc = row - r0, col - c0
    out = np.zeros((h, w, tile.shape[2]))
    t = tile.astype(np.float64)
    for dr, dc, wt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < a) & (cc >= 0) & (cc < a)
        out += np.where(ok[..., None], t[np.clip(rr, 0, a - 1), np.clip(cc, 0, a - 1)], 0.0) * wt[..., None]
    return out


def smooth_tile(a: int, seed: int) -> np.ndarray:
    """A smooth random tile (low frequencies only), so a sub-pixel shift barely changes the samples."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, a), np.linspace(0, 1, a), indexing="ij")
    img = np.zeros((a, a, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(2 * np.pi * (fy * y + fx * x) + ph)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)


def markers() -> tuple[np.ndarray, np.ndarray]:
    """Tile with a red patch EAST of the centre; panorama with red at column 3W/4 (east, docs/METHOD.md §9)."""
    tile = np.zeros((32, 32, 3), np.uint8)
    tile[14:18, 26:30, 0] = 255
    pano = np.zeros((8, 64, 3), np.uint8)
    pano[:, 46:50, 0] = 255  # 3W/4 = 48
    return pano, tile


def test_rot90_moves_east_to_north_and_roll_follows() -> None:
    pano, tile = markers()
    for r, (tile_rc, pano_col) in {1: ((3, 15), 32), 2: ((15, 3), 16), 3: ((28, 15), 0)}.items():
        g, a = geometric(pano, tile, flip=False, r=r)
        rows, cols = np.nonzero(a[..., 0])
        assert abs(rows.mean() - tile_rc[0]) < 2 and abs(cols.mean() - tile_rc[1]) < 2, r
        c = np.nonzero(g[0, :, 0])[0]
        centre = np.angle(np.exp(2j * np.pi * c / 64).mean()) * 64 / (2 * np.pi)  # circular mean column
        assert abs((centre - pano_col + 32) % 64 - 32) < 1.0, (r, c)


def test_flip_flips_both_views() -> None:
    pano, tile = markers()
    g, a = geometric(pano, tile, flip=True, r=0)
    assert np.array_equal(a, tile[:, ::-1]) and np.array_equal(g, pano[:, ::-1])
    assert np.nonzero(a[..., 0])[1].mean() < 16  # east patch now west
    assert abs(np.nonzero(g[0, :, 0])[0].mean() - 16) < 2  # and in the panorama at W/4 (west)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_rot90_roll_pair_commutes_with_the_polar_transform(r: int) -> None:
    """polar(rot90(tile, r)) == roll(polar(tile), −r·W/4): the tile and panorama stay aligned."""
    tile = smooth_tile(96, seed=r)
    h, w = 24, 96
    p0 = polar_ref(tile, h, w)
    _, rot = geometric(np.zeros((4, w, 3), np.uint8), tile, flip=False, r=r)
    p1 = polar_ref(rot, h, w)
    rolled = np.roll(p0, -r * w // 4, axis=1)
    wrong = np.roll(p0, +r * w // 4, axis=1)
    err, err_wrong = np.abs(p1 - rolled)[:-2].mean(), np.abs(p1 - wrong)[:-2].mean()
    # rot90 turns the pixel grid about (A−1)/2, the polar transform samples about A/2: ≤ 1 px apart, so a
    # small residual remains on this smooth image (values 0–255); the opposite roll direction is far off.
    assert err < 10.0, err
    if r != 2:
        assert err_wrong > 5 * err


def test_core_polar_transform_agrees_with_the_augmentation_direction() -> None:
    from s4g_engine import polar_transform

    tile = smooth_tile(96, seed=5)
    h, w = 24, 96
    p0 = polar_transform(tile, h, w)
    assert np.abs(p0 - polar_ref(tile, h, w)).max() < 1.0  # same convention as the test's reference
    g, rot = geometric(p0.astype(np.float32), tile, flip=False, r=1)
    assert np.abs(polar_transform(rot, h, w) - g)[:-2].mean() < 10.0
    g, fl = geometric(p0.astype(np.float32), tile, flip=True, r=0)
    # flipping the tile maps column j → W−j; flipping the panorama maps j → W−1−j: one column apart
    # (plus the same ≤ 1 px grid-centre offset as above)
    errs = [np.abs(polar_transform(fl, h, w) - np.roll(g, s, axis=1)).mean() for s in (-1, 0, 1, 2)]
    assert int(np.argmin(errs)) == 2 and errs[2] < 10.0, errs


def make_pairs(tmp: Path, n: int = 6) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    q, r = [], []
    for i in range(n):
        gp, ap = tmp / f"g{i}.jpg", tmp / f"a{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 160, 3), dtype=np.uint8)).save(gp, quality=95)
        Image.fromarray(smooth_tile(48, i)).save(ap)
        q.append(str(gp))
        r.append(str(ap))
    return q, r


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def contract(ground=(16, 64), aerial=(32, 32), polar=False, **kw) -> DataContract:
    return DataContract.build(ground_size=ground, aerial_size=aerial, mean=MEAN, std=STD, polar_aerial=polar, **kw)


@pytest.mark.parametrize("polar", [False, True])
def test_paired_dataset_shapes_and_determinism(tmp_path: Path, polar: bool) -> None:
    if polar:
        pytest.importorskip("s4g_engine._core", reason="the compiled core provides polar_transform")
    q, r = make_pairs(tmp_path)
    pos = np.array([5, 4, 3, 2, 1, 0])
    kw = dict(contract=contract(aerial=(16, 64) if polar else (32, 32), polar=polar), aug=AugConfig(), seed=3)
    ds = PairedTrainDataset(q, r, pos, **kw)
    ds_cached = PairedTrainDataset(q, r, pos, cache=True, **kw)
    g, a, i = ds[(2, 1)]
    assert g.shape == (3, 16, 64) and a.shape == ((3, 16, 64) if polar else (3, 32, 32)) and i == 1
    g2, a2, _ = ds_cached[(2, 1)]
    assert torch.equal(g, g2) and torch.equal(a, a2)  # same item → same augmentation, cache or not
    diff = [not torch.equal(ds[(e, 1)][0], g) for e in range(3, 9)]
    assert any(diff)  # other epochs draw other augmentations
    plain = PairedTrainDataset(q, r, pos, **{**kw, "aug": AugConfig(flip_p=0, rotate_p=0, photometric=False)})
    g0, a0, _ = plain[(0, 4)]
    assert torch.allclose(g0, to_tensor(load_image(q[4], (16, 64)), MEAN, STD))
    if not polar:
        assert torch.allclose(a0, to_tensor(load_image(r[1], (32, 32)), MEAN, STD))


def test_paired_dataset_rejects_bad_input(tmp_path: Path) -> None:
    q, r = make_pairs(tmp_path, 3)
    kw = dict(contract=contract(), aug=AugConfig(), seed=0)
    with pytest.raises(ValueError, match="positive ids"):
        PairedTrainDataset(q, r, np.array([0, 1, 7]), **kw)
    with pytest.raises(ValueError, match="shape"):
        PairedTrainDataset(q, r, np.array([0, 1]), **kw)
    with pytest.raises(ValueError, match="not square"):
        PairedTrainDataset(q, r, np.array([0, 1, 2]), **{**kw, "contract": contract(aerial=(32, 48))})
    with pytest.raises(FileNotFoundError):
        load_image(str(tmp_path / "missing.jpg"), (8, 8))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(str(tmp_path / "bad.jpg"), (8, 8))


def test_view_dataset_is_resize_and_normalise_only(tmp_path: Path) -> None:
    q, _ = make_pairs(tmp_path, 2)
    ds = ViewDataset(q, contract().ground)
    x, i = ds[1]
    # float32, operation by operation (what torchvision-style x/255, −mean, /std gives): bit for bit
    ref = (load_image(q[1], (16, 64)).astype(np.float32) / np.float32(255) - np.array(MEAN, np.float32)) \
        / np.array(STD, np.float32)
    assert i == 1 and x.dtype == torch.float32 and np.array_equal(x.permute(1, 2, 0).numpy(), ref)


def test_jpeg_draft_decodes_at_a_reduced_scale_and_stays_close(tmp_path: Path) -> None:
    y, x = np.meshgrid(np.linspace(0, 1, 1024), np.linspace(0, 1, 2048), indexing="ij")
    img = (np.stack([np.sin(6 * x + 3 * y), np.cos(4 * x), np.sin(5 * y)], -1) * 120 + 128).astype(np.uint8)
    p = tmp_path / "pano.jpg"
    Image.fromarray(img).save(p, quality=95)
    full = load_image(str(p), (64, 256), draft=False)
    fast = load_image(str(p), (64, 256), draft=True)
    assert fast.shape == full.shape == (64, 256, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4
    # the DCT scale: 1/8 is the smallest that keeps both sides ≥ the target (2048/8 = 256 ≥ 256, 1024/8 ≥ 64)
    assert to_uint8_rgb(p, draft_size=(64, 256)).shape == (128, 256, 3)
    assert to_uint8_rgb(p, draft_size=(300, 256)).shape == (512, 1024, 3)  # 1024/4 < 300 → scale 1/2
    assert to_uint8_rgb(p).shape == (1024, 2048, 3)


def test_epoch_batch_sampler_yields_epoch_tagged_items_from_a_position() -> None:
    batches = [np.array([3, 1]), np.array([0, 2]), np.array([5, 4])]
    s = EpochBatchSampler(batches, epoch=7, start=1)
    assert len(s) == 2 and list(s) == [[(7, 0), (7, 2)], [(7, 5), (7, 4)]]
