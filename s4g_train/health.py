"""Training health: detect a collapsed contrastive run and say what to change (docs/METHOD.md §12).

A collapsed run maps every image to (almost) the same embedding. Then every in-batch similarity is ≈ 1 (the
step's *hardness*, the mean similarity of each ground view's hardest in-batch negative, is ≈ 1.000), every
logit of a row is the same, and the InfoNCE loss is exactly ``ln B`` whatever the labels (label smoothing
included). The gradient through identical embeddings is ~0, so such a run does not recover: trained to the
end it produces a model at chance level. Both signs together are unambiguous — a randomly initialised
network starts far from them (hardness ≈ 0.4, loss above ``ln B`` on the synthetic worlds), and a run that
learns leaves ``ln B`` downwards with hardness well below 1.

:class:`CollapseMonitor` watches the per-step (loss, hardness) of a run; when both stay pinned for
``train.collapse_window`` consecutive steps it writes a ``collapse`` record to the metrics log and, with
``train.collapse: stop`` (the default), raises :class:`TrainingCollapsed` (``s4g-train`` exits with
:data:`EXIT_COLLAPSED`); with ``warn`` it logs the advice once per collapse and lets the run go on.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from s4g_engine.errors import StateError

log = logging.getLogger(__name__)

COLLAPSE_ACTIONS = ("stop", "warn", "off")
#: ``s4g-train``'s exit code when a run was stopped because it collapsed (2 = a usage error).
EXIT_COLLAPSED = 3


class TrainingCollapsed(StateError):
    """The run collapsed (every embedding the same); the message says what was seen and what to change."""


@dataclass(frozen=True)
class CollapseCriteria:
    """When a window of steps counts as collapsed."""

    window: int = 50  # consecutive steps that must all look collapsed
    loss_tol: float = 0.02  # |loss − ln B| ≤ this (nats); a learning run is well below ln B
    min_hardness: float = 0.999  # mean hardest in-batch negative similarity ≥ this


class CollapseMonitor:
    """``observe(step, loss, hardness)`` once per optimisation step; see the module docstring.

    Args:
        batch_size: the global batch B (the collapsed loss is ln B).
        action: ``stop`` (raise :class:`TrainingCollapsed`), ``warn`` (log) or ``off``.
        softmax_loss: whether the loss is InfoNCE-like (collapsed value ln B); otherwise hardness alone decides.
        advice: the text appended to the report (:func:`advice_for`).
        record: called with the fields of the ``collapse`` event (e.g. the metrics log's ``write``).
        share: under DDP, a function that returns rank 0's value on every rank (``dist.broadcast_object``):
            the verdict is then taken every ``window // 5`` steps from rank 0's view, so all ranks stop together.
    """

    def __init__(self, batch_size: int, action: str = "stop", criteria: CollapseCriteria = CollapseCriteria(), *,
                 softmax_loss: bool = True, advice: str = "", record: Callable[..., Any] | None = None,
                 share: Callable[[Any], Any] | None = None) -> None:
        if action not in COLLAPSE_ACTIONS:
            raise ValueError(f"collapse action {action!r}: expected one of {COLLAPSE_ACTIONS}")
        if criteria.window < 1:
            raise ValueError(f"collapse window {criteria.window}: must be ≥ 1 step")
        self.ln_b = math.log(batch_size)
        self.action, self.criteria, self.softmax_loss = action, criteria, softmax_loss
        self.advice, self.record, self.share = advice, record, share
        self.check_every = max(1, criteria.window // 5) if share is not None else 1
        self.recent: deque[tuple[int, float, float]] = deque(maxlen=criteria.window)
        self.reported = False  # a collapse was reported and the run has not left it since

    def pinned(self, loss: float, hardness: float) -> bool:
        """Whether one step looks collapsed."""
        c = self.criteria
        if not (math.isfinite(loss) and math.isfinite(hardness)) or hardness < c.min_hardness:
            return False
        return abs(loss - self.ln_b) <= c.loss_tol if self.softmax_loss else True

    def observe(self, step: int, loss: float, hardness: float) -> bool:
        """Record one step; True when a collapse is reported now (raises instead with ``action=stop``)."""
        if self.action == "off":
            return False
        if self.pinned(loss, hardness):
            self.recent.append((step, loss, hardness))
        else:
            self.recent.clear()
            self.reported = False
        if step % self.check_every:
            return False
        collapsed = len(self.recent) == self.criteria.window and not self.reported
        if self.share is not None:
            collapsed = bool(self.share(collapsed))
        if not collapsed:
            return False
        self.reported = True
        msg = self.message()
        if self.record is not None:
            first, last = (self.recent[0][0], self.recent[-1][0]) if self.recent else (step, step)
            self.record("collapse", step=step, first_step=first, last_step=last, ln_b=self.ln_b,
                        loss=self.recent[-1][1] if self.recent else loss,
                        hardness=self.recent[-1][2] if self.recent else hardness, action=self.action)
        if self.action == "stop":
            raise TrainingCollapsed(msg + " The run was stopped (train.collapse=stop; set train.collapse=warn "
                                    "to train on regardless).")
        log.warning("%s Training goes on (train.collapse=warn).", msg)
        return True

    def message(self) -> str:
        w = self.criteria.window
        if self.recent:
            first, last = self.recent[0][0], self.recent[-1][0]
            loss = sum(r[1] for r in self.recent) / len(self.recent)
            hard = sum(r[2] for r in self.recent) / len(self.recent)
            seen = f"for the last {w} steps ({first}–{last}) the loss stayed at {loss:.4f}"
        else:  # another rank's view (DDP): this rank's window differs
            seen, hard = f"for the last {w} steps the loss stayed at", float("nan")
        what = f"{seen} = ln B (B = {math.exp(self.ln_b):.0f}: ln B = {self.ln_b:.4f})" if self.softmax_loss \
            else seen
        return (f"training collapsed: {what} with every in-batch similarity ≈ 1 (hardness {hard:.3f}): the "
                f"network maps all images to the same embedding and gets no gradient to recover. {self.advice}")


def advice_for(cfg: Any, steps_per_epoch: int) -> str:
    """What to change, with the run's own values (``cfg``: the training :class:`~s4g_train.config.Config`)."""
    o, m = cfg.optim, cfg.model
    warm = int(round(o.warmup_epochs * steps_per_epoch))
    total = cfg.train.epochs * steps_per_epoch
    parts = [f"Lower the learning rate (optim.lr={o.lr:g}; try 2–4× lower)",
             f"lengthen the warm-up (optim.warmup_epochs={o.warmup_epochs:g} = {warm} of {total} steps; "
             "a few hundred steps, or ~10–20 % of the run)"]
    if m.polar_aerial and cfg.data.dataset.startswith("vigor") and getattr(m, "tile_centres", 1) == 1:
        parts.append("check the input: the polar tile assumes the panorama at the tile centre, which VIGOR's "
                     "panoramas are not (model.tile_centres=5 re-centres the tiles on the camera, docs/METHOD.md "
                     "§9.1; the synthetic-vigor preset)")
    else:
        parts.append("check the input (do both views of a pair show the same place? s4g-data check ROOT; "
                     "s4g-viz pair)")
    return "Advice: " + "; ".join(parts) + "."


def monitor_for_run(cfg: Any, steps_per_epoch: int, record: Callable[..., Any] | None = None,
                    share: Callable[[Any], Any] | None = None) -> CollapseMonitor:
    """The monitor of a training run from its config (``train.collapse``, ``train.collapse_window``)."""
    from s4g_train.losses import SOFTMAX_LOSSES  # collapsed value ln B; triplet losses: similarities only

    t = cfg.train
    return CollapseMonitor(t.batch_size, t.collapse, CollapseCriteria(window=t.collapse_window),
                           softmax_loss=t.loss in SOFTMAX_LOSSES, advice=advice_for(cfg, steps_per_epoch),
                           record=record, share=share)
