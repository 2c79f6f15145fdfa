"""End-to-end trainer runs on CPU with a tiny timm model: outputs, sampling schedule, DDP smoke run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import assert_same_state, epoch_records, read_jsonl, tiny_args, tiny_cvusa
from s4g_train.budget import TimeBudget
from s4g_train.checkpoint import load_checkpoint, load_model
from s4g_train.device import cpu_has_native_bf16, pick_amp
from s4g_train.lr import CosineWarmup
from s4g_train.trainer import main

TESTS = Path(__file__).resolve().parent


def test_tiny_training_run_writes_config_metrics_checkpoints_and_evaluates(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tiny_cvusa(tmp_path / "data")
    run = tmp_path / "run"
    rc = main(tiny_args(data, run, "--set", "train.epochs=3", "--set", "eval.every=2",
                        "--set", "sampling.dss_start_epoch=1", "--set", "sampling.dss_every=1"))
    assert rc == 0
    out = capsys.readouterr().out
    assert "| R@1 |" in out.replace("| model | R@1 |", "| R@1 |")
    assert (run / "config.yaml").is_file()
    recs = read_jsonl(run / "metrics.jsonl")
    epochs = [r for r in recs if r["event"] == "epoch"]
    evals = [r for r in recs if r["event"] == "eval"]
    final = [r for r in recs if r["event"] == "final"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["epoch"] for r in evals] == [2, 3] and len(final) == 1
    for r in epochs:
        assert np.isfinite(r["loss"]) and r["hardness_sim"] is not None and r["hardness_gps_m"] > 0
        assert set(r) >= {"epoch", "step", "loss", "logit_scale", "lr", "hardness_sim", "hardness_gps_m",
                          "sampling", "time_s"}
    # gps+dss: GPS lists in epoch 1, mined DSS lists after epoch 1 (dss_start_epoch=1), refreshed every epoch
    assert [r["sampling"] for r in epochs] == ["gps", "dss", "dss"]
    assert "dss_refresh_s" in epochs[0] and "dss_refresh_s" in epochs[1] and "dss_refresh_s" not in epochs[2]
    for k in ("R@1", "R@5", "R@10", "R@1%"):
        assert 0.0 <= final[0][k] <= 100.0
    assert epochs[-1]["step"] == 3 * (24 // 8)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["format"] == "s4g-checkpoint" and last["epoch"] == 3 and "train_state" in last
    model, info = load_model(run / "checkpoints" / "best.pt")
    assert info["epoch"] in (2, 3) and model.cfg.backbone == "test_convnext"
    best_r1 = max(r["R@1"] for r in evals)
    assert info["metrics"]["R@1"] == best_r1
    # a second run into the same folder is refused (use --resume)
    assert main(tiny_args(data, run, "--set", "train.epochs=3")) == 2


def test_dss_waits_for_the_measured_criterion(tmp_path: Path) -> None:
    data = tiny_cvusa(tmp_path / "data")
    run = tmp_path / "run"
    assert main(tiny_args(data, run, "--set", "train.epochs=3", "--set", "eval.every=5", "--set",
                          "sampling.strategy=dss", "--set", "sampling.dss_start_epoch=1",
                          "--set", "sampling.dss_start_r1=101", "--set", "train.final_eval=false")) == 0
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["event"] == "epoch"]
    assert [r["sampling"] for r in epochs] == ["random"] * 3  # criterion never met: no DSS
    assert all("train_r1" in r for r in epochs[:2]) and not any("dss_refresh_s" in r for r in epochs)


def test_time_budget_cuts_the_run_and_resume_finishes_it_identically(  # type: ignore[no-untyped-def]
        tmp_path: Path, capsys, monkeypatch) -> None:
    """The budget never re-plans: the run is cut (checkpointed mid-epoch) and --resume gives the uncut run."""
    data = tiny_cvusa(tmp_path / "data")
    sched = ["--set", "train.epochs=3", "--set", "eval.every=1", "--set", "sampling.dss_start_epoch=1",
             "--set", "train.final_eval=false"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(tiny_args(data, full, *sched)) == 0
    calls = {"n": 0}

    def over(self, next_s: float, reserve_s: float = 0.0) -> bool:  # the budget is reached before step 5
        calls["n"] += 1
        return calls["n"] >= 5

    monkeypatch.setattr(TimeBudget, "over", over)
    assert main(tiny_args(data, cut, *sched, "--set", "train.time_budget_min=1")) == 0
    assert "the run was cut, not shortened" in capsys.readouterr().out
    st = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert st["epoch"] == 1 and st["train_state"]["step"] == 4 and st["train_state"]["schedule"]["pos"] == 1
    assert st["train_state"]["epochs"] == 3  # the schedule still plans all epochs
    assert not [r for r in read_jsonl(cut / "metrics.jsonl") if r["event"] == "final"]
    monkeypatch.undo()
    assert main(["--resume", str(cut)]) == 0
    assert_same_state(full / "checkpoints" / "last.pt", cut / "checkpoints" / "last.pt")
    assert epoch_records(cut) == epoch_records(full)


def test_time_budget_warns_early_when_the_run_will_not_fit(caplog) -> None:  # type: ignore[no-untyped-def]
    b = TimeBudget(1.0)
    b.elapsed_before = 20.0
    with caplog.at_level("WARNING", logger="s4g_train.budget"):
        b.warn_if_projected_over(epochs_left=3, epoch_s=10.0, reserve_s=5.0, epochs=5)  # ≈ 55 s: fits
        assert not caplog.records
        b.warn_if_projected_over(epochs_left=4, epoch_s=10.0, reserve_s=5.0, epochs=6)  # ≈ 65 s: does not
        b.warn_if_projected_over(epochs_left=4, epoch_s=10.0, reserve_s=5.0, epochs=6)  # once only
    assert len(caplog.records) == 1 and "not shortened" in caplog.records[0].getMessage()
    assert not b.over(30.0) and b.over(45.0)
    assert not TimeBudget(None).over(1e9)


def test_cosine_warmup_schedule_per_iteration() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = CosineWarmup(opt, base_lr=1.0, warmup=4, total=14)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(14):
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert np.allclose(lrs[:5], [0.25, 0.5, 0.75, 1.0, 1.0])
    assert np.isclose(lrs[9], 0.5) and np.isclose(lrs[14], 0.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_amp_selection() -> None:
    assert pick_amp("off", torch.device("cpu")) == (None, False)
    assert pick_amp("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    expected = (torch.bfloat16, False) if cpu_has_native_bf16() else (None, False)
    assert pick_amp("auto", torch.device("cpu")) == expected
    with pytest.raises(ValueError, match="needs CUDA"):
        pick_amp("fp16", torch.device("cpu"))
    assert pick_amp("auto", torch.device("cuda")) == (torch.float16, True)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_process_smoke_run(tmp_path: Path) -> None:
    """2 CPU ranks (gloo): each takes half of the global batch; rank 0 writes the run folder."""
    data = tiny_cvusa(tmp_path / "data")
    run = tmp_path / "run"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [torchrun, "--nproc_per_node=2", "--master_port=29533", "-m", "s4g_train.trainer",
           *tiny_args(data, run, "--set", "train.epochs=2", "--set", "eval.every=1", "--set",
                      "sampling.dss_start_epoch=1")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = read_jsonl(run / "metrics.jsonl")
    epochs = [r for r in recs if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]  # one line per epoch: only rank 0 logs
    assert [r["sampling"] for r in epochs] == ["gps", "dss"]
    assert len([r for r in recs if r["event"] == "final"]) == 1
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert "| R@1 |" in p.stdout.replace("| model | R@1 |", "| R@1 |")
