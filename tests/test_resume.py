"""Resume: an interrupted run (stopped after an epoch, or killed with SIGKILL mid-epoch) continues
bit-identically to an uninterrupted one — model, optimiser, LR schedule, RNG and batch schedule; checkpoints
of the layout before ``s4g_train.schedule`` are converted; a resume that would change the run is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import assert_same_state, epoch_records, tiny_args, tiny_cvusa
from s4g_engine.datasets import load_split
from s4g_train.checkpoint import load_checkpoint, save_checkpoint
from s4g_train.config import SamplingConfig
from s4g_train.schedule import gps_table
from s4g_train.trainer import main

TESTS = Path(__file__).resolve().parent
# DSS from epoch 1 and refreshed every epoch: the batch schedule's state (mined lists) must survive the restart
SCHEDULE = ["--set", "train.epochs=3", "--set", "eval.every=1", "--set", "sampling.dss_start_epoch=1",
            "--set", "sampling.dss_every=1", "--set", "train.final_eval=false"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("resume")
    data = tiny_cvusa(tmp / "data")
    run = tmp / "full"
    assert main(tiny_args(data, run, *SCHEDULE)) == 0
    return data, run


def test_stop_after_an_epoch_then_resume_is_identical(reference_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, full = reference_run
    run = tmp_path / "split"
    assert main(tiny_args(data, run, *SCHEDULE, "--set", "train.stop_after_epochs=1")) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert main(["--resume", str(run), "--set", "train.stop_after_epochs=null"]) == 0
    assert_same_state(full / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    lines = lambda p: [ln for ln in (p / "metrics.jsonl").read_text().splitlines() if '"epoch", "epoch"' in ln]  # noqa: E731
    strip = lambda ln: ln.split('"time_s"')[0]  # noqa: E731 - everything before the timings must match
    assert [strip(x) for x in lines(full)] == [strip(x) for x in lines(run)]


def test_sigkill_mid_epoch_then_resume_is_identical(reference_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, full = reference_run
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "s4g_train.trainer",
           *tiny_args(data, run, *SCHEDULE, "--set", "train.save_every_steps=1")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file():
                time.sleep(0.3)  # let it get a little further: we kill wherever it happens to be
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert last.is_file(), "the training subprocess wrote no checkpoint"
    killed_at = load_checkpoint(last)
    assert killed_at["train_state"]["step"] >= 1
    assert main(["--resume", str(run), "--set", "train.save_every_steps=null"]) == 0
    assert_same_state(full / "checkpoints" / "last.pt", last)
    # the mid-epoch losses travel in the checkpoint: the log reads like the uninterrupted run's
    assert epoch_records(run) == epoch_records(full)


def _unpack(d: dict | None) -> torch.Tensor | None:
    return None if d is None else torch.from_numpy(np.frombuffer(d["data"], "<i8").reshape(d["shape"]).copy())


def to_old_layout(path: Path, data: Path) -> None:
    """Rewrite a last.pt in the layout of s4g before ``s4g_train.schedule`` (trainer-inline sampler state)."""
    p = load_checkpoint(path)
    st = p["train_state"]
    sch = st.pop("schedule")
    gps = gps_table(load_split("cvusa", str(data), "train"), SamplingConfig(K=8))
    st["rng"]["sampler"] = sch["rng"]
    st["sampler"] = {"gps_nb": torch.from_numpy(gps), "dss_nb": _unpack(sch["dss"]),
                     "dss_active": sch["dss_active"], "last_refresh": sch["last_refresh"],
                     "epoch_batches": _unpack(sch["batches"]), "batch_pos": sch["pos"]}
    st["planned_epochs"] = st.pop("epochs")
    del st["epoch_losses"], st["epoch_hards"]
    save_checkpoint(path, p)


def test_checkpoint_of_the_old_layout_is_converted(reference_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, full = reference_run
    run = tmp_path / "old"
    assert main(tiny_args(data, run, *SCHEDULE, "--set", "train.stop_after_epochs=2")) == 0
    to_old_layout(run / "checkpoints" / "last.pt", data)
    assert "schedule" not in load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]
    assert main(["--resume", str(run), "--set", "train.stop_after_epochs=null"]) == 0
    assert_same_state(full / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")


def test_resume_that_would_change_the_run_is_refused(reference_run: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = reference_run
    run = tmp_path / "run"
    assert main(tiny_args(data, run, *SCHEDULE, "--set", "train.stop_after_epochs=1")) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert main(["--resume", str(run), "--set", "train.epochs=5"]) == 2
    assert "run of 3 epochs" in capsys.readouterr().err
    assert main(["--resume", str(run), "--set", "sampling.dss_every=2"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "'dss_every': (1, 2)" in err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before  # a refused resume writes nothing
    # an old checkpoint whose schedule the former wall-clock budget shortened: say how to finish it as planned
    to_old_layout(run / "checkpoints" / "last.pt", data)
    p = load_checkpoint(run / "checkpoints" / "last.pt")
    p["train_state"]["planned_epochs"] = 2
    save_checkpoint(run / "checkpoints" / "last.pt", p)
    assert main(["--resume", str(run)]) == 2
    assert "--set train.epochs=2" in capsys.readouterr().err


def test_resume_errors(tmp_path: Path) -> None:
    assert main(["--resume", str(tmp_path / "nothing")]) == 2
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"format": "s4g-checkpoint", "x": torch.ones(3)})
    p.write_bytes(p.read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(p)
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_checkpoint(p)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
