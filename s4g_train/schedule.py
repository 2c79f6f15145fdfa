"""The batch schedule of a training run (docs/METHOD.md §4): the one object that decides, epoch by epoch,
which neighbour table feeds the batch builder, when dynamic-similarity (DSS) lists are mined, and where in
an epoch the run stands — with a state that makes a resumed run rebuild exactly the same batches.

* ``random``: shuffled batches. ``gps``: GPS lists every epoch. ``dss``: random until the first DSS lists,
  then DSS. ``gps+dss``: GPS until the first DSS lists, then DSS.
* DSS start (measured): after epoch ``e ≥ sampling.dss_start_epoch`` the first lists are mined once the
  model is competent — when ``sampling.dss_start_r1`` is set, the training-set R@1 (percent, on a fixed
  probe of ``sampling.dss_mining_size`` queries) must reach it, checked after every epoch until it does
  (DSS from a random-init model collapses training). ``None`` = the reference's fixed start.
* Refresh: after the first mining, every ``sampling.dss_every`` epochs after the last one; never after the
  last epoch (the lists would not be used).
* Randomness: one ``numpy.random.Generator`` seeded ``[seed, 7]``, consumed by each epoch's build in turn.
  Its state is part of :meth:`BatchSchedule.state_dict`. Nothing here reads a clock: the batches are a
  function of the config, the seed, the data and the model's embeddings at mining time.

Under DDP every rank holds the same schedule: rank 0 mines and :meth:`BatchSchedule.share` hands the lists
to the others, so all ranks build the same global batches and each takes its slice.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s4g_engine.errors import CorruptFileError, FormatError, StateError
from s4g_train.sampling import (
    STRATEGIES,
    batch_hardness,
    build_batches,
    dss_neighbours,
    random_batches,
    semi_positive_forbidden,
)

if TYPE_CHECKING:
    from s4g_train.config import SamplingConfig

log = logging.getLogger(__name__)

STATE_FORMAT = "s4g-batch-schedule"
STATE_VERSION = 2  # 1 was the trainer's inline "sampler" dict; :meth:`BatchSchedule.load_legacy` converts it
#: ``embed(ids)`` → (query embeddings, reference embeddings, positive row of each query) of the training
#: queries ``ids`` (``None`` = all) and their references, un-augmented (the trainer's ``_embed_train``). The
#: embeddings may be NumPy arrays or device tensors (then the lists are mined by the core's CUDA top-k).
EmbedTrain = Callable[[np.ndarray | None], tuple[np.ndarray, np.ndarray, np.ndarray]]


class BatchSchedule:
    """Batches of every epoch of one run, from the sampling config, the seed and the training split.

    Args:
        cfg: the ``sampling`` section of the config.
        n: training pairs. batch_size: the GLOBAL batch. steps_per_epoch: batches used per epoch.
        seed: ``train.seed``.
        positive: int (N,) reference id of each training pair; semi_positives: int (N, s) or empty.
        gps: int (N, K) GPS neighbour lists (:func:`gps_table`); required by ``gps`` and ``gps+dss``.
    """

    def __init__(self, cfg: SamplingConfig, *, n: int, batch_size: int, steps_per_epoch: int, seed: int,
                 positive: np.ndarray, semi_positives: np.ndarray | None = None,
                 gps: np.ndarray | None = None) -> None:
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"sampling.strategy={cfg.strategy!r}: expected one of {STRATEGIES}")
        if cfg.strategy in ("gps", "gps+dss") and gps is None:
            raise ValueError(f"sampling.strategy={cfg.strategy!r} needs GPS neighbour lists (gps_table)")
        self.cfg = cfg
        self.n, self.batch_size, self.steps_per_epoch, self.seed = int(n), int(batch_size), int(steps_per_epoch), \
            int(seed)
        self.positive = np.asarray(positive, np.int64)
        self.semi = np.empty((self.n, 0), np.int64) if semi_positives is None else np.asarray(semi_positives)
        self.groups, self.forbidden = _groups(self.positive, self.semi)
        self.gps = None if gps is None else np.asarray(gps, np.int64)
        self.rng = np.random.default_rng([self.seed, 7])
        self.dss: np.ndarray | None = None
        self.dss_active = False
        self.last_refresh = 0  # the epoch after which the DSS lists in use were mined
        self._batches: np.ndarray | None = None  # the current epoch's global batches (steps, B)
        self.pos = 0  # batches of the current epoch already trained on

    # ------------------------------------------------------------------------------ batches
    @property
    def source(self) -> str:
        """The table the current epoch's batches come from: ``random``, ``gps`` or ``dss``."""
        if self.dss_active:
            return "dss"
        return "gps" if self.gps is not None else "random"

    def batches(self) -> np.ndarray:
        """The current epoch's global batches, int64 (steps, B); built (from the generator) on first use."""
        if self._batches is None:
            self._batches, self.pos = self._build(), 0
        return self._batches

    def _build(self) -> np.ndarray:
        nb = self.dss if self.dss_active else self.gps
        if nb is None:
            batches = random_batches(self.n, self.batch_size, self.rng, groups=self.groups, forbidden=self.forbidden)
        else:
            k = min(self.cfg.k, nb.shape[1])
            batches = build_batches(nb, self.batch_size, k, self.rng, groups=self.groups, forbidden=self.forbidden)
        return np.stack(batches)[: self.steps_per_epoch]

    def advance(self) -> None:
        """One batch of the current epoch was trained on."""
        self.pos += 1

    @property
    def mid_epoch(self) -> bool:
        """True while the current epoch has batches left (a checkpoint now resumes inside the epoch)."""
        return self._batches is not None and self.pos < len(self._batches)

    def end_epoch(self) -> None:
        self._batches, self.pos = None, 0

    # ------------------------------------------------------------------------------ DSS
    def refresh_due(self, epoch: int, epochs: int) -> bool:
        """Whether, after (1-based) ``epoch`` of ``epochs``, DSS lists are due (or, before the first ones,
        the start criterion is to be checked)."""
        s = self.cfg
        if s.strategy not in ("dss", "gps+dss") or epoch >= epochs:
            return False
        if self.dss_active:
            return epoch - self.last_refresh >= s.dss_every
        return epoch >= s.dss_start_epoch

    def probe_ids(self) -> np.ndarray:
        """The fixed training queries the start criterion is measured on (sorted)."""
        m = min(self.n, self.cfg.dss_mining_size or self.n)
        return np.sort(np.random.default_rng([self.seed, 11]).permutation(self.n)[:m])

    def after_epoch(self, epoch: int, epochs: int, embed: EmbedTrain, progress: bool = False) -> dict[str, Any]:
        """Check the start criterion / mine DSS lists when due; returns fields for the epoch's log record
        (``train_r1`` from the probe, ``dss_refresh_s`` and ``train_r1_full`` when lists were mined)."""
        out: dict[str, Any] = {}
        if not self.refresh_due(epoch, epochs):
            return out
        s = self.cfg
        if not self.dss_active and s.dss_start_r1 is not None:
            out["train_r1"] = _train_r1(*embed(self.probe_ids()))
            if out["train_r1"] < s.dss_start_r1:
                log.info("epoch %d: training R@1 %.1f%% < %.1f%%: DSS not started yet", epoch, out["train_r1"],
                         s.dss_start_r1)
                return out
        t0 = time.perf_counter()
        q, r, pos = embed(None)
        self.dss = np.asarray(dss_neighbours(q, r, pos, s.K, semi_positives=self._semi_rows(), progress=progress),
                              np.int64)
        out["dss_refresh_s"] = time.perf_counter() - t0
        out["train_r1_full"] = _train_r1(q, r, pos)
        self.dss_active, self.last_refresh = True, epoch
        log.info("epoch %d: DSS neighbour lists refreshed in %.1fs (training R@1 %.1f%%)", epoch,
                 out["dss_refresh_s"], out["train_r1_full"])
        return out

    def _semi_rows(self) -> np.ndarray | None:
        """Semi-positive reference ids → rows of the mined reference embeddings (−1: not mined)."""
        if not self.semi.size:
            return None
        r_ids = np.unique(self.positive)
        j = np.clip(np.searchsorted(r_ids, self.semi), 0, len(r_ids) - 1)
        return np.where((self.semi >= 0) & (r_ids[j] == self.semi), j, -1)

    def share(self, broadcast: Callable[[Any], Any], update: dict[str, Any]) -> dict[str, Any]:
        """DDP: rank 0's lists (and log fields) on every rank, so that all build the same global batches."""
        update, self.dss, self.dss_active, self.last_refresh = broadcast(
            (update, self.dss, self.dss_active, self.last_refresh))
        return update

    # ------------------------------------------------------------------------------ state
    def _config(self) -> dict[str, Any]:
        s = self.cfg
        return {"strategy": s.strategy, "n": self.n, "batch_size": self.batch_size,
                "steps_per_epoch": self.steps_per_epoch, "seed": self.seed, "k": s.k, "K": s.K,
                "dss_every": s.dss_every, "dss_start_epoch": s.dss_start_epoch, "dss_start_r1": s.dss_start_r1,
                "dss_mining_size": s.dss_mining_size}

    def state_dict(self) -> dict[str, Any]:
        """Plain types only (tables as bytes + crc32), readable by ``torch.load(weights_only=True)``."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "config": self._config(),
                "rng": json.dumps(self.rng.bit_generator.state), "gps_crc32": _crc(self.gps),
                "dss": _pack(self.dss), "dss_active": self.dss_active, "last_refresh": self.last_refresh,
                "batches": _pack(self._batches), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where :meth:`state_dict` left off; refuses a state saved with another configuration."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise FormatError(f"not a batch-schedule state (expected a dict with format {STATE_FORMAT!r})")
        if state.get("version") != STATE_VERSION:
            raise FormatError(f"batch-schedule state version {state.get('version')!r} is not supported (this "
                             f"s4g reads {STATE_VERSION}); continue the run with the s4g version that wrote it")
        saved, now = state["config"], self._config()
        if saved != now:
            diff = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
            raise StateError(f"the run's batch schedule was saved with other settings, (saved, now): {diff}; "
                             "resume with the run's own config.yaml values, or start a new run (--init to keep "
                             "the weights)")
        self._check_gps(state["gps_crc32"] == _crc(self.gps))
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.dss, self._batches = _unpack(state["dss"], "DSS lists"), _unpack(state["batches"], "epoch batches")
        self.dss_active, self.last_refresh, self.pos = bool(state["dss_active"]), int(state["last_refresh"]), \
            int(state["pos"])

    def load_legacy(self, sampler: dict[str, Any], rng_json: str) -> None:
        """Convert the state of checkpoints written before this class (``train_state["sampler"]`` with
        tensors, and the generator in ``train_state["rng"]["sampler"]``): same meaning, other layout."""
        gps = sampler.get("gps_nb")
        same = (gps is None) == (self.gps is None) and (gps is None or np.array_equal(gps.numpy(), self.gps))
        self._check_gps(same)
        self.rng.bit_generator.state = json.loads(rng_json)
        self.dss = None if sampler["dss_nb"] is None else np.asarray(sampler["dss_nb"].numpy(), np.int64)
        b = sampler["epoch_batches"]
        self._batches = None if b is None else np.asarray(b.numpy(), np.int64)
        self.dss_active, self.last_refresh = bool(sampler["dss_active"]), int(sampler["last_refresh"])
        self.pos = int(sampler["batch_pos"])

    def _check_gps(self, same: bool) -> None:
        if not same:
            raise StateError("the GPS neighbour lists differ from the ones the run was saved with (other training "
                             "data, sampling.K or sampling.gps_metric?); resume on the run's own data and config")


# ------------------------------------------------------------------------------------------ helpers
def _groups(positive: np.ndarray, semi: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """VIGOR: one panorama per satellite tile per batch; semi-positive tiles' panoramas forbidden."""
    shared = len(np.unique(positive)) < len(positive)
    groups = positive.astype(np.int64) if shared or semi.size else None
    forbidden = semi_positive_forbidden(positive, semi) if semi.size else None
    if forbidden is not None and forbidden.shape[1] == 0:
        forbidden = None
    return groups, forbidden


def _train_r1(q: Any, r: Any, pos: np.ndarray) -> float:
    """Training-set R@1 (percent); ``q``/``r`` may be device tensors (ranked by the core's CUDA search)."""
    from s4g_engine import positive_ranks
    from s4g_engine.metrics import ranks_to_metrics, retrieval_metrics

    if not hasattr(q, "__cuda_array_interface__"):
        return float(retrieval_metrics(q, r, pos)["R@1"])
    ranks = positive_ranks(q, r, np.asarray(pos, np.int64))
    return float(ranks_to_metrics(ranks.cpu().numpy().astype(np.int64), int(r.shape[0]))["R@1"])


def _crc(t: np.ndarray | None) -> int | None:
    return None if t is None else zlib.crc32(np.ascontiguousarray(t, dtype="<i8").tobytes())


def _pack(t: np.ndarray | None) -> dict[str, Any] | None:
    if t is None:
        return None
    data = np.ascontiguousarray(t, dtype="<i8").tobytes()
    return {"shape": [int(x) for x in t.shape], "crc32": zlib.crc32(data), "data": data}


def _unpack(d: dict[str, Any] | None, what: str) -> np.ndarray | None:
    if d is None:
        return None
    if zlib.crc32(d["data"]) != d["crc32"]:
        raise CorruptFileError(f"batch-schedule state: the stored {what} fail their crc32 check (corrupt checkpoint); "
                         "resume from another checkpoint")
    return np.frombuffer(d["data"], dtype="<i8").reshape(d["shape"]).astype(np.int64)


def gps_table(split: Any, cfg: SamplingConfig) -> np.ndarray:
    """GPS neighbour lists (N, K) of a training split, cached under ``<root>/.s4g_cache`` when writable."""
    from s4g_engine.geo import gps_neighbours

    metric = cfg.gps_metric
    if metric == "auto":
        metric = "euclidean" if split.reference_utm is not None else "haversine"
    if metric == "euclidean":
        if split.reference_utm is None:
            raise ValueError("sampling.gps_metric=euclidean needs UTM coordinates (CVACT); use haversine")
        coords = split.reference_utm[split.positive]
    else:
        coords = np.where(np.isfinite(split.query_gps), split.query_gps, split.reference_gps[split.positive])
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"{split.name}/{split.split} has no GPS for some training pairs: GPS sampling is "
                         "impossible; use sampling.strategy=random or dss")
    root = Path(split.root)
    cache = root / ".s4g_cache" if os.access(root, os.W_OK) else None
    return gps_neighbours(coords, cfg.K, metric=metric, cache_dir=cache, cache_key=f"{split.name}/{split.split}")


def batch_gps_m(split: Any, batches: np.ndarray) -> float | None:
    """Mean distance (m) from each batch member to its nearest other member: low = geographically hard."""
    gps = np.where(np.isfinite(split.query_gps), split.query_gps, split.reference_gps[split.positive])
    if not np.isfinite(gps).any() or len(batches) == 0:
        return None
    v = batch_hardness(list(batches), gps=gps).get("hardness_gps_m")
    return None if v is None or not np.isfinite(v) else float(v)
