"""Tiles embedded about several centres in the torch-free engine (docs/METHOD.md §10): the grouped search against a
plain float64 NumPy reference, the shift geometry against hand-computed examples, an engine round trip with a
tiny ONNX bundle whose aerial view has centres > 1 (index, save, load, localise, refused mismatches), and old
bundles / index files without the new fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.onnx_bundle import AERIAL, make_onnx_bundle, relist
from s4g_engine.errors import FormatError, InputError, ModelMismatchError, StateError
from s4g_engine.geo import offset_latlon
from s4g_engine.index import ReferenceIndex
from s4g_engine.tile_centres import (
    camera_shift,
    centre_grid,
    fill_colour,
    grouped_ranks,
    grouped_topk,
    shift_tile,
    shift_to_offset,
)

# --------------------------------------------------------------------------------- float64 reference


def _ref_tile_scores(q: np.ndarray, v: np.ndarray, S: int, reduce: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(Q, N)`` tile scores (max over versions, or a deliberately wrong reduction) and the best
    version (first maximum = lowest version on ties)."""
    s = (q.astype(np.float64) @ v.astype(np.float64).T).reshape(q.shape[0], -1, S)
    if reduce == "mean":
        return s.mean(axis=2), np.zeros(s.shape[:2], np.int64)
    if reduce == "first":
        return s[:, :, 0], np.zeros(s.shape[:2], np.int64)
    return s.max(axis=2), s.argmax(axis=2)


def _ref_topk(q, v, S, k, reduce="max", ties="low"):
    """Best k tiles by (score desc, tile id asc) — or, to show a tie test can fail, tile id desc."""
    best, ver = _ref_tile_scores(q, v, S, reduce)
    out_t = []
    for i in range(q.shape[0]):
        ids = np.arange(best.shape[1])
        key2 = ids if ties == "low" else -ids
        out_t.append(np.lexsort((key2, -best[i]))[:k])
    t = np.asarray(out_t, np.int64)
    return np.take_along_axis(best, t, 1), t, np.take_along_axis(ver, t, 1)


def _ref_ranks(q, v, S, pos, semi):
    best, ver = _ref_tile_scores(q, v, S)
    rows = np.arange(q.shape[0])
    above = best > best[rows, pos][:, None]
    rank = above.sum(axis=1)
    for j in range(semi.shape[1]):
        ok = semi[:, j] >= 0
        above[rows[ok], semi[ok, j]] = False
    top1 = best.argmax(axis=1)
    return rank, ~above.any(axis=1), top1, ver[rows, top1]


def _grid_values(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Small multiples of 1/4: every inner product is exact in float32, so scores tie exactly where the float64
    reference ties (ties are then frequent, which is what the tie rules need)."""
    return (rng.integers(-3, 4, (n, d)) / 4.0).astype(np.float32)


CASES = [  # (seed, tiles N, versions S, k)
    (0, 40, 4, 5), (1, 25, 9, 25), (2, 60, 1, 7), (3, 12, 4, 12), (4, 33, 16, 3)]


@pytest.mark.parametrize("seed,N,S,k", CASES)
def test_grouped_topk_matches_float64_reference(seed, N, S, k):
    rng = np.random.default_rng(1000 + seed)
    d = 16
    q, v = _grid_values(rng, 23, d), _grid_values(rng, N * S, d)
    sc, tiles, ver = grouped_topk(q, v, S, k)
    ref_s, ref_t, ref_v = _ref_topk(q, v, S, k)
    np.testing.assert_array_equal(tiles, ref_t)
    np.testing.assert_array_equal(ver, ref_v)
    np.testing.assert_array_equal(sc, ref_s.astype(np.float32))  # exact: the values are exact in float32
    if S > 1:  # the comparison can fail: a wrong reduction over versions gives another answer on these inputs
        for wrong in ("mean", "first"):
            assert not np.array_equal(_ref_topk(q, v, S, k, reduce=wrong)[1], ref_t), wrong


def test_grouped_topk_ties_between_versions_and_tiles():
    """Duplicated versions (a tie inside a tile → the lower version) and duplicated tiles (a tie between tiles →
    the lower tile id)."""
    rng = np.random.default_rng(7)
    S, d = 4, 16
    base = _grid_values(rng, 30 * 2, d).reshape(30, 2, d)
    v = np.concatenate([base, base], axis=1)  # versions 2, 3 repeat versions 0, 1
    v[10], v[20] = v[3], v[3]  # tiles 3, 10, 20 are identical
    v = v.reshape(30 * S, d)
    q = _grid_values(rng, 17, d)
    q[:5] = v[3 * S + 1]  # these queries' best tile is 3 (or its copies), best version 1 (or its copy 3)
    for k in (1, 6, 30):
        sc, tiles, ver = grouped_topk(q, v, S, k)
        ref_s, ref_t, ref_v = _ref_topk(q, v, S, k)
        np.testing.assert_array_equal(tiles, ref_t)
        np.testing.assert_array_equal(ver, ref_v)
        np.testing.assert_array_equal(sc, ref_s.astype(np.float32))
        assert (ver < 2).all()  # of two equal versions, the lower one
    _, tiles, _ = grouped_topk(q[:5], v, S, 3)
    assert (tiles == [3, 10, 20]).all()
    # the tie test can fail: the opposite tie rule orders the copies the other way
    assert not np.array_equal(_ref_topk(q[:5], v, S, 3, ties="high")[1], tiles)


@pytest.mark.parametrize("seed,N,S", [(0, 40, 4), (1, 25, 9), (2, 50, 1), (3, 20, 16)])
def test_grouped_ranks_matches_float64_reference(seed, N, S):
    rng = np.random.default_rng(2000 + seed)
    d, Q = 16, 37
    q, v = _grid_values(rng, Q, d), _grid_values(rng, N * S, d)
    pos = rng.integers(0, N, Q)
    semi = np.where(rng.random((Q, 3)) < 0.5, rng.integers(0, N, (Q, 3)), -1)
    out = grouped_ranks(q, v, S, pos, semi, block=8)  # several query blocks
    rank, hit, top1, top1_v = _ref_ranks(q, v, S, pos, semi)
    np.testing.assert_array_equal(out["rank"], rank)
    np.testing.assert_array_equal(out["hit"], hit)
    np.testing.assert_array_equal(out["top1"], top1)
    np.testing.assert_array_equal(out["top1_version"], top1_v)
    assert 0 < rank.mean() < N - 1  # informative inputs: neither all first nor all last
    if S > 1:  # a wrong reduction changes the ranks on these inputs
        wrong = _ref_tile_scores(q, v, S, "first")[0]
        assert not np.array_equal((wrong > wrong[np.arange(Q), pos][:, None]).sum(1), rank)


# ------------------------------------------------------------------------------------------- geometry


def test_centre_grid_by_hand():
    np.testing.assert_array_equal(centre_grid(1, 16), [[0, 0]])
    # n = 2 on 16 px: the central half (8 px) in 2 cells of 4 px, centres at ±2
    np.testing.assert_array_equal(centre_grid(2, 16), [[-2, -2], [-2, 2], [2, -2], [2, 2]])
    # n = 3 on 16 px: cells of 8/3 px, centres at −8/3, 0, 8/3 → rounded −3, 0, 3; row-major from the north-west
    want = [[r, c] for r in (-3, 0, 3) for c in (-3, 0, 3)]
    np.testing.assert_array_equal(centre_grid(3, 16), want)
    np.testing.assert_array_equal(centre_grid(2, 640), [[-80, -80], [-80, 80], [80, -80], [80, 80]])


def test_shift_tile_by_hand():
    t = np.arange(25, dtype=np.uint8).reshape(5, 5, 1)  # value = 5·row + col; centre (2, 2) = 12
    fill = [200]
    south = shift_tile(t, 1, 0, fill)  # dr > 0: the new centre is the pixel south of the old one
    assert south[2, 2, 0] == t[3, 2, 0] == 17
    np.testing.assert_array_equal(south[:4, :, 0], t[1:, :, 0])
    assert (south[4, :, 0] == 200).all()  # the row shifted in from outside the tile
    west = shift_tile(t, 0, -2, fill)  # dc < 0: the new centre lies west
    assert west[2, 2, 0] == t[2, 0, 0] == 10
    np.testing.assert_array_equal(west[:, 2:, 0], t[:, :3, 0])
    assert (west[:, :2, 0] == 200).all()
    np.testing.assert_array_equal(shift_tile(t, 0, 0, fill), t)
    assert (shift_tile(t, 5, 0, fill) == 200).all()  # shifted entirely out
    # pixels ↔ metres: a shift south (dr > 0) is a negative north offset; camera_shift inverts it
    np.testing.assert_allclose(shift_to_offset([2, -3], 0.5), [-1.0, -1.5])
    np.testing.assert_allclose(camera_shift(-1.0, -1.5, 0.5), [2.0, -3.0])
    np.testing.assert_array_equal(fill_colour([0.485, 0.456, 0.406]), [124, 116, 104])


# ---------------------------------------------------------------------------------------- the engine


def _bundle(root, centres: int | None):
    """The tiny ONNX bundle with the ground graph = the aerial graph (both 16 × 16, same weights), so that a
    ground image equal to a tile version embeds exactly like it; ``centres`` None = an old config without it."""
    cfg = make_onnx_bundle(root, ground=AERIAL, aerial=AERIAL)
    (root / "ground.onnx").write_bytes((root / "aerial.onnx").read_bytes())
    if centres is not None:
        cfg["views"]["aerial"]["centres"] = centres
    return relist(root, cfg)


def _open(root):
    from s4g_engine import Localiser

    return Localiser.from_dir(root, device="cpu", backend="onnxruntime", precision="fp32", batch_size=5,
                              decode_threads=2)


def _weights(root) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(root / "aerial.onnx"))
    return numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "W")).astype(np.float64)


def _ref_embed(stages: list[np.ndarray], W: np.ndarray, cfg_view: dict) -> np.ndarray:
    """float64 reference of the tiny graph: normalise, NCHW flatten, linear, L2 normalise."""
    x = np.stack([((s / 255.0 - np.array(cfg_view["mean"])) / np.array(cfg_view["std"])).transpose(2, 0, 1)
                  for s in stages]).reshape(len(stages), -1)
    e = x @ W
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("centres")
    rng = np.random.default_rng(5)
    tiles = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(7)]
    coords = np.c_[rng.uniform(40, 41, 7), rng.uniform(7, 8, 7)]
    return root, tiles, coords


@pytest.mark.parametrize("n", [2, 3])
def test_embed_aerial_versions_matches_float64_reference(world, n):
    root, tiles, _ = world
    cfg = _bundle(root / f"b{n}", n)
    S = n * n
    with _open(root / f"b{n}") as loc:
        assert loc.aerial_versions == S and loc.version_shifts.shape == (S, 2)
        emb = loc.embed_aerial_versions(tiles)  # 7 tiles × S versions in batches of 5 rows: versions span batches
        assert emb.shape == (len(tiles) * S, 16) and emb.dtype == np.float32
        assert loc.embed_aerial(tiles).shape == (len(tiles), 16)  # one row per tile, as before
    fill = fill_colour(cfg["views"]["aerial"]["mean"])
    stages = [shift_tile(t, dr, dc, fill) for t in tiles for dr, dc in centre_grid(n, 16)]  # tile-major
    ref = _ref_embed(stages, _weights(root / f"b{n}"), cfg["views"]["aerial"])
    np.testing.assert_allclose(emb, ref, atol=2e-5)
    assert np.abs(ref[0] - ref[1]).max() > 1e-2  # the versions differ, so a mixed-up order would fail


def test_engine_round_trip_with_centres(world, tmp_path):
    root, tiles, coords = world
    _bundle(tmp_path / "b2", 2)
    ids = [f"tile-{i}" for i in range(len(tiles))]
    with _open(tmp_path / "b2") as loc:
        assert loc.index_references(tiles, coords, ids, tile_side_m=64.0) == len(tiles)
        assert loc.index.versions == 4 and loc.index.snapshot()["arrays"]["embeddings"].shape == (len(tiles) * 4, 16)
        shifts = loc.version_shifts
        fill = fill_colour(loc.specs["aerial"].mean)
        # query i = tile t(i) seen about centre s(i): the ground graph is the aerial one, so it matches exactly
        want_t, want_s = np.array([4, 1, 6, 1]), np.array([3, 1, 2, 0])
        queries = [shift_tile(tiles[t], *shifts[s], fill) for t, s in zip(want_t, want_s)]
        res = loc.localise(queries, k=3)
        loc.save_index(tmp_path / "g.npz")
    np.testing.assert_array_equal(res.indices[:, 0], want_t)
    np.testing.assert_array_equal(res.versions[:, 0], want_s)
    np.testing.assert_array_equal(res.shifts[:, 0], shifts[want_s])
    np.testing.assert_allclose(res.scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(res.coords[:, 0], coords[want_t])  # the tile centre, as with centres = 1
    # the refined position: shift (stage px) × 64 m / 16 px → (north, east) → offset from the tile centre
    dr, dc = shifts[want_s, 0] * 4.0, shifts[want_s, 1] * 4.0
    lat, lon = offset_latlon(coords[want_t, 0], coords[want_t, 1], -dr, dc)
    np.testing.assert_allclose(res.refined[:, 0], np.c_[lat, lon], rtol=0, atol=1e-12)
    c = res.candidates(0)[0]
    assert c["id"] == "tile-4" and c["version"] == 3 and c["shift"] == [2, 2]
    assert c["refined_lat"] < c["lat"] and c["refined_lon"] > c["lon"]  # (+2, +2) px: south-east of the centre
    assert json.dumps(res.to_dict(), allow_nan=False) and res.to_geojson()["features"][0]["properties"]["version"] == 3

    with _open(tmp_path / "b2") as again:  # save → load → the same answer
        assert again.load_index(tmp_path / "g.npz") == len(tiles)
        assert again.index.versions == 4 and again.index.tile_side_m == 64.0
        res2 = again.localise(queries, k=3)
    for name in ("scores", "indices", "versions", "shifts", "refined", "coords"):
        np.testing.assert_array_equal(getattr(res2, name), getattr(res, name))
    assert res2.ids == res.ids


def test_version_mismatch_is_refused(world, tmp_path):
    root, tiles, coords = world
    _bundle(tmp_path / "b2", 2)
    _bundle(tmp_path / "b3", 3)
    _bundle(tmp_path / "b1", None)  # the same weights (so the same fingerprint), one centre
    with _open(tmp_path / "b2") as loc:
        loc.index_references(tiles, coords)
        loc.save_index(tmp_path / "v4.npz")
    with _open(tmp_path / "b1") as loc1:
        loc1.index_references(tiles, coords)
        loc1.save_index(tmp_path / "v1.npz")
        with pytest.raises(ModelMismatchError, match="4 version"):
            loc1.load_index(tmp_path / "v4.npz")
        assert len(loc1.index) == len(tiles)  # the refused file left the working index alone
    for path, bundle, msg in (("v1.npz", "b2", "1 version"), ("v4.npz", "b3", "9 version")):
        with _open(tmp_path / bundle) as other, pytest.raises(ModelMismatchError, match=msg) as exc:
            other.load_index(tmp_path / path)
        assert "rebuild" in str(exc.value)
    with _open(tmp_path / "b2") as loc:  # an index of another number of versions assigned by hand
        loc.index = ReferenceIndex(16, fingerprint=loc.fingerprint)
        loc.index.add(np.eye(16, dtype=np.float32)[:2], coords[:2])
        with pytest.raises(StateError, match="1 version"):
            loc.index_references(tiles, coords)
        with pytest.raises(StateError, match="1 version"):  # a search would silently use the centres only
            loc.localise(tiles[:1], k=1)
        loc.index = ReferenceIndex(16, fingerprint=loc.fingerprint, versions=4, tile_side_m=64.0)
        assert loc.index_references(tiles[:1], coords[:1], tile_side_m=64.0) == 1
        with pytest.raises(InputError, match="64 m wide"):
            loc.index_references(tiles[:1], coords[:1], tile_side_m=70.0)
        assert len(loc.index) == 1  # refused before anything was added


def test_index_with_versions_unit(tmp_path):
    rng = np.random.default_rng(11)
    N, S, d = 30, 4, 16
    v, q = _grid_values(rng, N * S, d), _grid_values(rng, 9, d)
    idx = ReferenceIndex(d, versions=S, tile_side_m=50)
    with pytest.raises(InputError, match="4 embeddings per tile"):
        idx.add(v[:7], np.zeros((2, 2)))
    idx.add(v[:40], np.zeros((10, 2)))
    idx.add(v[40:], np.zeros((20, 2)))
    assert len(idx) == N and len(idx.ids) == N and idx.coords.shape == (N, 2)
    sc, t, ver = idx.search_versions(q, N)
    ref_s, ref_t, ref_v = _ref_topk(q, v, S, N)
    np.testing.assert_array_equal(t, ref_t)
    np.testing.assert_array_equal(ver, ref_v)
    np.testing.assert_array_equal(sc, ref_s.astype(np.float32))
    np.testing.assert_array_equal(idx.search(q, 4)[1], ref_t[:, :4])
    assert idx.backend == "exact" and idx.bytes_per_reference() == 4 * d * S
    idx.save(tmp_path / "i.npz")
    back = ReferenceIndex.load(tmp_path / "i.npz", expected_versions=S)
    assert back.versions == S and back.tile_side_m == 50.0 and len(back) == N
    np.testing.assert_array_equal(back.search_versions(q, 5)[2], ref_v[:, :5])
    half = ReferenceIndex(d, backend="exact-fp16", versions=S)
    half.add(v, np.zeros((N, 2)))  # values k/4 are exact in float16 too
    np.testing.assert_array_equal(half.search_versions(q, 6)[1], ref_t[:, :6])
    for backend in ("faiss-flat", "faiss-ivfpq", "milvus"):
        with pytest.raises(InputError, match="exact"):
            ReferenceIndex(d, backend=backend, versions=S)
    with pytest.raises(InputError, match="versions"):
        ReferenceIndex(d, versions=0)
    with pytest.raises(InputError, match="tile_side_m"):
        ReferenceIndex(d, tile_side_m=-3)


def _rewrite_meta(src, dst, **change):
    with np.load(src, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(bytes(data["meta"]))
    for k, val in change.items():
        if val is None:
            meta.pop(k, None)
        else:
            meta[k] = val
    data["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(dst, **data)


def test_old_bundle_and_old_index_file(world, tmp_path):
    """A bundle without views.aerial.centres and an index file without meta.versions / tile_side_m: one
    version, and results exactly as before (no new candidate fields)."""
    root, tiles, coords = world
    _bundle(tmp_path / "old", None)
    assert "centres" not in json.loads((tmp_path / "old" / "config.json").read_text())["views"]["aerial"]
    with _open(tmp_path / "old") as loc:
        assert loc.aerial_versions == 1
        np.testing.assert_array_equal(loc.embed_aerial_versions(tiles), loc.embed_aerial(tiles))
        loc.index_references(tiles, coords)
        loc.save_index(tmp_path / "new.npz")
        _rewrite_meta(tmp_path / "new.npz", tmp_path / "old.npz", versions=None, tile_side_m=None)
        assert "versions" not in json.loads(bytes(np.load(tmp_path / "old.npz")["meta"]))
        res = loc.localise(tiles[:3], k=2)
        assert loc.load_index(tmp_path / "old.npz") == len(tiles)
        assert loc.index.versions == 1 and loc.index.tile_side_m is None
        res2 = loc.localise(tiles[:3], k=2)
    assert res.versions is None and res.shifts is None and res.refined is None
    np.testing.assert_array_equal(res.indices[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(res2.indices, res.indices)
    np.testing.assert_array_equal(res2.scores, res.scores)
    assert set(res2.candidates(0)[0]) == {"rank", "score", "id", "index", "lat", "lon"}
    # a file that claims versions with a faiss backend, or a bad width, is refused clearly
    _rewrite_meta(tmp_path / "new.npz", tmp_path / "bad.npz", versions=0)
    with pytest.raises(FormatError, match="meta.versions"):
        ReferenceIndex.load(tmp_path / "bad.npz")
    _rewrite_meta(tmp_path / "new.npz", tmp_path / "bad2.npz", tile_side_m="wide")
    with pytest.raises(FormatError, match="tile_side_m"):
        ReferenceIndex.load(tmp_path / "bad2.npz")
    _rewrite_meta(tmp_path / "new.npz", tmp_path / "bad3.npz", versions=4)  # 7 rows, not 7 × 4
    with pytest.raises(FormatError, match="7 tiles × 4 versions"):
        ReferenceIndex.load(tmp_path / "bad3.npz")


def test_cluster_builds_refuse_versions(tmp_path):
    import argparse

    from s4g_engine.gallery_build import refuse_tile_versions

    _bundle(tmp_path / "b2", 2)
    _bundle(tmp_path / "b1", None)
    for ray, backend in ((True, "exact"), (False, "milvus")):
        args = argparse.Namespace(model=str(tmp_path / "b2"), ray=ray, index_backend=backend)
        with pytest.raises(InputError, match="single-process build"):
            refuse_tile_versions(args)
        refuse_tile_versions(argparse.Namespace(model=str(tmp_path / "b1"), ray=ray, index_backend=backend))


def test_cli_build_info_localise_with_centres(world, tmp_path, capsys):
    from PIL import Image

    from s4g_engine.cli import index_main, localise_main

    _, tiles, coords = world
    _bundle(tmp_path / "b2", 2)
    folder = tmp_path / "tiles"
    folder.mkdir()
    rows = ["image,lat,lon,id"]
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(folder / f"t{i}.png")  # lossless: the stage image is the array
        rows.append(f"t{i}.png,{coords[i, 0]},{coords[i, 1]},tile-{i}")
    (tmp_path / "tiles.csv").write_text("\n".join(rows) + "\n")
    common = ["--model", str(tmp_path / "b2"), "--device", "cpu", "--backend", "onnxruntime", "--precision", "fp32"]
    out = tmp_path / "g.npz"
    assert index_main(["build", *common, "--images", str(folder), "--coords", str(tmp_path / "tiles.csv"),
                       "--out", str(out), "--tile-side-m", "64"]) == 0
    capsys.readouterr()
    assert index_main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == len(tiles) and info["versions"] == 4 and info["tile_side_m"] == 64.0
    shifts = centre_grid(2, 16)
    Image.fromarray(shift_tile(tiles[5], *shifts[2], fill_colour([0.485, 0.456, 0.406]))).save(tmp_path / "q.png")
    assert localise_main([*common, "--index", str(out), str(tmp_path / "q.png"), "--k", "2", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["results"][0]["candidates"][0]
    assert c["id"] == "tile-5" and c["version"] == 2 and c["shift"] == [2, -2]
    lat, lon = offset_latlon(coords[5, 0], coords[5, 1], -2 * 4.0, -2 * 4.0)
    assert c["refined_lat"] == pytest.approx(float(lat), abs=1e-12)
    assert c["refined_lon"] == pytest.approx(float(lon), abs=1e-12)
    assert localise_main([*common, "--index", str(out), str(tmp_path / "q.png"), "--k", "1"]) == 0
    assert "in tile: lat" in capsys.readouterr().out
    # the Ray build keeps one embedding per tile: refused, with the way out named
    assert index_main(["build", *common, "--images", str(folder), "--coords", str(tmp_path / "tiles.csv"),
                       "--out", str(tmp_path / "r.npz"), "--ray"]) == 2
    assert "single-process build" in capsys.readouterr().err


def test_grouped_topk_on_a_float16_gallery_and_its_bad_input():
    """A float16 gallery is searched as it is (no float32 copy): same tiles and versions as the float64 reference
    on values exact in float16; NaN in it or a wrong row count is still a clear error."""
    from s4g_engine.tile_centres import grouped_topk

    rng = np.random.default_rng(21)
    N, S, d = 12, 4, 8
    v = (rng.integers(-4, 5, (N * S, d)) / 4).astype(np.float16)
    q = (rng.integers(-4, 5, (5, d)) / 4).astype(np.float32)
    ref_s, ref_t, ref_v = _ref_topk(q, v.astype(np.float64), S, 5)
    sc, t, ver = grouped_topk(q, v, S, 5)
    np.testing.assert_array_equal(t, ref_t)
    np.testing.assert_array_equal(ver, ref_v)
    bad = v.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        grouped_topk(q, bad, S, 5)
    with pytest.raises(InputError, match="whole number of tiles"):
        grouped_topk(q, v[:-1], S, 5)
