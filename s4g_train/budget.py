"""``train.time_budget_min`` as a guard, never a planner: the number of epochs and every batch depend on the
config and the seed only, so the same command gives the same model on a fast and a slow machine.

The guard does two things: after the second epoch of a run it projects the total time and warns when it
will not fit (what to change), and when the budget is reached it tells the trainer to stop — the run is then
*cut*, not shortened: its last checkpoint holds the full schedule, and ``s4g-train --resume`` finishes it
exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)


class TimeBudget:
    """Seconds spent on the run (over resumes) on the configured clock, and the budget checks.

    ``clock``: ``wall`` (real time) or ``cpu`` (this process's CPU seconds / torch threads ≈ the wall time the
    run would take alone on the machine; for runs on a shared, overloaded machine; slightly optimistic).
    """

    def __init__(self, minutes: float | None, clock: str = "wall", elapsed_before: float = 0.0) -> None:
        self.minutes = minutes
        self.clock = clock
        self.elapsed_before = float(elapsed_before)
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.warned = False

    def elapsed(self) -> float:
        """Seconds of the run so far, including the parts before a resume."""
        if self.clock == "cpu":
            return self.elapsed_before + (time.process_time() - self.c0) / max(1, torch.get_num_threads())
        return self.elapsed_before + time.perf_counter() - self.t0

    def over(self, next_s: float, reserve_s: float = 0.0) -> bool:
        """True when ``next_s`` more seconds (the next step) plus ``reserve_s`` (the final evaluation) would
        pass the budget."""
        if self.minutes is None:
            return False
        return self.elapsed() + next_s + reserve_s > 60.0 * self.minutes

    def warn_if_projected_over(self, epochs_left: int, epoch_s: float, reserve_s: float, epochs: int) -> None:
        """Warn once when ``epochs_left`` more epochs of ``epoch_s`` seconds (+ ``reserve_s``) will not fit."""
        if self.minutes is None or self.warned:
            return
        projected = self.elapsed() + epochs_left * epoch_s + reserve_s
        if projected > 60.0 * self.minutes:
            self.warned = True
            log.warning("time budget: at %.0f s per epoch the %d epochs take about %.1f min, more than "
                        "train.time_budget_min=%.1f. The schedule is not shortened: the run will be cut when the "
                        "budget is reached and can be finished with s4g-train --resume. To fit the budget, lower "
                        "train.epochs (or the data per epoch), or raise/remove train.time_budget_min",
                        epoch_s, epochs, projected / 60.0, self.minutes)
