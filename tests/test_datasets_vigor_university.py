"""load_split on VIGOR (same-/cross-area) and University-1652 real-layout fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.layouts import make_university, make_vigor
from s4g_engine.datasets import MalformedRowError, PathEscapeError, SplitFileNotFoundError, load_split
from s4g_engine.datasets.vigor import offsets_from_delta, parse_pano_name, pixel_delta
from s4g_engine.geo import haversine_m, offset_latlon

GRID = 4
PER_CITY = 6


@pytest.fixture(scope="module")
def vigor_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vigor(tmp_path_factory.mktemp("v") / "VIGOR", grid=GRID, panos_per_city=PER_CITY)


def _rows(root: Path, city: str, fname: str) -> list[list[str]]:
    return [ln.split() for ln in (root / "splits" / city / fname).read_text().splitlines() if ln.strip()]


def test_vigor_same_area_fields(vigor_root: Path) -> None:
    root = vigor_root.resolve()
    cities = ["Chicago", "NewYork", "SanFrancisco", "Seattle"]
    for split in ("train", "test"):
        s = load_split("vigor-same", vigor_root, split)
        # gallery = every tile of all four cities, in satellite_list order
        expect_refs = [str(root / c / "satellite" / ln) for c in cities
                       for ln in (root / "splits" / c / "satellite_list.txt").read_text().split()]
        assert s.references == expect_refs and len(s.references) == 4 * GRID * GRID
        rows = [(c, r) for c in cities for r in _rows(root, c, f"same_area_balanced_{split}.txt")]
        assert s.queries == [str(root / c / "panorama" / r[0]) for c, r in rows]
        names = [Path(p).name for p in s.references]
        for q, (c, r) in enumerate(rows):
            assert s.references[s.positive[q]] == str(root / c / "satellite" / r[1])
            assert [names[i] for i in s.semi_positives[q]] == [r[4], r[7], r[10]]
            assert s.query_gps[q].tolist() == list(parse_pano_name(r[0]))
            d = np.array([[float(r[k]), float(r[k + 1])] for k in (2, 5, 8, 11)])
            np.testing.assert_allclose(s.offsets[q], -d * 0.114)
        assert s.positive.dtype == np.int64 and s.semi_positives.shape == (len(rows), 3)
        assert s.offsets.shape == (len(rows), 4, 2) and s.offsets.dtype == np.float64
        assert s.metres_per_pixel == 0.114 and s.skipped == {}


def test_vigor_offsets_give_true_position(vigor_root: Path) -> None:
    """tile centre shifted by offsets[q, j] (north_m, east_m) = the panorama's own GPS, for all 4 tiles."""
    s = load_split("vigor-same", vigor_root, "test")
    tiles = np.concatenate([s.positive[:, None], s.semi_positives], axis=1)
    for j in range(4):
        c = s.reference_gps[tiles[:, j]]
        lat, lon = offset_latlon(c[:, 0], c[:, 1], s.offsets[:, j, 0], s.offsets[:, j, 1])
        err = haversine_m(lat, lon, s.query_gps[:, 0], s.query_gps[:, 1])
        assert err.max() < 0.05, err
    # the positive is the nearest tile: the panorama lies in its central quarter
    step = 640 * 0.114 / 2
    assert np.all(np.abs(s.offsets[:, 0, :]) <= step / 2 + 1e-6)
    assert np.all(np.abs(s.offsets[:, 1:, :]).max(axis=2) > step / 2 - 1e-6)


def test_vigor_sign_convention() -> None:
    # a panorama 10 px north and 20 px east of the tile centre: VIGOR writes d0 = -10 (rows, south +),
    # d1 = -20 (minus columns) -> offsets (north, east) = (+1.14 m, +2.28 m)
    np.testing.assert_allclose(offsets_from_delta(np.array([-10.0, -20.0]), 0.114), [1.14, 2.28])
    np.testing.assert_allclose(pixel_delta(1.14, 2.28, 0.114), [-10.0, -20.0])
    lat, lon = offset_latlon(41.0, -87.0, 1.14, 2.28)
    assert lat > 41.0 and lon > -87.0


def test_vigor_cross_area(vigor_root: Path) -> None:
    tr = load_split("vigor-cross", vigor_root, "train")
    te = load_split("vigor-cross", vigor_root, "test")
    assert {Path(p).parts[-3] for p in tr.references} == {"NewYork", "Seattle"}
    assert {Path(p).parts[-3] for p in te.references} == {"Chicago", "SanFrancisco"}
    assert {Path(p).parts[-3] for p in tr.queries} == {"NewYork", "Seattle"}
    assert len(tr.queries) == 2 * PER_CITY and len(tr.references) == 2 * GRID * GRID
    # train split: several panoramas may share a positive; positives index the train cities' tiles
    assert tr.positive.max() < len(tr.references)
    assert load_split("vigor-same", vigor_root, "val").queries == load_split("vigor-same", vigor_root, "test").queries


def test_vigor_meta_json_resolution(tmp_path: Path) -> None:
    root = make_vigor(tmp_path / "syn", grid=3, panos_per_city=2, metres_per_pixel=0.5)
    s = load_split("vigor-same", root, "train")
    assert s.metres_per_pixel == 0.5
    c = s.reference_gps[s.positive]
    lat, lon = offset_latlon(c[:, 0], c[:, 1], s.offsets[:, 0, 0], s.offsets[:, 0, 1])
    assert haversine_m(lat, lon, s.query_gps[:, 0], s.query_gps[:, 1]).max() < 0.05
    assert load_split("vigor-same", root, "train", metres_per_pixel=1.0).offsets[0, 0, 0] == 2 * s.offsets[0, 0, 0]
    (root / "meta.json").write_text(json.dumps({"metres_per_pixel": -1}))
    with pytest.raises(ValueError, match="metres_per_pixel"):
        load_split("vigor-same", root, "train")


def _edit_row(root: Path, city: str, fname: str, k: int, fn) -> None:
    f = root / "splits" / city / fname
    lines = f.read_text().splitlines()
    lines[k] = fn(lines[k])
    f.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, err, match", [
    (lambda r: " ".join(r.split()[:12]), MalformedRowError, "13 whitespace-separated"),
    (lambda r: " ".join(r.split()[:2] + ["abc"] + r.split()[3:]), MalformedRowError, "numbers"),
    (lambda r: " ".join(r.split()[:2] + ["1e308"] + r.split()[3:]), MalformedRowError, "at most 100000 pixels"),
    (lambda r: " ".join(r.split()[:5] + ["nan"] + r.split()[6:]), MalformedRowError, "finite offsets"),
    (lambda r: " ".join(r.split()[:1] + ["satellite_1.0_2.0.png"] + r.split()[2:]), MalformedRowError,
     "unknown tile"),
    (lambda r: " ".join(["../../x,1,2,.jpg"] + r.split()[1:]), PathEscapeError, "bare file name"),
    (lambda r: " ".join(["nolatlon.jpg"] + r.split()[1:]), MalformedRowError, "<prefix>,<lat>,<lon>"),
])
def test_vigor_malformed(tmp_path: Path, edit, err, match) -> None:
    root = make_vigor(tmp_path / "v", grid=3, panos_per_city=4)
    _edit_row(root, "NewYork", "same_area_balanced_train.txt", 1, edit)
    with pytest.raises(err, match=match) as ei:
        load_split("vigor-same", root, "train")
    if err is MalformedRowError:
        assert ei.value.location.endswith("NewYork/same_area_balanced_train.txt:2")
    load_split("vigor-same", root, "test")  # other split unaffected


def test_vigor_missing_split_files(tmp_path: Path) -> None:
    root = make_vigor(tmp_path / "v", grid=3, panos_per_city=2)
    (root / "splits" / "Seattle" / "satellite_list.txt").unlink()
    with pytest.raises(SplitFileNotFoundError, match="Seattle/satellite_list.txt"):
        load_split("vigor-same", root, "train")
    load_split("vigor-cross", root, "test")  # Chicago + SanFrancisco only
    (root / "splits" / "Chicago" / "pano_label_balanced.txt").unlink()
    with pytest.raises(SplitFileNotFoundError, match="Chicago/pano_label_balanced.txt"):
        load_split("vigor-cross", root, "test")


def test_vigor_missing_images(tmp_path: Path) -> None:
    root = make_vigor(tmp_path / "v", grid=3, panos_per_city=4)
    full = load_split("vigor-same", root, "train")
    q0 = 0
    semi_tile = Path(full.references[full.semi_positives[q0, 0]])
    semi_tile.unlink()
    s = load_split("vigor-same", root, "train")
    assert len(s.references) == len(full.references) - 1
    assert s.skipped["missing_reference_images"] == 1
    assert s.skipped["semi_positive_tile_missing"] >= 1
    assert (s.semi_positives == -1).sum() == s.skipped["semi_positive_tile_missing"]
    # positives remapped to the shorter gallery: still the same files
    kept = [q for q in range(len(full.queries)) if full.queries[q] in s.queries]
    assert [s.references[p] for p in s.positive] == [full.references[full.positive[q]] for q in kept]
    with pytest.raises(FileNotFoundError, match=semi_tile.name):
        load_split("vigor-same", root, "train", strict=True)

    root2 = make_vigor(tmp_path / "w", grid=3, panos_per_city=4)
    f2 = load_split("vigor-same", root2, "train")
    Path(f2.references[f2.positive[0]]).unlink()
    Path(f2.queries[1]).unlink()
    s2 = load_split("vigor-same", root2, "train")
    assert s2.skipped["positive_tile_missing"] >= 1 and s2.skipped["missing_query_images"] == 1
    assert f2.queries[0] not in s2.queries and f2.queries[1] not in s2.queries
    assert len(s2.queries) == len(f2.queries) - 1 - s2.skipped["positive_tile_missing"]


# ------------------------------------------------------------------------------------------- University

def test_university_d2s_s2d_train(tmp_path: Path) -> None:
    root = make_university(tmp_path / "U", n_train_classes=3, n_test_classes=4, drones_per_class=3,
                           n_distractors=2).resolve()
    d2s = load_split("university-d2s", root, "test")
    assert (d2s.query_view, d2s.reference_view) == ("drone", "satellite")
    assert len(d2s.queries) == 4 * 3 and len(d2s.references) == 6  # gallery keeps the 2 distractor classes
    assert d2s.queries[0] == str(root / "test/query_drone/0004/image-01.jpeg")
    assert d2s.references == [str(root / f"test/gallery_satellite/{c:04d}/{c:04d}.jpg") for c in range(4, 10)]
    assert d2s.query_classes is not None and d2s.reference_classes is not None
    assert d2s.query_classes.tolist() == [c for c in range(4, 8) for _ in range(3)]
    assert d2s.reference_classes.tolist() == list(range(4, 10))
    np.testing.assert_array_equal(d2s.reference_classes[d2s.positive], d2s.query_classes)
    assert np.isnan(d2s.query_gps).all() and d2s.query_gps.shape == (12, 2)
    assert d2s.semi_positives.shape == (12, 0) and d2s.offsets.shape == (12, 0, 2)

    s2d = load_split("university-s2d", root, "test")
    assert (s2d.query_view, s2d.reference_view) == ("satellite", "drone")
    assert len(s2d.queries) == 4 and len(s2d.references) == 6 * 3
    np.testing.assert_array_equal(s2d.reference_classes[s2d.positive], s2d.query_classes)
    assert s2d.positive.tolist() == [0, 3, 6, 9]  # first gallery drone image of the class

    tr = load_split("university-d2s", root, "train")
    assert len(tr.queries) == 9 and len(tr.references) == 3
    assert tr.positive.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert load_split("university-s2d", root, "train").queries == tr.queries


def test_university_errors(tmp_path: Path) -> None:
    root = make_university(tmp_path / "U")
    (root / "test" / "query_drone" / "0004" / "notes.txt").write_text("x")
    s = load_split("university-d2s", root, "test")
    assert s.skipped["non_image_files"] == 1
    # a query class without gallery image: skipped, or an error when strict
    shutil.rmtree(root / "test" / "gallery_satellite" / "0005")
    s = load_split("university-d2s", root, "test")
    assert s.skipped["queries_without_reference_class"] == 3 and 5 not in s.query_classes.tolist()
    with pytest.raises(FileNotFoundError):
        load_split("university-d2s", root, "test", strict=True)
    (root / "test" / "gallery_satellite" / "extra").mkdir()
    with pytest.raises(ValueError, match="not a number"):
        load_split("university-d2s", root, "test")
    shutil.rmtree(root / "test" / "query_satellite")
    with pytest.raises(FileNotFoundError, match="query_satellite"):
        load_split("university-s2d", root, "test")
