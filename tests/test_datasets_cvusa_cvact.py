"""load_split on CVUSA and CVACT real-layout fixtures: field by field, and every malformed-input kind."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.layouts import CVACT_UTM_ORIGIN, cvact_truth, cvusa_ground_gps, cvusa_sat_gps, make_cvact, make_cvusa
from s4g_engine.datasets import CrossViewSplit, MalformedRowError, PathEscapeError, SplitFileNotFoundError, load_split
from s4g_engine.errors import InputError

# ------------------------------------------------------------------------------------------------ CVUSA

def test_cvusa_fields(tmp_path: Path) -> None:
    root = make_cvusa(tmp_path / "cvusa", n_train=6, n_test=4)
    tr = load_split("cvusa", root, "train")
    assert isinstance(tr, CrossViewSplit)
    assert (tr.name, tr.split, tr.root) == ("cvusa", "train", str(root.resolve()))
    assert tr.queries == [str(root.resolve() / f"streetview/panos/{i:07d}.jpg") for i in range(1, 7)]
    assert tr.references == [str(root.resolve() / f"bingmap/19/{i:07d}.jpg") for i in range(1, 7)]
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in tr.queries + tr.references)
    assert tr.query_gps.dtype == np.float64 and tr.query_gps.shape == (6, 2)
    np.testing.assert_allclose(tr.query_gps, [cvusa_ground_gps(i) for i in range(1, 7)], atol=1e-8)
    np.testing.assert_allclose(tr.reference_gps, [cvusa_sat_gps(i) for i in range(1, 7)], atol=1e-8)
    assert tr.positive.dtype == np.int64 and tr.positive.tolist() == list(range(6))
    assert tr.semi_positives.shape == (6, 0) and tr.semi_positives.dtype == np.int64
    assert tr.offsets.shape == (6, 0, 2) and tr.offsets.dtype == np.float64
    assert tr.query_classes is None and tr.reference_classes is None and tr.reference_utm is None
    assert tr.skipped == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.split = "test"  # type: ignore[misc]

    val, test = load_split("cvusa", root, "val"), load_split("cvusa", root, "test")
    assert val.queries == test.queries and len(test.queries) == 4
    assert test.queries[0].endswith("0000007.jpg")
    np.testing.assert_allclose(test.query_gps[0], cvusa_ground_gps(7), atol=1e-8)


def test_cvusa_missing_split_file(tmp_path: Path) -> None:
    root = make_cvusa(tmp_path / "c")
    (root / "splits" / "train-19zl.csv").unlink()
    with pytest.raises(SplitFileNotFoundError) as ei:
        load_split("cvusa", root, "train")
    assert isinstance(ei.value, FileNotFoundError)
    assert str(root.resolve() / "splits" / "train-19zl.csv") in str(ei.value)


@pytest.mark.parametrize("bad_row, expect", [
    ("bingmap/19/0000002.jpg", "3 comma-separated"),                          # one column
    ("bingmap/19/abc.jpg,streetview/panos/0000002.jpg,x.png", "integer id"),  # id not a number
    (",streetview/panos/0000002.jpg,x.png", "3 comma-separated"),             # empty field
])
def test_cvusa_malformed_rows(tmp_path: Path, bad_row: str, expect: str) -> None:
    root = make_cvusa(tmp_path / "c")
    f = root / "splits" / "train-19zl.csv"
    lines = f.read_text().splitlines()
    lines[1] = bad_row
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRowError) as ei:
        load_split("cvusa", root, "train")
    assert ei.value.location.endswith("train-19zl.csv:2")
    assert bad_row in str(ei.value) and expect in str(ei.value)


@pytest.mark.parametrize("path", ["../outside/0000002.jpg", "/etc/0000002.jpg",
                                  "bingmap/../../0000002.jpg"])
def test_cvusa_path_escape(tmp_path: Path, path: str) -> None:
    root = make_cvusa(tmp_path / "c")
    f = root / "splits" / "train-19zl.csv"
    lines = f.read_text().splitlines()
    lines[0] = f"{path},streetview/panos/0000001.jpg,a.png"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(PathEscapeError, match="train-19zl.csv:1"):
        load_split("cvusa", root, "train")


def test_cvusa_missing_images_lenient_and_strict(tmp_path: Path) -> None:
    root = make_cvusa(tmp_path / "c")
    (root / "streetview/panos/0000002.jpg").unlink()
    (root / "bingmap/19/0000005.jpg").unlink()
    s = load_split("cvusa", root, "train")
    assert len(s.queries) == 4 and s.positive.tolist() == [0, 1, 2, 3]
    assert s.skipped["missing_query_images"] == 1 and s.skipped["missing_reference_images"] == 1
    assert s.skipped["missing_query_images_examples"] == ["streetview/panos/0000002.jpg"]
    assert s.skipped["pairs_dropped"] == 2
    kept_ids = [int(Path(p).stem) for p in s.references]
    assert kept_ids == [1, 3, 4, 6]
    np.testing.assert_allclose(s.query_gps, [cvusa_ground_gps(i) for i in kept_ids], atol=1e-8)
    with pytest.raises(FileNotFoundError, match="0000005.jpg"):
        load_split("cvusa", root, "train", strict=True)


def test_cvusa_gps_file_missing_or_malformed(tmp_path: Path) -> None:
    root = make_cvusa(tmp_path / "c", gps=False)
    s = load_split("cvusa", root, "train")
    assert np.isnan(s.query_gps).all() and np.isnan(s.reference_gps).all()
    assert s.skipped["gps_unavailable"] == 6 and "all.csv" in s.skipped["gps_problem"]
    with pytest.raises(FileNotFoundError, match="all.csv"):
        load_split("cvusa", root, "train", strict=True)

    root2 = make_cvusa(tmp_path / "d")
    f = root2 / "split_locations" / "all.csv"
    lines = f.read_text().splitlines()
    lines[3] = "40.1,not-a-number,40.1,-100.0,4"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRowError) as ei:
        load_split("cvusa", root2, "train")
    assert ei.value.location.endswith("all.csv:4")


def test_crossviewsplit_validates_shapes() -> None:
    ok = dict(name="x", root="/r", split="test", queries=["/q0", "/q1"], references=["/r0"],
              query_gps=np.zeros((2, 2)), reference_gps=np.zeros((1, 2)), positive=[0, 0])
    s = CrossViewSplit(**ok)
    assert s.positive.dtype == np.int64 and s.semi_positives.shape == (2, 0) and s.offsets.shape == (2, 0, 2)
    assert CrossViewSplit(**{**ok, "queries": [], "query_gps": np.zeros((0, 2)), "positive": [],
                             "semi_positives": np.zeros((0, 3))}).semi_positives.shape == (0, 3)
    for bad, match in ((dict(positive=[0, 1]), "positive"), (dict(query_gps=np.zeros((3, 2))), "query_gps"),
                       (dict(semi_positives=[[0, 5, -1], [0, 0, 0]]), "semi_positives"),
                       (dict(offsets=np.zeros((2, 4, 3))), "offsets"),
                       (dict(query_classes=[1]), "query_classes")):
        with pytest.raises(ValueError, match=match):
            CrossViewSplit(**{**ok, **bad})


def test_load_split_argument_errors(tmp_path: Path) -> None:
    root = make_cvusa(tmp_path / "c")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("cvusb", root, "train")
    with pytest.raises(ValueError, match="split must be"):
        load_split("cvusa", root, "dev")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_split("cvusa", tmp_path / "nope", "train")
    with pytest.raises(InputError, match="utm_zone"):
        load_split("cvusa", root, "train", utm_zone=55)


# ------------------------------------------------------------------------------------------------ CVACT

@pytest.mark.parametrize("cell_ids", [False, True])
def test_cvact_fields(tmp_path: Path, cell_ids: bool) -> None:
    from pyproj import Transformer

    root = make_cvact(tmp_path / "cvact", n_train=6, n_val=4, n_test=5, cell_ids=cell_ids)
    truth = cvact_truth(root)
    fwd = Transformer.from_crs("EPSG:4326", "EPSG:32755", always_xy=True)
    for split, folder in (("train", "ANU_data_small"), ("val", "ANU_data_small"), ("test", "ANU_data_test")):
        s = load_split("cvact", root, split)
        ids = [truth["ids"][k] for k in truth[split]]
        base = root.resolve() / folder
        assert s.queries == [str(base / "streetview" / f"{i}_grdView.jpg") for i in ids]
        assert s.references == [str(base / "satview_polish" / f"{i}_satView_polish.jpg") for i in ids]
        utm = np.asarray(truth["utm"])[truth[split]]
        assert s.reference_utm is not None and s.reference_utm.dtype == np.float64
        np.testing.assert_allclose(s.reference_utm, utm)
        # lat/lon really is UTM 55S: converting back gives the metres, and Canberra's lat/lon
        e, n = fwd.transform(s.reference_gps[:, 1], s.reference_gps[:, 0])
        np.testing.assert_allclose(np.stack([e, n], 1), utm, atol=1e-3)
        assert np.all((s.reference_gps[:, 0] > -35.5) & (s.reference_gps[:, 0] < -35.1))
        assert np.all((s.reference_gps[:, 1] > 148.9) & (s.reference_gps[:, 1] < 149.4))
        np.testing.assert_array_equal(s.query_gps, s.reference_gps)
        assert s.positive.tolist() == list(range(len(ids))) and s.skipped == {}
        assert s.semi_positives.shape == (len(ids), 0)


def test_cvact_utm_zone_parameter(tmp_path: Path) -> None:
    root = make_cvact(tmp_path / "a")
    s55 = load_split("cvact", root, "train")
    s56 = load_split("cvact", root, "train", utm_zone=56)
    assert np.all(s56.reference_gps[:, 1] - s55.reference_gps[:, 1] > 5.9)  # one zone = 6° of longitude
    sn = load_split("cvact", root, "train", utm_south=False)
    assert np.all(sn.reference_gps[:, 0] > 0)


def test_cvact_errors(tmp_path: Path) -> None:
    from scipy.io import loadmat, savemat

    root = make_cvact(tmp_path / "a")
    with pytest.raises(ValueError, match="split must be"):
        load_split("cvact", root, "holdout")
    mat = loadmat(root / "ACT_data.mat")
    # index 0 (not 1-based)
    bad = dict(mat)
    bad["trainSet"] = {"trainInd": np.array([[0.0], [1.0]])}
    savemat(root / "ACT_data.mat", {k: v for k, v in bad.items() if not k.startswith("__")})
    with pytest.raises(ValueError, match="1-based"):
        load_split("cvact", root, "train")
    # missing struct field
    bad["trainSet"] = {"trainIndex": np.array([[1.0]])}
    savemat(root / "ACT_data.mat", {k: v for k, v in bad.items() if not k.startswith("__")})
    with pytest.raises(ValueError, match="trainInd"):
        load_split("cvact", root, "train")
    # val still loads: problems are per split
    assert len(load_split("cvact", root, "val").queries) == 4
    # a panoId with a directory part would escape the image folder
    bad["trainSet"] = mat["trainSet"]
    ids = [str(x) for x in mat["panoIds"]]
    ids[int(mat["trainSet"]["trainInd"][0, 0][0, 0]) - 1] = "../../etc/passwd_xxxxxxxxx"[:len(ids[0])]
    bad["panoIds"] = np.array(ids)
    savemat(root / "ACT_data.mat", {k: v for k, v in bad.items() if not k.startswith("__")})
    with pytest.raises(PathEscapeError):
        load_split("cvact", root, "train")
    # not a MATLAB file at all
    (root / "ACT_data.mat").write_bytes(b"this is not matlab")
    with pytest.raises(ValueError, match="ACT_data.mat"):
        load_split("cvact", root, "train")
    (root / "ACT_data.mat").unlink()
    with pytest.raises(SplitFileNotFoundError, match="ACT_data.mat"):
        load_split("cvact", root, "train")


def test_cvact_missing_images_and_folder(tmp_path: Path) -> None:
    root = make_cvact(tmp_path / "a")
    truth = cvact_truth(root)
    gone = truth["ids"][truth["test"][2]]
    (root / "ANU_data_test" / "satview_polish" / f"{gone}_satView_polish.jpg").unlink()
    s = load_split("cvact", root, "test")
    assert len(s.queries) == 4 and s.skipped["missing_reference_images"] == 1
    assert s.skipped["missing_reference_images_examples"] == [f"ANU_data_test/satview_polish/{gone}_satView_polish.jpg"]
    assert not any(gone in q for q in s.queries)
    assert s.reference_utm is not None and s.reference_utm.shape == (4, 2)
    with pytest.raises(FileNotFoundError, match=gone):
        load_split("cvact", root, "test", strict=True)
    import shutil
    shutil.rmtree(root / "ANU_data_test")
    with pytest.raises(FileNotFoundError, match="ANU_data_test"):
        load_split("cvact", root, "test")


def test_fixture_origin_is_canberra() -> None:
    from s4g_engine.geo import utm_to_latlon

    lat, lon = utm_to_latlon(np.array([CVACT_UTM_ORIGIN[0]]), np.array([CVACT_UTM_ORIGIN[1]]))
    assert -35.4 < lat[0] < -35.2 and 149.0 < lon[0] < 149.2


def test_readers_do_not_import_torch(tmp_path: Path) -> None:
    root = make_cvusa(tmp_path / "c")
    code = ("import sys; from s4g_engine.datasets import load_split; import s4g_engine.geo, "
            "s4g_engine.datasets.check; "
            f"s = load_split('cvusa', {str(root)!r}, 'train'); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(len(s.queries))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"
