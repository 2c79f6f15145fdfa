"""s4g-index / s4g-localise: CSV and dataset inputs, JSON and GeoJSON outputs, clear failures, the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from helpers.torch_bundle import make_tiny_bundle  # noqa: E402
from s4g_engine.cli import index_main, localise_main  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    make_tiny_bundle(out)
    return out


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    rows = ["filename,latitude,longitude,id"]
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"t{i}.jpg")
        rows.append(f"t{i}.jpg,{45 + i * 0.01},{7 + i * 0.02},tile-{i}")
    (root / "coords.csv").write_text("\n".join(rows) + "\n")
    return root


def test_build_and_localise_json_and_geojson(bundle, tiles, tmp_path, capsys):
    idx = tmp_path / "gallery.npz"
    assert index_main(["build", "--model", str(bundle), "--images", str(tiles), "--coords",
                       str(tiles / "coords.csv"), "--out", str(idx), "--index-backend", "exact"]) == 0
    assert "indexed 10 references" in capsys.readouterr().out
    assert index_main(["info", str(idx)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 10 and info["backend"] == "exact" and info["dim"] == 64

    queries = [str(tiles / "t3.jpg"), str(tiles / "t7.jpg")]
    assert localise_main(["--model", str(bundle), "--index", str(idx), *queries, "--k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out["results"]] == queries
    c = out["results"][0]["candidates"]
    assert [x["rank"] for x in c] == [1, 2, 3, 4] and all(c[i]["score"] >= c[i + 1]["score"] for i in range(3))
    assert {x["id"] for x in c} <= {f"tile-{i}" for i in range(10)}

    gj_path = tmp_path / "out" / "cands.geojson"
    assert localise_main(["--model", str(bundle), "--index", str(idx), str(tiles), "--k", "2",
                          "--geojson", str(gj_path)]) == 0
    gj = json.loads(gj_path.read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 10 * 2
    f0 = gj["features"][0]
    lon, lat = f0["geometry"]["coordinates"]
    assert f0["geometry"]["type"] == "Point" and 45 <= lat <= 45.1 and 7 <= lon <= 7.2  # [lon, lat] order
    assert {"rank", "score", "query", "id"} <= set(f0["properties"])


def test_build_from_a_dataset_split(bundle, tmp_path, capsys):
    from helpers import layouts

    root = tmp_path / "CVUSA"
    layouts.make_cvusa(root, n_train=3, n_test=5)
    idx = tmp_path / "cvusa.npz"
    assert index_main(["build", "--model", str(bundle), "--dataset", "cvusa", "--root", str(root),
                       "--split", "test", "--out", str(idx)]) == 0
    from s4g_engine.datasets import load_split
    from s4g_engine.index import ReferenceIndex

    split = load_split("cvusa", root, "test")
    ri = ReferenceIndex.load(idx)
    assert len(ri) == len(split.references) == 5
    np.testing.assert_allclose(ri.coords, split.reference_gps)


def test_clear_failures(bundle, tiles, tmp_path, capsys):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,x,y\nt0.jpg,1,2\n")
    assert index_main(["build", "--model", str(bundle), "--images", str(tiles), "--coords", str(bad_csv),
                       "--out", str(tmp_path / "x.npz")]) == 2
    assert "lacks column(s) ['lat', 'lon']" in capsys.readouterr().err
    nan_csv = tmp_path / "nan.csv"
    nan_csv.write_text("image,lat,lon\nt0.jpg,nan,2\n")
    assert index_main(["build", "--model", str(bundle), "--images", str(tiles), "--coords", str(nan_csv),
                       "--out", str(tmp_path / "x.npz")]) == 2
    assert "NaN" in capsys.readouterr().err
    missing = tmp_path / "missing.csv"
    missing.write_text("image,lat,lon\nnope.jpg,1,2\n")
    assert index_main(["build", "--model", str(bundle), "--images", str(tiles), "--coords", str(missing),
                       "--out", str(tmp_path / "x.npz")]) == 2
    assert "nope.jpg" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    assert localise_main(["--model", str(bundle), "--index", str(tmp_path / "none.npz"),
                          str(tiles / "t0.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        index_main(["build", "--model", str(bundle), "--out", "x.npz"])  # neither --images nor --dataset


def test_demo_localises_synthetic_panoramas(bundle, tmp_path, capsys):
    pytest.importorskip("s4g_synth")
    assert localise_main(["--model", str(bundle), "--demo", "--demo-dir", str(tmp_path / "world"),
                          "--demo-pairs", "24", "--demo-queries", "3", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "top-1 error: median" in out and out.count("#1 ") == 3
