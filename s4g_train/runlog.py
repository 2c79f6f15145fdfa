"""The run's metrics log: ``metrics.jsonl`` (one JSON object per line) + TensorBoard scalars when installed.

Every write replaces the whole file atomically (``s4g_engine.fileio``): the log holds a few records per
epoch, so rewriting it is cheap, and a crash never leaves a half-written line. On resume the records of
epochs the checkpoint does not contain (written after the last checkpoint, then lost) are dropped, so a
resumed run's log reads like an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from s4g_engine.fileio import atomic_write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only records ``{"event": ..., **fields, "wall_time": unix seconds}``; a no-op when disabled
    (DDP ranks other than 0)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.lines: list[str] = []
        self.tb = None
        if not enabled:
            return
        if self.path.is_file():
            self.lines = [ln + "\n" for ln in self.path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        else:
            atomic_write_text(self.path, "")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.path.parent / "tb"))
        except Exception:  # tensorboard not installed: the jsonl file is the log
            self.tb = None

    def write(self, event: str, **rec: Any) -> None:
        if not self.enabled:
            return
        rec = {"event": event, **rec, "wall_time": round(time.time(), 3)}
        self.lines.append(json.dumps(rec, default=float) + "\n")
        atomic_write_text(self.path, "".join(self.lines))
        if self.tb is not None:
            step = int(rec.get("epoch", 0))
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "wall_time"):
                    self.tb.add_scalar(f"{event}/{k}", v, step)

    def keep_until(self, epoch: int) -> None:
        """Drop the records of epochs after ``epoch`` (and lines that do not parse): called on resume."""
        if not self.enabled:
            return
        kept = []
        for ln in self.lines:
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                continue
            if int(rec.get("epoch", 0)) <= epoch:
                kept.append(ln)
        if len(kept) != len(self.lines):
            log.info("metrics log: dropped %d record(s) written after the checkpoint of epoch %d",
                     len(self.lines) - len(kept), epoch)
            self.lines = kept
            atomic_write_text(self.path, "".join(self.lines))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
