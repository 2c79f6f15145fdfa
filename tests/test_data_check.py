"""s4g-data check on healthy and broken real-layout folders: problems, fixes, exit status, JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.layouts import make_cvact, make_cvusa, make_university, make_vigor, write_image
from s4g_engine.datasets.check import check_dataset, main


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    rc = main(["check", *args])
    return rc, capsys.readouterr().out


def run_json(capsys: pytest.CaptureFixture, dataset: str, root: Path) -> tuple[int, dict]:
    rc, out = run(capsys, "--dataset", dataset, "--root", str(root), "--json")
    return rc, json.loads(out)


def problems(report: dict, kind: str | None = None) -> list[dict]:
    return [p for s in report["splits"] for p in s["problems"] if kind is None or p["kind"] == kind]


def test_healthy_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    builders = {"cvusa": make_cvusa, "cvact": make_cvact, "vigor": make_vigor, "university": make_university}
    n_splits = {"cvusa": 2, "cvact": 3, "vigor": 4, "university": 3}
    for name, make in builders.items():
        root = make(tmp_path / name)
        rc, rep = run_json(capsys, name, root)
        assert rc == 0 and rep["usable"] and rep["errors"] == 0, problems(rep)
        assert len(rep["splits"]) == n_splits[name]
        kinds = {p["kind"] for p in problems(rep)}
        assert kinds <= {"count_mismatch", "image_size"}, kinds   # tiny + scaled: nothing else to report
        assert all(p["severity"] == "info" for p in problems(rep, "image_size"))  # scaled, not unexpected
        for s in rep["splits"]:
            assert s["counts"]["queries"] > 0 and s["published"] is not None
            assert s["image_sizes"] and all(s["image_sizes"].values())
        rc, text = run(capsys, "--dataset", name, "--root", str(root))
        assert rc == 0 and "verdict: USABLE" in text and "published" in text


def test_counts_and_sizes_in_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cvusa(tmp_path / "c", n_train=5, n_test=3)
    rc, rep = run_json(capsys, "cvusa", root)
    tr = rep["splits"][0]
    assert (tr["name"], tr["split"]) == ("cvusa", "train")
    assert tr["counts"] == {"queries": 5, "references": 5, "positive_references": 5}
    assert tr["published"] == {"queries": 35_532, "references": 35_532}
    assert tr["image_sizes"] == {"ground": {"154x28": 5}, "satellite": {"94x94": 5}}
    assert tr["gps"]["queries_with_gps"] == 5 and tr["gps"]["references_with_gps"] == 5
    mism = problems(rep, "count_mismatch")
    assert len(mism) == 2 and mism[0]["severity"] == "warning" and "35,532" in mism[0]["message"]
    # a synthetic folder (meta.json) gets the mismatch as a note, not a warning
    (root / "meta.json").write_text(json.dumps({"synthetic": True}))
    rc, rep = run_json(capsys, "cvusa", root)
    assert rep["synthetic"] and {p["severity"] for p in problems(rep, "count_mismatch")} == {"info"}
    assert problems(rep, "image_size")                       # scaled vs the real dataset's sizes
    # the synthetic world declares its sizes (tile_size, pano_size=[H, W]): those become the expected ones
    (root / "meta.json").write_text(json.dumps({"generator": "s4g-synth", "tile_size": 94, "pano_size": [28, 154]}))
    rc, rep = run_json(capsys, "cvusa", root)
    assert rep["synthetic"] and not problems(rep, "image_size")
    (root / "meta.json").write_text(json.dumps({"generator": "s4g-synth", "tile_size": 94, "pano_size": [28, 100]}))
    rc, rep = run_json(capsys, "cvusa", root)
    assert [p["severity"] for p in problems(rep, "image_size")] == ["warning", "warning"]


def test_missing_split_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cvusa(tmp_path / "c")
    (root / "splits" / "val-19zl.csv").unlink()
    rc, rep = run_json(capsys, "cvusa", root)
    assert rc == 1 and not rep["usable"]
    (p,) = problems(rep, "missing_split_file")
    expected = str(root.resolve() / "splits" / "val-19zl.csv")
    assert p["severity"] == "error" and p["examples"] == [expected] and expected in p["fix"]
    assert rep["splits"][0]["status"] != "error"                     # train still fine
    rc, text = run(capsys, "--dataset", "cvusa", "--root", str(root))
    assert rc == 1 and expected in text and "what to do:" in text and "UNUSABLE" in text


def test_malformed_row_and_path_escape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cvusa(tmp_path / "c")
    f = root / "splits" / "train-19zl.csv"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:2] + ["only-one-column"] + lines[3:]) + "\n")
    rc, rep = run_json(capsys, "cvusa", root)
    (p,) = problems(rep, "malformed_row")
    assert rc == 1 and p["examples"][0].endswith("train-19zl.csv:3") and "only-one-column" in p["message"]
    assert "line 3" in p["fix"]
    f.write_text("\n".join(["../../secret.jpg,streetview/panos/0000001.jpg,a.png"] + lines[1:]) + "\n")
    rc, rep = run_json(capsys, "cvusa", root)
    (p,) = problems(rep, "path_escape")
    assert rc == 1 and "train-19zl.csv:1" in p["message"] and "relative" in p["fix"]


def test_missing_images_warn_but_usable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cvact(tmp_path / "a")
    gone = sorted((root / "ANU_data_small" / "streetview").iterdir())[:2]
    for g in gone:
        g.unlink()
    rc, rep = run_json(capsys, "cvact", root)
    assert rc == 0 and rep["usable"]
    miss = problems(rep, "missing_images")
    assert miss and all(p["severity"] == "warning" for p in miss)
    names = [e for p in miss for e in p["examples"]]
    assert sorted(Path(e).name for e in names) == sorted(g.name for g in gone)
    # every image of a split missing -> the split is unusable
    shutil.rmtree(root / "ANU_data_test" / "satview_polish")
    (root / "ANU_data_test" / "satview_polish").mkdir()
    rc, rep = run_json(capsys, "cvact", root)
    assert rc == 1 and [s["split"] for s in rep["splits"] if s["status"] == "error"] == ["test"]
    assert problems(rep, "empty_split")


def test_missing_mat_and_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cvact(tmp_path / "a")
    shutil.rmtree(root / "ANU_data_test")
    rc, rep = run_json(capsys, "cvact", root)
    missing = problems(rep, "missing_folder")
    assert rc == 1 and missing and "ANU_data_test" in missing[0]["message"]
    (root / "ACT_data.mat").unlink()
    rc, rep = run_json(capsys, "cvact", root)
    assert rc == 1 and len(problems(rep, "missing_split_file")) == 3
    assert "Liumouliu/OriCNN" in problems(rep, "missing_split_file")[0]["fix"]


def test_unreadable_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cvusa(tmp_path / "c", n_train=3, n_test=2)
    p = root / "bingmap" / "19" / "0000002.jpg"
    p.write_bytes(p.read_bytes()[:40])                 # truncated JPEG
    rc, rep = run_json(capsys, "cvusa", root)
    (pr,) = problems(rep, "unreadable_images")
    assert rc == 1 and pr["severity"] == "error" and "bingmap/19/0000002.jpg" in pr["examples"][0]


def test_polar_tiles_and_odd_panoramas(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cvusa(tmp_path / "c", n_train=3, n_test=2)
    rng = np.random.default_rng(0)
    for tile in (root / "bingmap" / "19").iterdir():        # polar-transformed tiles (SAFA style)
        write_image(tile, 512, 128, rng)
    rc, rep = run_json(capsys, "cvusa", root)
    sizes = [p for p in problems(rep, "image_size") if p["severity"] == "error"]
    assert rc == 1 and sizes and "polar" in sizes[0]["message"] and "raw" in sizes[0]["fix"]
    assert rep["splits"][0]["image_sizes"]["satellite"] == {"512x128": 3}

    root2 = make_cvusa(tmp_path / "d", n_train=3, n_test=2)
    for pano in (root2 / "streetview" / "panos").iterdir():  # full 2:1 panoramas instead of the strip
        write_image(pano, 256, 128, rng)
    rc, rep = run_json(capsys, "cvusa", root2)
    warn = [p for p in problems(rep, "image_size") if p["severity"] == "warning"]
    assert rc == 0 and warn and "256×128" in warn[0]["message"] and "1232×224" in warn[0]["message"]

    root3 = make_cvusa(tmp_path / "e", n_train=2, n_test=2, scale=1)  # the real sizes: nothing to say
    rc, rep = run_json(capsys, "cvusa", root3)
    assert not problems(rep, "image_size")
    with Image.open(root3 / "bingmap/19/0000001.jpg") as im:
        assert im.size == (750, 750)


def test_gps_unavailable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cvusa(tmp_path / "c", gps=False)
    rc, rep = run_json(capsys, "cvusa", root)
    g = problems(rep, "gps_unavailable")
    assert rc == 0 and g and "all.csv" in g[0]["fix"] and g[0]["severity"] == "warning"
    assert rep["splits"][0]["gps"]["queries_with_gps"] == 0


def test_vigor_broken(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_vigor(tmp_path / "v", grid=3, panos_per_city=2)
    f = root / "splits" / "Seattle" / "same_area_balanced_test.txt"
    f.write_text(f.read_text().replace(".jpg ", ".jpg x ", 1))
    (root / "splits" / "Chicago" / "pano_label_balanced.txt").unlink()
    rc, rep = run_json(capsys, "vigor", root)
    status = {(s["name"], s["split"]): s["status"] for s in rep["splits"]}
    assert rc == 1
    assert status[("vigor-same", "test")] == "error" and status[("vigor-cross", "test")] == "error"
    assert status[("vigor-same", "train")] != "error" and status[("vigor-cross", "train")] != "error"
    assert problems(rep, "malformed_row")[0]["examples"][0].endswith("Seattle/same_area_balanced_test.txt:1")
    assert "Jeff-Zilence/VIGOR" in problems(rep, "missing_split_file")[0]["fix"]


def test_university_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_university(tmp_path / "U")
    shutil.rmtree(root / "test" / "gallery_drone")
    rc, rep = run_json(capsys, "university", root)
    assert rc == 1 and [s["name"] for s in rep["splits"] if s["status"] == "error"] == ["university-s2d"]
    assert rep["splits"][0]["gps"]["note"].startswith("University-1652 has no GPS")
    rc, text = run(capsys, "--dataset", "cvusa", "--root", str(tmp_path / "nowhere"))
    assert rc == 1 and "not a directory" in text
    with pytest.raises(SystemExit) as ei:
        main(["check", "--dataset", "imagenet", "--root", str(root)])
    assert ei.value.code == 2
    with pytest.raises(ValueError):
        check_dataset("imagenet", root)
