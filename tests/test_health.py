"""Collapse detection (s4g_train/health.py) on synthetic loss/hardness traces, and its hook in s4g-train."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from helpers.training import read_jsonl, tiny_args, tiny_cvusa
from s4g_train.config import build_config
from s4g_train.health import EXIT_COLLAPSED, CollapseCriteria, CollapseMonitor, TrainingCollapsed, advice_for

B = 32
LN_B = math.log(B)


def healthy(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """A learning run: loss from above ln B down to ~1.5, hardness 0.4 → 0.8, with noise."""
    t = np.linspace(0, 1, n)
    loss = 5.5 - 4.0 * t + rng.normal(0, 0.05, n)
    hard = 0.4 + 0.4 * t + rng.normal(0, 0.02, n)
    return list(zip(loss.tolist(), hard.tolist()))


def pinned(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """A collapsed run: loss = ln B to within bf16 noise, every similarity ≈ 1."""
    return list(zip((LN_B + rng.normal(0, 1e-3, n)).tolist(), (1.0 - rng.uniform(0, 2e-4, n)).tolist()))


def feed(mon: CollapseMonitor, trace: list[tuple[float, float]], start: int = 1) -> list[int]:
    """Steps at which the monitor reported a collapse (warn mode)."""
    return [s for s, (loss, hard) in enumerate(trace, start) if mon.observe(s, loss, hard)]


def test_healthy_traces_never_fire() -> None:
    rng = np.random.default_rng(0)
    mon = CollapseMonitor(B, "stop", CollapseCriteria(window=20))
    feed(mon, healthy(500, rng))  # would raise
    # a plateau AT ln B (the random-init plateau) with diverse embeddings is not a collapse
    plateau = list(zip((LN_B + rng.normal(0, 1e-3, 200)).tolist(), rng.uniform(0.85, 0.97, 200).tolist()))
    feed(mon, plateau)
    # similarities ≈ 1 but a loss clearly below ln B: the positives still win, not a collapse
    feed(mon, list(zip((LN_B - 0.3 + rng.normal(0, 1e-3, 200)).tolist(), [0.9995] * 200)))


def test_collapse_stops_after_exactly_one_window() -> None:
    rng = np.random.default_rng(1)
    trace = healthy(30, rng) + pinned(100, rng)
    mon = CollapseMonitor(B, "stop", CollapseCriteria(window=50), advice="Advice: lower optim.lr.")
    with pytest.raises(TrainingCollapsed) as exc:
        feed(mon, trace)
    msg = str(exc.value)
    assert "steps (31–80)" in msg and f"ln B = {LN_B:.4f}" in msg and "hardness 1.000" in msg
    assert "Advice: lower optim.lr." in msg and "train.collapse=warn" in msg
    assert isinstance(exc.value, RuntimeError)  # StateError: callers catching RuntimeError still do


def test_an_interruption_restarts_the_window_and_warn_reports_once(caplog) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    records: list[dict] = []
    mon = CollapseMonitor(B, "warn", CollapseCriteria(window=10),
                          record=lambda event, **kw: records.append({"event": event, **kw}))
    trace = pinned(9, rng) + [(LN_B - 0.5, 0.7)] + pinned(30, rng)  # 9 pinned, one good step, 30 pinned
    with caplog.at_level(logging.WARNING, logger="s4g_train.health"):
        fired = feed(mon, trace)
    assert fired == [20]  # 11..20 is the first full window; reported once, not again while still pinned
    assert records == [{"event": "collapse", "step": 20, "first_step": 11, "last_step": 20, "ln_b": LN_B,
                        "loss": trace[19][0], "hardness": trace[19][1], "action": "warn"}]
    assert "training collapsed" in caplog.text and "goes on" in caplog.text
    # leaving the collapse and falling into it again is a new report
    assert feed(mon, [(LN_B - 0.5, 0.7)] + pinned(10, rng), start=41) == [51]


def test_off_triplet_and_bad_arguments() -> None:
    rng = np.random.default_rng(3)
    assert feed(CollapseMonitor(B, "off", CollapseCriteria(window=5)), pinned(50, rng)) == []
    # triplet losses: a collapsed triplet loss is the margin, not ln B: similarities alone decide
    trip = CollapseMonitor(B, "warn", CollapseCriteria(window=5), softmax_loss=False)
    assert feed(trip, [(0.3, 0.9999)] * 5) == [5]
    with pytest.raises(ValueError, match="expected one of"):
        CollapseMonitor(B, "explode")
    with pytest.raises(ValueError, match="window"):
        CollapseMonitor(B, "stop", CollapseCriteria(window=0))
    assert not CollapseMonitor(B).pinned(float("nan"), 1.0)


def test_ddp_verdict_comes_from_rank0_every_fifth_of_a_window() -> None:
    calls: list[bool] = []

    def rank0_says_collapsed(local: bool) -> bool:  # what dist.broadcast_object returns on a rank ≠ 0
        calls.append(local)
        return True

    mon = CollapseMonitor(B, "stop", CollapseCriteria(window=50), share=rank0_says_collapsed)
    for s in range(1, 10):  # this rank's own view is healthy; no verdict is shared before step 10
        mon.observe(s, 2.0, 0.5)
    assert calls == []
    with pytest.raises(TrainingCollapsed, match="loss stayed at = ln B"):
        mon.observe(10, 2.0, 0.5)
    assert calls == [False]


def test_advice_names_the_runs_values() -> None:
    cfg = build_config("synthetic", overrides=[("data.dataset", "vigor-same"), ("optim.lr", "0.002")])
    text = advice_for(cfg, steps_per_epoch=31)
    steps = 31 * cfg.train.epochs
    assert "optim.lr=0.002" in text and f"= 31 of {steps} steps" in text and "model.tile_centres=5" in text
    # a VIGOR run that already re-centres its tiles is not told to
    centred = build_config("synthetic", overrides=[("data.dataset", "vigor-same"), ("model.tile_centres", "5")])
    assert "tile_centres" not in advice_for(centred, steps_per_epoch=31)
    plain = advice_for(build_config("synthetic"), steps_per_epoch=75)
    assert "polar" not in plain and "s4g-data check" in plain
    with pytest.raises(ValueError, match="train.collapse"):
        build_config("synthetic", overrides=[("train.collapse", "maybe")])


def test_trainer_stops_a_collapsed_run_with_exit_code_3(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """The hook: a step that reports (ln B, 1.0) — what a collapsed network gives — stops s4g-train."""
    from s4g_train import step, trainer

    real = step.TrainStep.__call__

    def collapsed(self, g, a):  # type: ignore[no-untyped-def]
        real(self, g, a)
        return math.log(8), 1.0  # TINY: batch 8

    monkeypatch.setattr(step.TrainStep, "__call__", collapsed)
    data = tiny_cvusa(tmp_path / "data", n_train=24)
    run = tmp_path / "run"
    rc = trainer.main(tiny_args(data, run, "--set", "train.epochs=10", "--set", "train.collapse_window=5",
                                "--set", "sampling.strategy=random"))
    assert rc == EXIT_COLLAPSED
    err = capsys.readouterr().err
    assert "training collapsed" in err and "Advice: Lower the learning rate" in err
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r for r in recs if r["event"] == "collapse"][0]["step"] == 5
    assert not any(r["event"] == "final" for r in recs)
