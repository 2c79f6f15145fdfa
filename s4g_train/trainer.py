"""The training run behind ``s4g-train`` (docs/METHOD.md §2–§5): GPS / DSS batch construction, DDP, exact resume.
Its command line is :mod:`s4g_train.train_cli`; :func:`main` (the ``s4g-train`` entry point) joins the two.

The trainer orchestrates; each concern has its own module: the batches of every epoch come from one
:class:`s4g_train.schedule.BatchSchedule`, the optimisation step from :class:`s4g_train.step.TrainStep`,
device/precision from :mod:`s4g_train.device`, the metrics log from :mod:`s4g_train.runlog`, the data from
:mod:`s4g_train.dataprep`. The number of epochs and every batch depend on the config and the seed only;
``train.time_budget_min`` is a guard (:mod:`s4g_train.budget`) that warns or cuts a run, never re-plans it.

Under ``torchrun`` every rank builds the same global batch list and takes its slice
(:func:`s4g_train.dist.split_global_batch`); embeddings are gathered with gradient so the loss sees the whole
global batch. The run folder holds ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt`` (full training
state, written atomically after every epoch and optionally every N steps), ``checkpoints/best.pt`` (best R@1 on
the split evaluated during training: a validation split carved from the training data, :mod:`s4g_train.valsplit`,
else the test split as in the paper) and ``checkpoints/final.pt`` (the delivered model per ``eval.select``: the
best or the last weights, evaluated once on the test split at the end). With ``train.ema_decay``
(:mod:`s4g_train.ema`) evaluations, best.pt and final.pt hold the EMA weights; last.pt keeps the raw weights and
the EMA state. ``--resume RUN_DIR`` continues bit-identically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from s4g_engine.console import cli_main
from s4g_engine.errors import StateError
from s4g_train import checkpoint as ckpt
from s4g_train import dist, train_cli
from s4g_train.budget import TimeBudget
from s4g_train.config import Config, save_yaml, selection
from s4g_train.data import ImageStore, PairedTrainDataset, camera_stage_px, data_contract
from s4g_train.dataprep import prepare_data
from s4g_train.device import (
    configure_backends,
    cuda_search_available,
    pick_amp,
    pick_device,
    use_channels_last,
    use_device_preprocess,
)
from s4g_train.ema import restore_ema
from s4g_train.evaluate import embed_training_pairs, evaluate_split, subset_split, torch_embed_fns, versions_kwargs
from s4g_train.feed import TrainFeed
from s4g_train.health import monitor_for_run
from s4g_train.model import S4GModel
from s4g_train.rng import capture_rng_state, restore_rng_state, seed_everything
from s4g_train.runlog import MetricsLog
from s4g_train.schedule import BatchSchedule, batch_gps_m, gps_table
from s4g_train.step import TrainStep
from s4g_train.train_cli import parse_args  # noqa: F401  (re-exported: s4g_train.trainer.parse_args)
from s4g_train.valsplit import carve_validation

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Holds the run's objects; :meth:`fit` trains, :meth:`finish` delivers and evaluates the final model."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False,
                 dist_info: dist.DistInfo | None = None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.budget = TimeBudget(cfg.train.time_budget_min, cfg.train.budget_clock)
        self.t_start = time.perf_counter()
        self.info = dist_info if dist_info is not None else dist.init_for_device(cfg.train.device)
        self.distributed, self.rank, self.world = self.info.distributed, self.info.rank, self.info.world_size
        self.main = self.rank == 0
        if cfg.train.batch_size % self.world:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {self.world} ranks")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = pick_device(cfg.train.device, self.info.local_rank if self.distributed else None)
        self.amp_dtype, use_scaler = pick_amp(cfg.train.amp, self.device)
        configure_backends(self.device)
        seed_everything(cfg.train.seed)
        self._load_data()
        self._build_model(init=not resume)
        self.train_step = TrainStep(self.model, cfg, device=self.device, amp_dtype=self.amp_dtype,
                                    use_scaler=use_scaler, steps_per_epoch=self.steps_per_epoch,
                                    distributed=self.distributed)
        self.ema = self.train_step.ema  # WeightEMA when train.ema_decay is set (updated by the step)
        self.select = selection(cfg)  # last | best-val | best-test
        self.schedule = self._make_schedule()
        self.epochs = cfg.train.epochs  # fixed by the config: never re-planned
        self.epoch = 0  # completed epochs
        self.step = 0
        self.best_r1 = -1.0
        self.eval_img_s: float | None = None
        self.epoch_losses: list[float] = []  # of the current epoch so far (kept in last.pt for mid-epoch resume)
        self.epoch_hards: list[float] = []
        self.stop_reason: str | None = None  # why fit() returned early: "stop_after_epochs" or "time_budget"
        if self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(run_dir / "metrics.jsonl", enabled=self.main)
        self.health = monitor_for_run(cfg, self.steps_per_epoch, record=self.log.write,  # collapse detection
                                      share=dist.broadcast_object if self.distributed else None)
        if resume:
            self._restore(run_dir / "checkpoints" / "last.pt")
        elif self.main:
            save_yaml(cfg, run_dir / "config.yaml")
        log.info("%d training pairs, %d steps/epoch of %d pairs, %d epochs, device %s, amp %s, %d rank(s)", self.n,
                 self.steps_per_epoch, cfg.train.batch_size, self.epochs, self.device, self.amp_dtype, self.world)

    def _load_data(self) -> None:
        """Splits (rank 0 generates synthetic data while the others wait), training subset, pair count."""
        cfg = self.cfg
        self.train_split, self.eval_split, cfg.data.resolved_root = prepare_data(
            cfg, self.main, dist.barrier if self.distributed else None)
        self.val_split = None
        if cfg.data.val_from_train:
            self.train_split, self.val_split = carve_validation(self.train_split, cfg.data.val_from_train,
                                                                cfg.train.seed)
        if cfg.data.max_train is not None:
            self.train_split = subset_split(self.train_split, cfg.data.max_train)
        self.n = len(self.train_split.queries)
        B = cfg.train.batch_size
        if self.n < B:
            raise ValueError(f"the training split has {self.n} pairs, fewer than one batch of {B}; lower "
                             "train.batch_size")
        self.steps_per_epoch = self.n // B
        if cfg.train.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.steps_per_epoch)

    def _build_model(self, init: bool) -> None:
        """The model (fine-tune weights from ``train.init`` on a new run), its data contract, the dataset."""
        cfg = self.cfg
        self.model = S4GModel(cfg.model)
        if cfg.train.init and init:  # fine-tune from a checkpoint (weights only; fresh optimiser)
            ckpt.init_weights(self.model, cfg.train.init, backbone=cfg.train.init_backbone,
                              allow_partial=cfg.train.init_allow_partial)
        self.model = self.model.to(self.device)
        channels_last = use_channels_last(cfg.train.channels_last, self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.contract = data_contract(cfg, self.model)  # preprocessing of both views (s4g_engine.preprocess)
        sp, d = self.train_split, cfg.data
        self.dataset = PairedTrainDataset(sp.queries, sp.references, sp.positive, contract=self.contract,
                                          aug=d.aug, seed=cfg.train.seed, cache=d.cache_images, decode=d.decode,
                                          camera_px=camera_stage_px(sp, self.contract)
                                          if self.contract.aerial.centres > 1 else None)
        self.feed = TrainFeed(self.dataset, device=self.device, num_workers=d.num_workers,  # s4g_train/feed.py
                              persistent_workers=d.persistent_workers, prefetch_factor=d.prefetch_factor,
                              on_device=use_device_preprocess(d.device_preprocess, self.device),
                              channels_last=channels_last)

    def _make_schedule(self) -> BatchSchedule:
        """The run's batch schedule; rank 0 computes (and caches) the GPS lists, the other ranks receive them."""
        s, sp = self.cfg.sampling, self.train_split
        gps = None
        if s.strategy in ("gps", "gps+dss"):
            gps = gps_table(sp, s) if self.main else None
            if self.distributed:
                gps = dist.broadcast_object(gps)
        return BatchSchedule(s, n=self.n, batch_size=self.cfg.train.batch_size,
                             steps_per_epoch=self.steps_per_epoch, seed=self.cfg.train.seed, positive=sp.positive,
                             semi_positives=sp.semi_positives, gps=gps)

    # ------------------------------------------------------------------------------ training
    def _embed_train(self, idx: np.ndarray | None = None) -> tuple[Any, Any, np.ndarray]:
        """Un-augmented embeddings of (a subset of) training queries and their positives (no grad, eval); kept on
        the GPU when the core's CUDA top-k can mine them there."""
        ds, c = self.dataset, self.cfg
        return embed_training_pairs(self.model, self.train_split, self.contract, idx, grounds=ds.grounds,
                                    aerials=ds.aerials, batch_size=c.eval.batch_size, device=self.device,
                                    amp_dtype=self.amp_dtype, num_workers=c.data.num_workers, progress=self.main,
                                    device_preprocess=c.data.device_preprocess,
                                    to_numpy=not cuda_search_available(self.device), camera_px=ds.camera_px)

    def elapsed(self) -> float:
        """Seconds of the run so far (over resumes), on the configured budget clock."""
        return self.budget.elapsed()

    def _eval_reserve(self) -> float:
        """Seconds to keep for the final evaluation (measured embedding speed, else a guess)."""
        if not self.cfg.train.final_eval:
            return 0.0
        n_img = len(self.eval_split.queries) + len(self.eval_split.references)
        rate = self.eval_img_s or 200.0
        return 1.3 * n_img / rate + 5.0

    def _budget_reached(self, step_s: float) -> bool:
        if self.budget.minutes is None:
            return False
        over = self.budget.over(step_s, self._eval_reserve())
        return bool(dist.broadcast_object(over)) if self.distributed else over  # every rank stops together

    def fit(self) -> bool:
        """Train until ``train.epochs`` are done, ``train.stop_after_epochs`` or the time budget.

        Returns True when training is finished; False when it stopped early and can be resumed
        (:attr:`stop_reason` says why).
        """
        cfg = self.cfg
        done_here = 0
        while self.epoch < self.epochs:
            e = self.epoch + 1
            c_ep = self.elapsed()
            rec = self._train_epoch(e)
            if rec is None:
                return False
            if self._eval_due(e):
                self._evaluate(e, self.select_split, max_queries=cfg.data.max_eval)
            # DSS: rank 0 mines, every rank receives the same lists (so all build identical global batches)
            upd = self.schedule.after_epoch(e, self.epochs, self._embed_train, progress=self.main) if self.main else {}
            if self.distributed:
                upd = self.schedule.share(dist.broadcast_object, upd)
            rec.update(upd)
            self.log.write("epoch", **rec)
            log.info("epoch %d: loss %.4f, scale %.1f, hardness %.3f, %.1fs", e, rec["loss"] or float("nan"),
                     rec["logit_scale"], rec["hardness_sim"] or float("nan"), rec["time_s"])
            self._save_last()
            done_here += 1
            if done_here == 2:  # the first epoch carries one-off costs (image cache, kernel selection)
                self.budget.warn_if_projected_over(self.epochs - self.epoch, self.elapsed() - c_ep,
                                                   self._eval_reserve(), self.epochs)
            if cfg.train.stop_after_epochs is not None and done_here >= cfg.train.stop_after_epochs \
                    and self.epoch < self.epochs:
                self.stop_reason = "stop_after_epochs"
                return False
        return True

    def _train_epoch(self, e: int) -> dict[str, Any] | None:
        """Train on epoch ``e``'s remaining batches; its log record, or None when the time budget cut it."""
        cfg = self.cfg
        t_ep = time.perf_counter()
        batches = self.schedule.batches()
        hard_gps = batch_gps_m(self.train_split, batches) if self.main else None
        local = [dist.split_global_batch(b, self.rank, self.world) for b in batches]
        loader = self.feed.epoch(local, e, self.schedule.pos)
        self.train_step.train()
        last = 0.0
        bar = tqdm(loader, desc=f"epoch {e}/{self.epochs}", disable=not self.main, leave=False, mininterval=1.0)
        for g, a, _ in bar:
            ts = self.elapsed()
            if self._budget_reached(last):
                bar.close()
                self._cut(e)
                return None
            loss, hard = self.train_step(g, a)
            self.epoch_losses.append(loss)
            self.epoch_hards.append(hard)
            self.step += 1
            self.health.observe(self.step, loss, hard)  # raises TrainingCollapsed (train.collapse=stop)
            self.schedule.advance()
            last = self.elapsed() - ts
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.train_step.lr():.2e}")
            if cfg.train.save_every_steps and self.step % cfg.train.save_every_steps == 0 and self.schedule.mid_epoch:
                self._save_last()
        bar.close()
        losses, hards = self.epoch_losses, self.epoch_hards
        rec: dict[str, Any] = {
            "epoch": e, "step": self.step, "loss": float(np.mean(losses)) if losses else None,
            "logit_scale": float(self.model.scale().detach()), "lr": self.train_step.lr(),
            "hardness_sim": float(np.mean(hards)) if hards else None, "hardness_gps_m": hard_gps,
            "sampling": self.schedule.source, "time_s": round(time.perf_counter() - t_ep, 2),
            "elapsed_s": round(self.elapsed(), 1), "wall_s": round(time.perf_counter() - self.t_start, 1),
        }
        self.epoch, self.epoch_losses, self.epoch_hards = e, [], []
        self.schedule.end_epoch()
        return rec

    def _cut(self, e: int) -> None:
        """The time budget is reached: checkpoint where we are (mid-epoch) so that --resume finishes the run."""
        self._save_last()
        self.stop_reason = "time_budget"
        log.warning("time budget train.time_budget_min=%.1f reached after %.1f min, in epoch %d of %d (batch %d of "
                    "%d): the run was cut, not shortened. Finish it with s4g-train --resume %s (same result as an "
                    "uncut run), or raise/remove train.time_budget_min, or lower train.epochs",
                    self.budget.minutes, self.elapsed() / 60.0, e, self.epochs, self.schedule.pos,
                    len(self.schedule.batches()), self.run_dir)

    # ------------------------------------------------------------------------------ eval & checkpoints
    @property
    def eval_model(self) -> S4GModel:
        """The weights that are evaluated, checkpointed as best/final and exported: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def select_split(self) -> Any:
        """The split evaluated during training: the validation split when configured, else the test split."""
        return self.val_split if self.val_split is not None else self.eval_split

    def _eval_due(self, e: int) -> bool:
        """Evaluate after epoch ``e``: every ``eval.every`` epochs, and after the last one when it can be best."""
        every = self.cfg.eval.every
        if not every:
            return False
        return e % every == 0 or (e == self.epochs and self.select != "last")

    def _evaluate(self, e: int, sp: Any, max_queries: int | None = None, event: str = "eval") -> dict[str, float]:
        """Evaluate :attr:`eval_model` on split ``sp``; a periodic evaluation (``event="eval"``) may make a new best."""
        res: dict[str, float] = {}
        if self.main:
            eg, ea = torch_embed_fns(self.eval_model, self.contract, batch_size=self.cfg.eval.batch_size,
                                     device=self.device, amp_dtype=self.amp_dtype,
                                     num_workers=self.cfg.data.num_workers, progress=self.main,
                                     stores=self._eval_stores(sp, max_queries),
                                     device_preprocess=self.cfg.data.device_preprocess)
            t0 = time.perf_counter()
            res, _, _ = evaluate_split(eg, ea, sp, max_queries=max_queries, **versions_kwargs(self.contract, sp))
            n_img = res["queries"] + res["references"]
            self.eval_img_s = n_img / max(1e-6, time.perf_counter() - t0)
            extra = {"elapsed_s": round(self.elapsed(), 2)} if event == "final" else {}
            self.log.write(event, epoch=e, split=sp.split, **res, **extra)
            log.info("epoch %d eval on %s/%s: R@1 %.2f R@5 %.2f", e, sp.name, sp.split, res["R@1"], res["R@5"])
            if event == "eval" and self.select != "last" and res["R@1"] > self.best_r1:
                self.best_r1 = res["R@1"]
                ckpt.save_checkpoint(self.run_dir / "checkpoints" / "best.pt", ckpt.model_payload(
                    self.eval_model, self.cfg.to_dict(), e, {**res, "selected_on": sp.split}))
        dist.barrier()
        return res

    def _eval_stores(self, sp: Any, max_queries: int | None) -> dict[str, ImageStore] | None:
        """With ``data.cache_images`` the evaluation images are decoded once and kept (repeated evals)."""
        if not self.cfg.data.cache_images:
            return None
        q = sp.queries[:max_queries] if max_queries is not None else sp.queries
        key = (id(sp), len(q))
        if getattr(self, "_stores_key", None) != key:
            self._stores = {"ground": ImageStore(q, self.contract.ground, cache=True, desc="decode eval ground"),
                            "aerial": ImageStore(sp.references, self.contract.aerial, cache=True,
                                                 desc="decode eval aerial")}
            self._stores_key = key
        return self._stores

    def _save_last(self) -> None:
        if not self.main:
            return
        payload = ckpt.model_payload(self.model, self.cfg.to_dict(), self.epoch, {"best_R@1": self.best_r1})
        payload["train_state"] = {
            **self.train_step.state_dict(),  # optimizer, scheduler, scaler
            "rng": capture_rng_state(),
            "schedule": self.schedule.state_dict(),
            "epochs": self.epochs,
            "step": self.step,
            "best_r1": self.best_r1,
            "elapsed_s": self.elapsed(),
            "eval_img_s": self.eval_img_s,
            "epoch_losses": list(self.epoch_losses),
            "epoch_hards": list(self.epoch_hards),
        }
        if self.ema is not None:
            payload["train_state"]["ema"] = self.ema.state_dict()
        ckpt.save_checkpoint(self.run_dir / "checkpoints" / "last.pt", payload)

    def _restore(self, path: Path) -> None:
        p = ckpt.load_checkpoint(path)
        if "train_state" not in p:
            raise StateError(f"{path} has no training state (is it a best.pt?); resume needs last.pt")
        st = p["train_state"]
        legacy = "schedule" not in st  # written before s4g_train.schedule: convert its sampler state
        saved_epochs = int(st["planned_epochs"] if legacy else st["epochs"])
        if saved_epochs != self.epochs:
            raise StateError(_epochs_mismatch(path, saved_epochs, self.epochs, legacy))
        self.model.load_state_dict(p["model"])
        self.train_step.load_state_dict(st)
        restore_ema(self.ema, st.get("ema"), path)
        restore_rng_state(st["rng"])
        if legacy:
            self.schedule.load_legacy(st["sampler"], st["rng"]["sampler"])
        else:
            self.schedule.load_state_dict(st["schedule"])
        self.epoch, self.step, self.best_r1 = int(p["epoch"]), int(st["step"]), float(st["best_r1"])
        self.budget.elapsed_before = float(st["elapsed_s"])
        self.eval_img_s = st.get("eval_img_s")
        self.epoch_losses = [float(x) for x in st.get("epoch_losses", [])]
        self.epoch_hards = [float(x) for x in st.get("epoch_hards", [])]
        self.log.keep_until(self.epoch)
        log.info("resumed %s at epoch %d, step %d (batch %d of the epoch)%s", path, self.epoch, self.step,
                 self.schedule.pos, " (converted from the old checkpoint layout)" if legacy else "")

    def selection_note(self) -> str:
        """How the delivered model was chosen, in words (for summaries)."""
        weights = "EMA weights" if self.ema is not None else "weights"
        if self.select == "last":
            return f"{weights} of the last epoch (no split was used to choose them)"
        where = f"the validation split ({len(self.select_split.queries)} training pairs held out)" \
            if self.select == "best-val" else "the test split itself (paper protocol; slightly optimistic)"
        return f"{weights} of the epoch with the best R@1 on {where}"

    def finish(self, evaluate: bool = True) -> dict[str, float]:
        """Deliver the run's model: the best checkpoint or the last (EMA) weights, per ``eval.select``, into
        ``checkpoints/final.pt``; evaluated once on the full evaluation split first when ``evaluate``.

        Returns the evaluation's metrics ({} when not evaluated). Call after :meth:`fit` returned True.
        """
        best = self.run_dir / "checkpoints" / "best.pt"
        epoch, how = self.epoch, self.select
        if self.select != "last" and best.is_file():
            p = ckpt.load_checkpoint(best)
            self.eval_model.load_state_dict(p["model"])
            epoch = int(p["epoch"])
        elif self.select != "last":
            log.warning("no best.pt was written (no evaluation during training): delivering the last weights")
            how = "last"
        res = self._evaluate(epoch, self.eval_split, max_queries=None, event="final") if evaluate else {}
        if self.main:
            meta = {**res, "selection": how, "ema": self.ema is not None, "note": self.selection_note()}
            ckpt.save_checkpoint(self.run_dir / "checkpoints" / "final.pt",
                                 ckpt.model_payload(self.eval_model, self.cfg.to_dict(), epoch, meta))
        dist.barrier()
        return res

    def close(self) -> None:
        self.feed.close()
        self.log.close()
        if self.distributed:
            dist.cleanup()


def _epochs_mismatch(path: Path, saved: int, now: int, legacy: bool) -> str:
    if legacy and saved < now:
        return (f"{path} was written by an older s4g whose wall-clock time budget re-planned this run to {saved} of "
                f"{now} epochs (its learning-rate schedule ends there). The schedule no longer depends on the "
                f"clock. To finish the run as it was re-planned, resume with --set train.epochs={saved}; for "
                f"{now} epochs start a new run (s4g-train --init {path} fine-tunes from its weights)")
    return (f"{path} belongs to a run of {saved} epochs (its learning-rate schedule ends there), but train.epochs="
            f"{now} now. Resume without changing train.epochs, or start a new run (s4g-train --init {path} "
            "fine-tunes from its weights)")


@cli_main("s4g-train")  # user errors: one line + exit 2 (--debug: traceback)
def main(argv: list[str] | None = None) -> int:
    """``s4g-train`` (also ``python -m s4g_train.trainer``, what torchrun starts): the command line of
    :mod:`s4g_train.train_cli` running this module's :class:`Trainer` (handed over, so that the command-line
    module does not import this one back)."""
    return train_cli.run(argv, Trainer)


if __name__ == "__main__":
    raise SystemExit(main())
