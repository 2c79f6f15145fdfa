"""The schedule never depends on the clock: the same seed gives the same number of epochs, the same batches
and the same model on a fast and on a slow machine (simulated by a fake clock), and a time budget that a
slow machine passes cuts the run (resumable) instead of shortening its schedule."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from helpers.training import assert_same_state, epoch_records, tiny_args, tiny_cvusa
from s4g_train.checkpoint import load_checkpoint
from s4g_train.schedule import BatchSchedule
from s4g_train.trainer import main

SCHEDULE = ["--set", "train.epochs=3", "--set", "eval.every=1", "--set", "sampling.dss_start_epoch=1",
            "--set", "sampling.dss_every=1", "--set", "train.final_eval=false"]


def _run(monkeypatch: pytest.MonkeyPatch, data: Path, run: Path, seconds_per_call: float,
         *extra: str) -> list[np.ndarray]:
    """Train with a clock that advances ``seconds_per_call`` at every reading; returns each epoch's batches."""
    now = [1000.0]

    def clock() -> float:
        now[0] += seconds_per_call
        return now[0]

    batches: list[np.ndarray] = []
    end_epoch = BatchSchedule.end_epoch

    def record(self: BatchSchedule) -> None:
        batches.append(np.array(self.batches(), copy=True))
        end_epoch(self)

    with monkeypatch.context() as m:
        m.setattr(time, "perf_counter", clock)
        m.setattr(time, "process_time", clock)
        m.setattr(BatchSchedule, "end_epoch", record)
        assert main(tiny_args(data, run, *SCHEDULE, *extra)) == 0
    return batches


def test_same_seed_same_epochs_batches_and_model_on_a_fast_and_a_slow_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_cvusa(tmp_path / "data")
    fast = _run(monkeypatch, data, tmp_path / "fast", 1e-6)
    slow = _run(monkeypatch, data, tmp_path / "slow", 120.0)  # every clock reading two minutes later
    assert len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)
    assert epoch_records(tmp_path / "fast") == epoch_records(tmp_path / "slow")
    assert_same_state(tmp_path / "fast" / "checkpoints" / "last.pt", tmp_path / "slow" / "checkpoints" / "last.pt")
    # a different seed does give other batches (the comparison above can fail)
    other = _run(monkeypatch, data, tmp_path / "other", 1e-6, "--set", "train.seed=2")
    assert not np.array_equal(other[0], fast[0])


def test_a_budget_passed_on_a_slow_machine_cuts_the_run_it_never_shortens_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    data = tiny_cvusa(tmp_path / "data")
    fast = _run(monkeypatch, data, tmp_path / "fast", 1e-6, "--set", "train.time_budget_min=60")
    cut = _run(monkeypatch, data, tmp_path / "cut", 120.0, "--set", "train.time_budget_min=60")
    # the slow machine passed the hour in epoch 2 (so the comparison below is not empty) and stopped …
    assert len(fast) == 3 and 1 <= len(cut) < 3, len(cut)
    assert "continue with s4g-train --resume" in capsys.readouterr().out
    st = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["train_state"]
    assert st["epochs"] == 3  # … with the schedule of 3 epochs intact (its LR schedule still ends at epoch 3)
    for a, b in zip(fast, cut):  # the epochs it did are the fast machine's
        np.testing.assert_array_equal(a, b)
