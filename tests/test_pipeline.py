"""``s4g-pipeline`` end to end on a tiny synthetic world: every artefact exists, the demo localised with the
bundle the run just exported (not the shipped model), and a rerun reuses every finished stage."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest

from s4g_engine.index import ReferenceIndex
from s4g_train.pipeline import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.synth.pairs=40", "--set", "data.synth.options={workers: 1, tile_size: 64, pano_size: [32, 128]}",
        "--set", "model.backbone=test_convnext", "--set", "train.epochs=2", "--set", "train.batch_size=8",
        "--set", "sampling.k=4", "--set", "sampling.K=8", "--set", "sampling.dss_mining_size=null",
        "--set", "eval.every=0", "--set", "eval.select=auto", "--set", "train.threads=1", "--set", "eval.batch_size=16",
        "--set", "train.ema_decay=0.9", "--set", "data.val_from_train=0"]
DEMO = ["--demo-pairs", "20", "--demo-seed", "7", "--demo-queries", "2", "--k", "3"]


def _args(tmp: Path, *extra: str) -> list[str]:
    return ["--preset", "synthetic", "--run-dir", str(tmp / "run"), "--set", f"data.root={tmp / 'data'}", *TINY,
            *DEMO, *extra]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("pipeline")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(_args(tmp)) == 0
    return tmp, out.getvalue()


def test_every_artefact_exists_and_the_demo_used_the_new_bundle(pipeline_run: tuple[Path, str]) -> None:
    tmp, out = pipeline_run
    run = tmp / "run"
    s = json.loads((run / "summary.json").read_text())
    for key in ("final_checkpoint", "bundle", "city", "index", "geojson", "results"):
        assert Path(s[key]).exists(), key
    for f in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/final.pt", "bundle/config.json",
              "bundle/ground.onnx", "bundle/aerial.onnx"):
        assert (run / f).is_file(), f
    assert len(s["pictures"]) == 2 and all(Path(p).stat().st_size > 1000 for p in s["pictures"])
    assert [x["name"] for x in s["stages"]] == ["world", "train", "export", "city", "index", "localise", "picture"]
    assert set(s["test"]) == {"R@1", "R@5", "R@10", "R@1%"} and all(0 <= v <= 100 for v in s["test"].values())
    assert "EMA weights of the last epoch" in s["selection"]
    # the bundle is the export of this run's final.pt …
    bundle = json.loads((run / "bundle" / "config.json").read_text())
    final_sha = hashlib.sha256((run / "checkpoints" / "final.pt").read_bytes()).hexdigest()
    assert bundle["provenance"]["checkpoint_sha256"] == final_sha
    assert "features" in bundle["views"]["ground"]["outputs"]
    # … and the index and the localisation used it, not the shipped model
    shipped = json.loads((ROOT / "models" / "s4g-synthetic" / "config.json").read_text())["fingerprint"]
    index = ReferenceIndex.load(s["index"])
    assert s["fingerprint"] == bundle["fingerprint"] == index.fingerprint == s["demo"]["fingerprint"] != shipped
    assert len(index) == 20  # every tile of the fresh city (train and test tiles)
    assert "s7-" in Path(s["city"]).name and "s0-" not in Path(s["city"]).name  # another seed than training
    gj = json.loads(Path(s["geojson"]).read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2 * 3
    res = json.loads(Path(s["results"]).read_text())
    assert all(r["true_tile"] for r in res["results"])
    for word in ("R@1", "bundle:", "index:", "geojson:", "picture:", "time:"):
        assert word in out


def test_a_rerun_reuses_every_finished_stage(pipeline_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    tmp, _ = pipeline_run
    run = tmp / "run"
    before = (run / "checkpoints" / "final.pt").stat().st_mtime_ns, (run / "bundle" / "config.json").read_text()
    assert main(_args(tmp)) == 0
    s = json.loads((run / "summary.json").read_text())
    reused = {x["name"]: x["reused"] for x in s["stages"]}
    assert reused == {"world": True, "train": True, "export": True, "city": True, "index": True,
                      "localise": False, "picture": False}
    assert before == ((run / "checkpoints" / "final.pt").stat().st_mtime_ns,
                      (run / "bundle" / "config.json").read_text())
    capsys.readouterr()


def test_a_run_folder_of_another_config_or_the_training_seed_is_refused(
        pipeline_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    tmp, _ = pipeline_run
    assert main(_args(tmp, "--set", "optim.lr=0.5")) == 2
    err = capsys.readouterr().err
    assert "another config" in err and "optim.lr" in err
    assert main(_args(tmp, "--demo-seed", "0")) == 2
    assert "seed of the training world" in capsys.readouterr().err


def test_the_city_reads_from_a_relative_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's command runs with the default, relative run dir (runs/synthetic): the demo city's tile ids
    must come out the same as from an absolute path (the readers return absolute paths; a relative world path
    made Path.relative_to fail after training)."""
    from s4g_synth import generate_dataset
    from s4g_train.pipeline import _read_city

    world = generate_dataset("cvusa", tmp_path / "runs" / "city", pairs=12, seed=5, tile_size=64,
                             pano_size=(32, 128), workers=1)
    monkeypatch.chdir(tmp_path)
    relative = _read_city("cvusa", Path(world).relative_to(tmp_path), 3)
    absolute = _read_city("cvusa", Path(world), 3)
    assert relative.ids == absolute.ids and relative.truth_ids == absolute.truth_ids
    assert len(relative.ids) == 12 and all(not i.startswith("/") for i in relative.ids)
