"""s4g-ablate on a tiny config: one table, tiny runs, printed next to the paper's numbers, JSON of all runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s4g_train.ablate import PAPER, format_ablation, main, variants
from trainer_util import TINY, tiny_cvusa


def test_table2_tiny(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tiny_cvusa(tmp_path / "data")
    out = tmp_path / "abl"
    argv = ["--preset", "cvusa", "--tables", "2", "--out", str(out), "--set", f"data.root={data}", *TINY,
            "--set", "train.epochs=1", "--set", "sampling.strategy=random"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Table 2: loss direction" in text and "| Sat→Street | sat2street |" in text
    assert "74.69" in text and "77.86" in text  # the paper's numbers beside ours
    res = json.loads((out / "ablation.json").read_text())
    rows = res["tables"]["2"]
    assert [r["slug"] for r in rows] == ["sat2street", "street2sat", "both"]
    for r in rows:
        assert 0 <= r["metrics"]["R@1"] <= 100
        cfg = (Path(r["run"]) / "config.yaml").read_text()
        assert f"loss: {r['overrides'][0].split('=')[1]}" in cfg
    # finished runs are reused, not retrained
    mtime = (Path(rows[0]["run"]) / "metrics.jsonl").stat().st_mtime
    assert main(argv) == 0
    assert (Path(rows[0]["run"]) / "metrics.jsonl").stat().st_mtime == mtime


def test_variants_and_formatting() -> None:
    ks = [v[2][0][1] for v in variants("1", 256, None, None)]
    assert ks == ["16", "32", "64", "128"]
    assert [v[2][0][1] for v in variants("1", 64, None, None)] == ["4", "8", "16", "32"]
    with pytest.raises(ValueError, match="smaller than the batch"):
        variants("1", 64, [16, 64], None)
    with pytest.raises(ValueError, match="unknown table"):
        variants("5", 64, None, None)
    rows = [{"label": "Random", "slug": "random", "metrics": {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0, "R@1%": 4.0}}]
    assert "60.57" in format_ablation("4", rows, "cvact") and "97.83" in format_ablation("4", rows, "cvusa")
    assert set(PAPER) == {"1", "2", "3", "4"}
