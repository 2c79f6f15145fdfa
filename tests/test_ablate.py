"""s4g-ablate: tiny runs over seeds, printed next to the paper's numbers with mean ± sd and ordering verdicts,
JSON of all runs, finished runs reused when more seeds are asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.training import TINY, tiny_cvusa
from s4g_train.ablate import (
    PAPER,
    format_ablation,
    main,
    orderings,
    run_outcome,
    summarise,
    table1_k,
    variants,
    verdict,
)


def test_table2_tiny_over_seeds(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tiny_cvusa(tmp_path / "data")
    out = tmp_path / "abl"
    argv = ["--preset", "cvusa", "--tables", "2", "--out", str(out), "--set", f"data.root={data}", *TINY,
            "--set", "train.epochs=1", "--set", "sampling.strategy=random", "--set", "eval.every=0"]
    assert main([*argv, "--seeds", "1"]) == 0
    text = capsys.readouterr().out
    assert "Table 2: loss direction" in text and "| Sat→Street | sat2street | 1 |" in text
    assert "74.69" in text and "77.86" in text  # the paper's numbers beside ours
    assert "single run: no verdict" in text  # one seed makes no claim
    first = out / "t2-sat2street" / "seed1" / "metrics.jsonl"
    mtime = first.stat().st_mtime
    # two seeds: the seed-1 runs are reused, seed 2 is trained; cells become mean ± sd, orderings get a verdict
    assert main([*argv, "--seeds", "2"]) == 0
    assert first.stat().st_mtime == mtime
    text = capsys.readouterr().out
    assert "| Sat→Street | sat2street | 2 |" in text and " ± " in text
    res = json.loads((out / "ablation.json").read_text())
    assert res["seeds"] == [1, 2]
    rows = res["tables"]["2"]["rows"]
    assert [r["slug"] for r in rows] == ["sat2street", "street2sat", "both"]
    for r in rows:
        assert [x["seed"] for x in r["runs"]] == [1, 2] and r["summary"]["R@1"]["n"] == 2
        for x in r["runs"]:
            assert 0 <= x["metrics"]["R@1"] <= 100
            cfg = (Path(x["run"]) / "config.yaml").read_text()
            assert f"loss: {r['overrides'][0].split('=')[1]}" in cfg and f"seed: {x['seed']}" in cfg
    ords = res["tables"]["2"]["orderings"]
    assert {(o["higher"], o["lower"]) for o in ords} == {("Street→Sat", "Sat→Street"), ("Street↔Sat", "Sat→Street"),
                                                         ("Street↔Sat", "Street→Sat")}
    assert all(o["verdict"] in ("holds", "reversed", "within noise") for o in ords)


def test_table1_k_scaling() -> None:
    # the paper: batch 128, K = 128, k/B = 1/8 … 1; k = B cannot run (k < B), so its row takes the largest even k < B
    assert table1_k(32) == ([4, 8, 16, 30], 32)
    assert table1_k(128) == ([16, 32, 64, 126], 128)
    assert table1_k(256) == ([16, 32, 64, 128], 128)
    v = variants("1", 32, None, None)
    assert [x[0] for x in v] == ["k=16", "k=32", "k=64", "k=128"]
    assert [x[2] for x in v][3] == [("sampling.k", "30"), ("sampling.K", "32")]
    with pytest.raises(ValueError, match="smaller than the batch"):
        variants("1", 64, [16, 64], None)
    with pytest.raises(ValueError, match="unknown table"):
        variants("5", 64, None, None)


def test_verdicts_and_formatting() -> None:
    assert verdict([80.0, 81.0, 79.5], [70.0, 71.0, 69.0])[0] == "holds"
    assert verdict([70.0, 71.0, 69.0], [80.0, 81.0, 79.5])[0] == "reversed"
    v, p = verdict([75.0, 78.0, 72.0], [74.0, 77.0, 73.0])
    assert v == "within noise" and p > 0.05
    assert verdict([80.0], [70.0, 71.0]) == ("single run: no verdict", None)
    assert verdict([5.0, 5.0], [5.0, 5.0])[0] == "within noise" and verdict([6.0, 6.0], [5.0, 5.0])[0] == "holds"
    s = summarise([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    run = lambda r1: {"metrics": {"R@1": r1, "R@5": 2.0, "R@10": 3.0, "R@1%": 4.0, "hit_rate": r1 + 5}}  # noqa: E731
    rows = [{"label": "k=16", "slug": "k4", "runs": [run(10.0), run(11.0), run(12.0)]},
            {"label": "k=64", "slug": "k16", "runs": [run(30.0), run(31.0), {"collapsed": {"step": 60}}]}]
    text = format_ablation("1", rows, "vigor-same")
    assert "| k=16 | k4 | 3 | 11.00 ± 1.00 |" in text and "| k=64 | k16 | 2 (+1 collapsed) | 30.50 ± 0.71 |" in text
    assert "| k=64 > k=16 | 1.02 | +19.50 |" in text and "holds" in text and "77.86" in text
    assert [o["verdict"] for o in orderings("1", rows, "vigor-same")] == ["holds"]
    rows4 = [{"label": "Random", "slug": "random", "runs": [run(1.0)]}]
    assert "60.57" in format_ablation("4", rows4, "cvact") and "97.83" in format_ablation("4", rows4, "cvusa")
    assert set(PAPER) == {"1", "2", "3", "4"}


def test_collapsed_run_is_an_outcome(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    assert run_outcome(run) is None
    (run / "metrics.jsonl").write_text(json.dumps({"event": "epoch", "epoch": 1}) + "\n")
    assert run_outcome(run) is None
    (run / "metrics.jsonl").write_text(json.dumps({"event": "collapse", "step": 60, "action": "stop"}) + "\n")
    assert run_outcome(run) == {"collapsed": {"step": 60, "action": "stop"}}
