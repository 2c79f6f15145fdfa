"""Exponential moving average (EMA) of a model's weights: ``train.ema_decay``.

After every optimisation step the average moves towards the trained weights::

    d_n = min(decay, (1 + n) / (10 + n))        n = updates done before this one (0, 1, 2, …)
    ema = d_n · ema + (1 − d_n) · weights       for every floating-point tensor of the state dict

The warm-up ``(1 + n) / (10 + n)`` (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``) keeps the
average from dragging the random initialisation along for thousands of steps: a short CPU run of a few
thousand steps would otherwise end with an average still weighted towards its first, untrained weights.
Integer tensors (counters) are copied. The average lives in its own copy of the model (``module``) in float32,
on the model's device, so it can be evaluated and exported like any model.

We keep this ourselves rather than use timm's ``ModelEmaV3``: its warm-up is ``1 − (1 + n/γ)^−p`` (another
curve), and its update count is not part of its state dict, which an exact resume needs.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from s4g_engine.errors import StateError

log = logging.getLogger(__name__)


def warmup_decay(decay: float, n: int) -> float:
    """The decay of update ``n`` (0-based): ``min(decay, (1 + n) / (10 + n))``."""
    return min(float(decay), (1.0 + n) / (10.0 + n))


class WeightEMA:
    """The EMA of ``model``'s state dict (parameters and buffers), updated by :meth:`update`.

    ``module`` is a frozen copy of the model holding the averaged weights (eval mode, no gradients).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay!r} (typical: 0.99–0.9999)")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_config(cls, model: torch.nn.Module, cfg: Any) -> WeightEMA | None:
        """The EMA of ``model`` when ``cfg.train.ema_decay`` is set, else None."""
        decay = cfg.train.ema_decay
        return None if decay is None else cls(model, decay)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> float:
        """One EMA step towards ``model``'s current weights; returns the decay used."""
        d = warmup_decay(self.decay, self.updates)
        ema_f, new_f = [], []
        for (_name, e), (_, v) in zip(self.module.state_dict().items(), model.state_dict().items(), strict=True):
            if e.is_floating_point():
                ema_f.append(e)
                new_f.append(v.detach().to(e.dtype))
            else:
                e.copy_(v)
        if ema_f:
            # ema + (1 − d)(v − ema) = d·ema + (1 − d)·v, one fused kernel per tensor group
            torch._foreach_lerp_(ema_f, new_f, 1.0 - d)
        self.updates += 1
        return d

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: the decay, the update count and the averaged weights (on CPU)."""
        return {"decay": self.decay, "updates": self.updates,
                "weights": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        if float(st["decay"]) != self.decay:
            raise StateError(f"the checkpoint's EMA ran with train.ema_decay={st['decay']}, the config says "
                             f"{self.decay}: resume with the run's own value (changing it would change the run)")
        self.module.load_state_dict(st["weights"])
        self.updates = int(st["updates"])


def restore_ema(ema: WeightEMA | None, st: dict[str, Any] | None, path: str | Path) -> None:
    """Load the EMA state ``st`` of checkpoint ``path`` (None: it had none) into ``ema`` (None: EMA is off).

    A resume must not switch the EMA on or off: the delivered weights would then differ from the run's own.
    """
    if (st is None) != (ema is None):
        have = "no EMA" if st is None else f"an EMA (train.ema_decay={st['decay']})"
        now = "null" if ema is None else ema.decay
        raise StateError(f"{path} was written by a run with {have}, but train.ema_decay={now} now: resume with "
                         "the run's own setting")
    if ema is not None and st is not None:
        ema.load_state_dict(st)
