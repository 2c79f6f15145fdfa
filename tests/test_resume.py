"""Resume: an interrupted run (stopped after an epoch, or killed with SIGKILL mid-epoch) continues
bit-identically to an uninterrupted one — model, optimiser, schedule, RNG and sampler state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from s4g_train.checkpoint import load_checkpoint, save_checkpoint
from s4g_train.trainer import main
from trainer_util import tiny_args, tiny_cvusa

TESTS = Path(__file__).resolve().parent
# DSS from epoch 1 and refreshed every epoch: the sampler state (mined lists) must survive the restart too
SCHEDULE = ["--set", "train.epochs=3", "--set", "eval.every=1", "--set", "sampling.dss_start_epoch=1",
            "--set", "sampling.dss_every=1", "--set", "train.final_eval=false"]


def assert_same_state(a: Path, b: Path) -> None:
    pa, pb = load_checkpoint(a), load_checkpoint(b)
    assert pa["epoch"] == pb["epoch"] and pa["train_state"]["step"] == pb["train_state"]["step"]
    for k, v in pa["model"].items():
        assert torch.equal(v, pb["model"][k]), k
    oa, ob = pa["train_state"]["optimizer"]["state"], pb["train_state"]["optimizer"]["state"]
    for i in oa:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(oa[i][k], ob[i][k]), (i, k)
    assert pa["train_state"]["scheduler"] == pb["train_state"]["scheduler"]
    sa, sb = pa["train_state"]["sampler"], pb["train_state"]["sampler"]
    assert torch.equal(sa["dss_nb"], sb["dss_nb"])


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
