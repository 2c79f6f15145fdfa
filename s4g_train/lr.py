"""The learning-rate schedule: linear warm-up, then cosine decay, stepped once per iteration."""

from __future__ import annotations

import math
from typing import Any

import torch


class CosineWarmup:
    """Linear warm-up for ``warmup`` steps, then cosine from ``base_lr`` to ``min_ratio·base_lr`` at ``total``.

    Stepped once per iteration. Hand-written rather than ``LambdaLR`` so that the whole state is three
    integers in the checkpoint (``total`` is fixed by the config: ``train.epochs × steps per epoch``).
    """

    def __init__(self, opt: torch.optim.Optimizer, base_lr: float, warmup: int, total: int,
                 min_ratio: float = 0.0) -> None:
        self.opt, self.base_lr, self.min_ratio = opt, base_lr, min_ratio
        self.warmup, self.total = int(warmup), int(total)
        self.last_step = 0
        self._apply()

    def lr(self, step: int | None = None) -> float:
        s = self.last_step if step is None else step
        if s < self.warmup:
            return self.base_lr * (s + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (s - self.warmup) / span)
        return self.base_lr * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def _apply(self) -> None:
        lr = self.lr()
        for g in self.opt.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total": self.total, "warmup": self.warmup}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.last_step, self.total, self.warmup = int(d["last_step"]), int(d["total"]), int(d["warmup"])
        self._apply()
