"""Shared helpers of the trainer tests: a tiny CVUSA-layout fixture, a tiny-run argument list, and the
comparison of two runs' final training states."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.layouts import make_cvusa
from s4g_train.checkpoint import load_checkpoint

TINY = [
    "--set", "model.backbone=test_convnext", "--set", "model.ground_size=[32,128]",
    "--set", "model.aerial_size=[32,32]", "--set", "train.batch_size=8", "--set", "sampling.k=4",
    "--set", "sampling.K=8", "--set", "eval.batch_size=16", "--set", "train.threads=1", "--set", "data.num_workers=0",
]


def tiny_cvusa(root: Path, n_train: int = 24, n_test: int = 10) -> Path:
    return make_cvusa(root, n_train=n_train, n_test=n_test, scale=8.0)


def tiny_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["--preset", "cvusa", "--run-dir", str(run), "--set", f"data.root={data}", *TINY, *extra]


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def assert_same_state(a: Path, b: Path) -> None:
    """Two last.pt files hold the same model, optimiser, LR schedule and batch schedule."""
    pa, pb = load_checkpoint(a), load_checkpoint(b)
    assert pa["epoch"] == pb["epoch"] and pa["train_state"]["step"] == pb["train_state"]["step"]
    for k, v in pa["model"].items():
        assert torch.equal(v, pb["model"][k]), k
    oa, ob = pa["train_state"]["optimizer"]["state"], pb["train_state"]["optimizer"]["state"]
    assert oa.keys() == ob.keys() and len(oa) > 0
    for i in oa:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(oa[i][k], ob[i][k]), (i, k)
    assert pa["train_state"]["scheduler"] == pb["train_state"]["scheduler"]
    assert pa["train_state"]["schedule"] == pb["train_state"]["schedule"]


def epoch_records(run: Path) -> list[dict]:
    """The run's per-epoch log records without the timing fields (those differ between any two runs)."""
    timing = {"time_s", "elapsed_s", "wall_s", "wall_time", "dss_refresh_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(run / "metrics.jsonl")
            if r["event"] == "epoch"]
