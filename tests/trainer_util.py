"""Shared helpers of the trainer tests: a tiny CVUSA-layout fixture and a tiny-run argument list."""

from __future__ import annotations

from pathlib import Path

from layouts import make_cvusa

TINY = [
    "--set", "model.backbone=test_convnext", "--set", "model.ground_size=[32,128]",
    "--set", "model.aerial_size=[32,32]", "--set", "train.batch_size=8", "--set", "sampling.k=4",
    "--set", "sampling.K=8", "--set", "eval.batch_size=16", "--set", "train.threads=1", "--set", "data.num_workers=0",
]


def tiny_cvusa(root: Path, n_train: int = 24, n_test: int = 10) -> Path:
    return make_cvusa(root, n_train=n_train, n_test=n_test, scale=8.0)


def tiny_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["--preset", "cvusa", "--run-dir", str(run), "--set", f"data.root={data}", *TINY, *extra]
