"""Tiles about several centres on the training side (docs/METHOD.md §9.1): the positive tile re-centred on the
labelled camera, evaluation on the best version of each tile, the refined metre error — each against a plain
hand-made or float64 reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from s4g_engine.geo import haversine_m, offset_latlon
from s4g_engine.preprocess import DataContract
from s4g_train.config import AugConfig
from s4g_train.data import PairedTrainDataset, camera_stage_px, tile_side_px
from s4g_train.evaluate import evaluate_split, version_offsets_m, versions_kwargs

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def contract(centres: int, side: int = 32) -> DataContract:
    return DataContract.build(ground_size=(8, 32), aerial_size=(side, side), mean=MEAN, std=STD,
                              tile_centres=centres)


def write_tiles(tmp_path, tiles: list[np.ndarray]) -> list[str]:
    paths = []
    for i, t in enumerate(tiles):
        p = tmp_path / f"t{i}.png"
        Image.fromarray(t).save(p)
        paths.append(str(p))
    return paths


def marker_tile(side: int, r: int, c: int) -> np.ndarray:
    """Grey tile with one white pixel at (r, c)."""
    t = np.full((side, side, 3), 40, np.uint8)
    t[r, c] = 255
    return t


@pytest.mark.parametrize("centres", [2, 3])
def test_training_moves_the_camera_to_the_centre_within_half_a_grid_step(tmp_path, centres):
    side = 32
    # camera 6 px north, 5 px east of the centre (16, 16) of a 32-px tile at 1 m/px → marker there
    north, east = 6.0, 5.0
    r, c = 16 - 6, 16 + 5
    paths = write_tiles(tmp_path, [marker_tile(side, r, c)])
    g = tmp_path / "g.png"
    Image.fromarray(np.zeros((8, 32, 3), np.uint8)).save(g)
    split = SimpleNamespace(queries=[str(g)], references=paths, positive=np.array([0]),
                            offsets=np.array([[[north, east]]]), metres_per_pixel=1.0, name="toy")
    k = contract(centres, side)
    cam = camera_stage_px(split, k)
    np.testing.assert_allclose(cam, [[-6.0, 5.0]])  # dr < 0: the camera is north (up) of the centre
    aug = AugConfig(flip_p=0.0, rotate_p=0.0, photometric=False, dropout_p=0.0)
    ds = PairedTrainDataset(split.queries, paths, split.positive, contract=k, aug=aug, seed=0, camera_px=cam)
    h = 0.5 * side / centres / 2  # half the grid spacing
    seen = set()
    for epoch in range(20):
        _, a, _ = ds[(epoch, 0)]
        img = a.numpy()[0] * STD[0] + MEAN[0]  # back to [0, 1]
        rr, cc = np.unravel_index(np.argmax(img), img.shape)
        # the marker is now at the centre, moved by the jitter only (|jitter| ≤ h, rounded to whole pixels)
        assert abs(rr - 16) <= math.ceil(h) and abs(cc - 16) <= math.ceil(h), (rr, cc)
        seen.add((int(rr), int(cc)))
    assert len(seen) > 3  # the jitter really moves it
    # without re-centring (centres = 1) the tile is untouched: the marker stays where it was
    ds1 = PairedTrainDataset(split.queries, paths, split.positive, contract=contract(1, side), aug=aug, seed=0)
    img = ds1[(0, 0)][1].numpy()[0]
    assert np.unravel_index(np.argmax(img), img.shape) == (r, c)


def test_recentring_needs_offsets(tmp_path):
    paths = write_tiles(tmp_path, [marker_tile(32, 1, 1)])
    aug = AugConfig()
    with pytest.raises(ValueError, match="tile_centres=3"):
        PairedTrainDataset(paths, paths, np.array([0]), contract=contract(3), aug=aug, seed=0)
    cvusa_like = SimpleNamespace(queries=paths, references=paths, positive=np.array([0]),
                                 offsets=np.zeros((0, 0, 2)), metres_per_pixel=None, name="cvusa")
    with pytest.raises(ValueError, match="set model.tile_centres=1"):
        camera_stage_px(cvusa_like, contract(3))


def test_tile_side_is_read_from_the_header_and_must_be_square(tmp_path):
    p = write_tiles(tmp_path, [np.zeros((20, 20, 3), np.uint8)])[0]
    assert tile_side_px(p) == 20
    q = tmp_path / "r.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(q)
    with pytest.raises(ValueError, match="square"):
        tile_side_px(str(q))


def test_grouped_evaluation_against_a_float64_reference(tmp_path):
    """evaluate_split with versions: R@k, hit rate, tile-centre and refined metre errors, from fresh random
    embeddings, against a float64 brute force written here; a hand-built layout of 3 tiles."""
    rng = np.random.default_rng(11)
    N, S, Q, D = 40, 4, 25, 16
    paths = write_tiles(tmp_path, [np.zeros((64, 64, 3), np.uint8)] * 1)  # header read for the tile side
    v = rng.normal(size=(N * S, D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    qe = rng.normal(size=(Q, D)).astype(np.float32)
    qe /= np.linalg.norm(qe, axis=1, keepdims=True)
    ref_gps = np.column_stack([41.0 + rng.uniform(0, 0.01, N), -87.0 + rng.uniform(0, 0.01, N)])
    pos = rng.integers(0, N, Q)
    semi = np.column_stack([(pos + 1) % N, (pos + 2) % N, np.full(Q, -1)])
    off = np.zeros((Q, 4, 2))
    off[:, 0] = rng.uniform(-16, 16, (Q, 2))
    split = SimpleNamespace(name="vigor-same", split="test", queries=[f"q{i}" for i in range(Q)],
                            references=paths * N, positive=pos, semi_positives=semi, offsets=off,
                            reference_gps=ref_gps, query_classes=None, reference_classes=None, metres_per_pixel=1.0)
    k = DataContract.build(ground_size=(8, 32), aerial_size=(32, 128), mean=MEAN, std=STD, polar_aerial=True,
                           tile_centres=2)
    kw = versions_kwargs(k, split)
    assert kw["n_versions"] == 4
    # 2 × 2 grid on the 64-px polar source of a 64 m tile: centres at ±8 px = ±8 m
    np.testing.assert_allclose(version_offsets_m(k, split), [[8, -8], [8, 8], [-8, -8], [-8, 8]])
    res, _, _ = evaluate_split(lambda p: qe, lambda p: v, split, **kw)

    sc = (qe.astype(np.float64) @ v.astype(np.float64).T).reshape(Q, N, S)
    best = sc.max(axis=2)
    ps = best[np.arange(Q), pos]
    rank = (best > ps[:, None]).sum(axis=1)
    assert res["R@1"] == pytest.approx(100 * np.mean(rank < 1))
    assert res["R@5"] == pytest.approx(100 * np.mean(rank < 5))
    masked = best.copy()
    for j in range(2):
        masked[np.arange(Q), semi[:, j]] = -np.inf
    assert res["hit_rate"] == pytest.approx(100 * np.mean((masked > ps[:, None]).sum(axis=1) == 0))
    top = best.argmax(axis=1)
    ver = sc[np.arange(Q), top].argmax(axis=1)
    tlat, tlon = offset_latlon(ref_gps[pos, 0], ref_gps[pos, 1], off[:, 0, 0], off[:, 0, 1])
    err = haversine_m(ref_gps[top, 0], ref_gps[top, 1], tlat, tlon)
    assert res["metre_median_m"] == pytest.approx(float(np.median(err)), rel=1e-9)
    vo = np.array([[8, -8], [8, 8], [-8, -8], [-8, 8]], np.float64)[ver]
    rlat, rlon = offset_latlon(ref_gps[top, 0], ref_gps[top, 1], vo[:, 0], vo[:, 1])
    rerr = haversine_m(rlat, rlon, tlat, tlon)
    assert res["metre_refined_median_m"] == pytest.approx(float(np.median(rerr)), rel=1e-9)
    assert res["metre_refined_acc@10m"] == pytest.approx(100 * np.mean(rerr <= 10))
    assert res["tile_versions"] == 4


def test_refined_position_by_hand():
    """One query, two tiles 64 m apart, 4 versions: the query equals version 3 (south-east) of tile 1, so the
    refined answer is tile 1's centre moved 8 m south and 8 m east; the camera is 6 m south, 9 m east of it."""
    e = np.eye(8, dtype=np.float32)
    v = e[:8]  # tile 0: versions 0..3, tile 1: versions 4..7
    q = e[[7]]
    lat0, lon0 = 48.0, 11.0
    lat1, lon1 = offset_latlon(lat0, lon0, 0.0, 64.0)
    split = SimpleNamespace(name="vigor-same", split="test", queries=["q"], references=["a", "b"],
                            positive=np.array([1]), semi_positives=np.array([[0, -1, -1]]),
                            offsets=np.array([[[-6.0, 9.0], [0, 0], [0, 0], [0, 0]]]),
                            reference_gps=np.array([[lat0, lon0], [float(lat1), float(lon1)]]),
                            query_classes=None, reference_classes=None, metres_per_pixel=1.0)
    offsets = np.array([[8, -8], [8, 8], [-8, -8], [-8, 8]], np.float64)
    res, _, _ = evaluate_split(lambda p: q, lambda p: v, split, n_versions=4, version_offsets=offsets)
    assert res["R@1"] == 100.0 and res["hit_rate"] == 100.0
    # tile-centre error: √(6² + 9²) = 10.817 m; refined: camera (−6, 9) vs version (−8, 8) → √(2² + 1²) = 2.236 m
    assert res["metre_median_m"] == pytest.approx(math.hypot(6, 9), rel=1e-4)
    assert res["metre_refined_median_m"] == pytest.approx(math.hypot(2, 1), rel=1e-3)


def test_dss_mining_embeds_each_tile_recentred_on_its_first_camera(tmp_path):
    """embed_training_pairs with camera_px: tile t is shown moved by the rounded camera shift of the first
    training query whose positive it is (the sample that stands for it in the neighbour lists)."""
    from s4g_engine.tile_centres import fill_colour, shift_tile
    from s4g_train.data import ViewDataset
    from s4g_train.evaluate import embed_training_pairs

    rng = np.random.default_rng(5)
    tiles = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    paths = write_tiles(tmp_path, tiles)
    split = SimpleNamespace(queries=paths[:1] * 4, references=paths, positive=np.array([2, 0, 2, 1]))
    cam = np.array([[3.4, -2.6], [1.0, 1.0], [-5.0, 5.0], [0.2, -7.7]])
    seen = []
    k = contract(3)
    import s4g_train.evaluate as E

    orig = E.embed_dataset

    def fake(model, ds, **kw):
        if isinstance(ds, ViewDataset) and ds.spec.name == "aerial":
            seen.append(np.stack([ds.stage(i) for i in range(len(ds))]))
        return np.zeros((len(ds), 4), np.float32)

    E.embed_dataset = fake
    try:
        _, _, pos = embed_training_pairs(object(), split, k, camera_px=cam, progress=False)
    finally:
        E.embed_dataset = orig
    fill = fill_colour(MEAN)
    # tiles in id order 0, 1, 2; their first queries are 1, 3, 0 → shifts (1, 1), (0, −8), (3, −3)
    want = np.stack([shift_tile(tiles[0], 1, 1, fill), shift_tile(tiles[1], 0, -8, fill),
                     shift_tile(tiles[2], 3, -3, fill)])
    np.testing.assert_array_equal(seen[-1], want)
    np.testing.assert_array_equal(pos, [2, 0, 2, 1])
