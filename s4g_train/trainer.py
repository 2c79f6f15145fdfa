"""``s4g-train``: Sample4Geo training (SPEC §2–§5) with GPS / DSS batch construction, DDP, exact resume.

One epoch = the batches built for it (``s4g_train.sampling.build_batches`` over the current neighbour
lists, or a shuffled cut for random sampling), read in order. Under ``torchrun`` every rank builds the same
global batch list from the same seeded generator and takes its slice; embeddings are gathered with gradient so
the loss sees the whole global batch. The run folder holds ``config.yaml``, ``metrics.jsonl``,
``checkpoints/last.pt`` (full training state, written atomically after every epoch and optionally every N
steps) and ``checkpoints/best.pt`` (best R@1). ``--resume RUN_DIR`` continues bit-identically.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from s4g_train import checkpoint as ckpt
from s4g_train.config import Config, build_config, load_yaml, apply_dict, save_yaml, split_cli_overrides, \
    set_override, validate
from s4g_train.data import EpochBatchSampler, ImageStore, PairedTrainDataset, ViewDataset, data_contract
from s4g_train.evaluate import autocast_context, embed_dataset, evaluate_split, format_table, torch_embed_fns
from s4g_train.model import S4GModel
from s4g_train.runstate import (  # noqa: F401 - pick_device/pick_amp/cpu_has_native_bf16 are public here too
    CosineWarmup, Encoder, MetricsLog, batch_gps_m, cpu_has_native_bf16, get_rng_state, pick_amp, pick_device,
    init_weights, prepare_data, set_rng_state, train_r1,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Holds the run's objects; :meth:`fit` trains, :meth:`final_eval` evaluates the best checkpoint."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False) -> None:
        from s4g_train import dist
        from s4g_train.losses import make_loss

        self.t_start, self.c_start = time.perf_counter(), time.process_time()
        self.cfg, self.run_dir = cfg, run_dir
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed:
            dist.init_distributed()
        self.dist = dist
        self.rank, self.world = (dist.rank(), dist.world_size()) if self.distributed else (0, 1)
        self.main = self.rank == 0
        if cfg.train.batch_size % self.world:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {self.world} ranks")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = pick_device(cfg.train.device)
        self.amp_dtype, use_scaler = pick_amp(cfg.train.amp, self.device)
        seed = cfg.train.seed
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

        barrier = torch.distributed.barrier if self.distributed else None
        self.train_split, self.eval_split, cfg.data.resolved_root = prepare_data(cfg, self.main, barrier)
        if cfg.data.max_train is not None:
            from s4g_train.evaluate import subset_split
            self.train_split = subset_split(self.train_split, cfg.data.max_train)
        self.model = S4GModel(cfg.model)
        if cfg.train.init and not resume:  # fine-tune from a checkpoint (weights only; fresh optimiser)
            init_weights(self.model, cfg.train.init, backbone=cfg.train.init_backbone,
                         allow_partial=cfg.train.init_allow_partial)
        self.model = self.model.to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.contract = data_contract(cfg, self.model)  # preprocessing of both views (s4g_engine.preprocess)
        sp = self.train_split
        self.dataset = PairedTrainDataset(sp.queries, sp.references, sp.positive, contract=self.contract,
                                          aug=cfg.data.aug, seed=seed, cache=cfg.data.cache_images)
        self.n = len(self.dataset)
        B = cfg.train.batch_size
        if self.n < B:
            raise ValueError(f"the training split has {self.n} pairs, fewer than one batch of {B}; lower "
                             "train.batch_size")
        self.steps_per_epoch = self.n // B
        if cfg.train.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.steps_per_epoch)
        self.encoder: torch.nn.Module = Encoder(self.model, cfg.train.channels_last)
        if cfg.train.compile:
            self.encoder = torch.compile(self.encoder)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.encoder = torch.nn.parallel.DistributedDataParallel(self.encoder, device_ids=ids)
        decay = [p for n_, p in self.model.named_parameters() if p.ndim > 1]
        no_decay = [p for n_, p in self.model.named_parameters() if p.ndim <= 1]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        self.sched = CosineWarmup(self.opt, base_lr=cfg.optim.lr,
                                  warmup=int(round(cfg.optim.warmup_epochs * self.steps_per_epoch)),
                                  total=cfg.train.epochs * self.steps_per_epoch, min_ratio=cfg.optim.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        kw = {"label_smoothing": cfg.train.label_smoothing} if cfg.train.loss in ("infonce", "street2sat",
                                                                                   "sat2street") else {}
        self.loss_fn = make_loss(cfg.train.loss, **kw)

        # sampler state
        self.rng = np.random.default_rng([seed, 7])
        self.gps_nb: np.ndarray | None = None
        self.dss_nb: np.ndarray | None = None
        self.dss_active = False
        self.last_refresh = 0
        self.epoch = 0  # completed epochs
        self.step = 0
        self.best_r1 = -1.0
        self.planned_epochs = cfg.train.epochs
        self.elapsed_before = 0.0
        self.eval_img_s: float | None = None
        self.epoch_batches: np.ndarray | None = None
        self.batch_pos = 0
        strategy = cfg.sampling.strategy
        if strategy in ("gps", "gps+dss"):  # rank 0 computes (and caches), the others receive the table
            self.gps_nb = self._gps_neighbours() if self.main else None
            if self.distributed:
                self.gps_nb = dist.broadcast_object(self.gps_nb)
        if self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(run_dir / "metrics.jsonl", enabled=self.main)
        if resume:
            self._restore(run_dir / "checkpoints" / "last.pt")
        elif self.main:
            save_yaml(cfg, run_dir / "config.yaml")
        log.info("%d training pairs, %d steps/epoch of %d pairs, device %s, amp %s, %d rank(s)", self.n,
                 self.steps_per_epoch, B, self.device, self.amp_dtype, self.world)

    # ------------------------------------------------------------------------------ sampling
    def _gps_neighbours(self) -> np.ndarray:
        from s4g_engine.geo import gps_neighbours

        sp, s = self.train_split, self.cfg.sampling
        metric = s.gps_metric
        if metric == "auto":
            metric = "euclidean" if sp.reference_utm is not None else "haversine"
        if metric == "euclidean":
            if sp.reference_utm is None:
                raise ValueError("sampling.gps_metric=euclidean needs UTM coordinates (CVACT); use haversine")
            coords = sp.reference_utm[sp.positive]
        else:
            coords = np.where(np.isfinite(sp.query_gps), sp.query_gps, sp.reference_gps[sp.positive])
        if not np.all(np.isfinite(coords)):
            raise ValueError(f"{sp.name}/{sp.split} has no GPS for some training pairs: GPS sampling is "
                             "impossible; use sampling.strategy=random or dss")
        root = Path(sp.root)
        cache = root / ".s4g_cache" if os.access(root, os.W_OK) else None
        return gps_neighbours(coords, s.K, metric=metric, cache_dir=cache, cache_key=f"{sp.name}/{sp.split}")

    def _groups(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """VIGOR: one panorama per satellite tile per batch; semi-positive tiles' panoramas forbidden."""
        from s4g_train.sampling import semi_positive_forbidden

        sp = self.train_split
        if not hasattr(self, "_grp"):
            shared = len(np.unique(sp.positive)) < len(sp.positive)
            groups = sp.positive.astype(np.int64) if shared or sp.semi_positives.size else None
            forbidden = semi_positive_forbidden(sp.positive, sp.semi_positives) if sp.semi_positives.size else None
            if forbidden is not None and forbidden.shape[1] == 0:
                forbidden = None
            self._grp = (groups, forbidden)
        return self._grp

    def _build_epoch(self) -> np.ndarray:
        from s4g_train.sampling import build_batches, random_batches

        B = self.cfg.train.batch_size
        nb = self.dss_nb if self.dss_active else self.gps_nb
        groups, forbidden = self._groups()
        if nb is None:
            batches = random_batches(self.n, B, self.rng, groups=groups, forbidden=forbidden)
        else:
            k = min(self.cfg.sampling.k, nb.shape[1])
            batches = build_batches(nb, B, k, self.rng, groups=groups, forbidden=forbidden)
        return np.stack(batches)[: self.steps_per_epoch]

    def _embed_train(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Un-augmented embeddings of (a subset of) training queries and their positives (no grad, eval)."""
        sp, ds = self.train_split, self.dataset
        q_ids = np.arange(self.n) if idx is None else idx
        r_ids = np.unique(sp.positive[q_ids])
        gq = ViewDataset([sp.queries[i] for i in q_ids], self.contract.ground,
                         store=ds.grounds if idx is None else None)
        gr = ViewDataset([sp.references[i] for i in r_ids], self.contract.aerial,
                         store=ds.aerials if idx is None and len(r_ids) == len(sp.references) else None)
        kw = dict(batch_size=self.cfg.eval.batch_size, device=self.device, amp_dtype=self.amp_dtype,
                  num_workers=self.cfg.data.num_workers, progress=self.main)
        q = embed_dataset(self.model, gq, desc="mine ground", **kw)
        r = embed_dataset(self.model, gr, desc="mine aerial", **kw)
        pos = np.searchsorted(r_ids, sp.positive[q_ids])
        return q, r, pos

    def _maybe_refresh_dss(self) -> dict[str, Any]:
        """SPEC §4 schedule with a measured start: mine after epoch ≥ dss_start_epoch once the model is
        competent (training R@1 ≥ dss_start_r1, when set), then every dss_every epochs."""
        from s4g_train.sampling import dss_neighbours

        s, e = self.cfg.sampling, self.epoch
        out: dict[str, Any] = {}
        if s.strategy not in ("dss", "gps+dss") or e >= self.planned_epochs:
            return out
        if self.dss_active and e - self.last_refresh < s.dss_every:
            return out
        if not self.dss_active:
            if e < s.dss_start_epoch:
                return out
            if s.dss_start_r1 is not None:
                m = min(self.n, s.dss_mining_size or self.n)
                probe = np.random.default_rng([self.cfg.train.seed, 11]).permutation(self.n)[:m]
                q, r, pos = self._embed_train(np.sort(probe))
                out["train_r1"] = train_r1(q, r, pos)
                if out["train_r1"] < s.dss_start_r1:
                    log.info("epoch %d: training R@1 %.1f%% < %.1f%%: DSS not started yet", e, out["train_r1"],
                             s.dss_start_r1)
                    return out
        t0 = time.perf_counter()
        q, r, pos = self._embed_train()
        sp = self.train_split
        semi = None
        if sp.semi_positives.size:  # reference ids → rows of the mined reference embeddings (−1: not mined)
            r_ids = np.unique(sp.positive)
            j = np.clip(np.searchsorted(r_ids, sp.semi_positives), 0, len(r_ids) - 1)
            semi = np.where((sp.semi_positives >= 0) & (r_ids[j] == sp.semi_positives), j, -1)
        self.dss_nb = np.asarray(dss_neighbours(q, r, pos, s.K, semi_positives=semi, progress=self.main), np.int64)
        out["dss_refresh_s"] = time.perf_counter() - t0
        out["train_r1_full"] = train_r1(q, r, pos)
        self.dss_active, self.last_refresh = True, e
        log.info("epoch %d: DSS neighbour lists refreshed in %.1fs (training R@1 %.1f%%)", e,
                 out["dss_refresh_s"], out["train_r1_full"])
        return out

    # ------------------------------------------------------------------------------ steps
    def _train_step(self, g: torch.Tensor, a: torch.Tensor) -> tuple[float, float]:
        g = g.to(self.device, non_blocking=True)
        a = a.to(self.device, non_blocking=True)
        with autocast_context(self.device, self.amp_dtype):
            ge, ae, scale = self.encoder(g, a)
        ge, ae = ge.float(), ae.float()
        loss = self.loss_fn(ge, ae, scale.float())  # gathers the global batch itself under DDP (losses.py)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.clip_value is not None:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.cfg.optim.clip_value)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        with torch.no_grad():  # batch hardness (local part): similarity of each ground's hardest in-batch negative
            sim = ge.detach() @ ae.detach().T
            sim.fill_diagonal_(-2.0)
            hard = float(sim.max(dim=1).values.mean())
        return float(loss.detach()), hard

    def elapsed(self) -> float:
        """Seconds of the run so far (over resumes), on the configured budget clock."""
        if self.cfg.train.budget_clock == "cpu":
            return self.elapsed_before + (time.process_time() - self.c_start) / max(1, torch.get_num_threads())
        return self.elapsed_before + time.perf_counter() - self.t_start

    def _eval_reserve(self) -> float:
        """Seconds to keep for the final evaluation (measured embedding speed, else a guess from steps)."""
        n_img = len(self.eval_split.queries) + len(self.eval_split.references)
        rate = self.eval_img_s or 200.0
        return 1.3 * n_img / rate + 5.0

    def _over_budget(self, step_s: float) -> bool:
        b = self.cfg.train.time_budget_min
        if b is None:
            return False
        reserve = self._eval_reserve() if self.cfg.train.final_eval else 0.0
        return self.elapsed() + step_s + reserve > 60.0 * b

    def _replan(self, epoch_s: float) -> None:
        """After the second epoch of a time-budgeted run, shorten the schedule so its cosine ends in budget.

        Epoch 2, not 1: the first epoch carries one-off costs (filling the decoded-image cache, oneDNN kernel
        selection, lazy imports) that once made a 3,000-pair run plan 8 epochs where 24 fit.
        """
        b = self.cfg.train.time_budget_min
        if b is None or self.epoch != min(2, self.planned_epochs):
            return
        reserve = self._eval_reserve() if self.cfg.train.final_eval else 0.0
        left = 60.0 * b - self.elapsed() - reserve
        fit = max(self.epoch, self.epoch + int(left // (epoch_s * 1.08)))
        if fit < self.planned_epochs:
            log.info("time budget %.1f min: %d epochs fit (of %d planned); cosine schedule shortened", b, fit,
                     self.planned_epochs)
            self.planned_epochs = fit
            self.sched.total = fit * self.steps_per_epoch

    def fit(self) -> bool:
        """Train until the planned epochs end, the time budget runs out or ``stop_after_epochs``.

        Returns True when training is finished (False: stopped by ``stop_after_epochs``, resumable).
        """
        cfg = self.cfg
        done_here = 0
        while self.epoch < self.planned_epochs:
            e = self.epoch + 1
            if self.epoch_batches is None:
                self.epoch_batches, self.batch_pos = self._build_epoch(), 0
            t_ep, c_ep = time.perf_counter(), self.elapsed()
            hard_gps = batch_gps_m(self.train_split, self.epoch_batches) if self.main else None
            ws, r = cfg.train.batch_size // self.world, self.rank
            local = [b[r * ws:(r + 1) * ws] for b in self.epoch_batches]
            loader = DataLoader(self.dataset, batch_sampler=EpochBatchSampler(local, e, self.batch_pos),
                                num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(e),
                                persistent_workers=False)
            self.encoder.train()
            losses, hards, stopped, last = [], [], False, 0.0
            bar = tqdm(loader, desc=f"epoch {e}/{self.planned_epochs}", disable=not self.main, leave=False,
                       mininterval=1.0)
            for g, a, _ in bar:
                ts = self.elapsed()
                if self._over_budget(last):
                    stopped = True
                    break
                loss, hard = self._train_step(g, a)
                losses.append(loss)
                hards.append(hard)
                self.step += 1
                self.batch_pos += 1
                last = self.elapsed() - ts
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.sched.lr():.2e}")
                if cfg.train.save_every_steps and self.step % cfg.train.save_every_steps == 0 \
                        and self.batch_pos < len(self.epoch_batches):
                    self._save_last()
            bar.close()
            if stopped:
                log.info("time budget reached in epoch %d after %.0fs: stopping training", e, self.elapsed())
                self.planned_epochs = self.epoch  # the partial epoch is not counted
                self.epoch_batches = None
                break
            self.epoch, self.epoch_batches, self.batch_pos = e, None, 0
            epoch_s = time.perf_counter() - t_ep
            rec: dict[str, Any] = {
                "epoch": e, "step": self.step, "loss": float(np.mean(losses)) if losses else None,
                "logit_scale": float(self.model.scale().detach()), "lr": self.sched.lr(),
                "hardness_sim": float(np.mean(hards)) if hards else None, "hardness_gps_m": hard_gps,
                "sampling": "dss" if self.dss_active else ("gps" if self.gps_nb is not None else "random"),
                "time_s": round(epoch_s, 2), "elapsed_s": round(self.elapsed(), 1),
                "wall_s": round(time.perf_counter() - self.t_start, 1),
            }
            self._replan(self.elapsed() - c_ep)
            if e % cfg.eval.every == 0 or e == self.planned_epochs:
                self._evaluate(e, max_queries=cfg.data.max_eval)
            # DSS: rank 0 mines, every rank receives the same lists (so all build identical global batches)
            upd = self._maybe_refresh_dss() if self.main else {}
            if self.distributed:
                upd, self.dss_nb, self.dss_active, self.last_refresh = self.dist.broadcast_object(
                    (upd, self.dss_nb, self.dss_active, self.last_refresh))
            rec.update(upd)
            self.log.write("epoch", **rec)
            log.info("epoch %d: loss %.4f, scale %.1f, hardness %.3f, %.1fs", e, rec["loss"] or float("nan"),
                     rec["logit_scale"], rec["hardness_sim"] or float("nan"), epoch_s)
            self._save_last()
            done_here += 1
            if cfg.train.stop_after_epochs is not None and done_here >= cfg.train.stop_after_epochs \
                    and self.epoch < self.planned_epochs:
                return False
        return True

    # ------------------------------------------------------------------------------ eval & checkpoints
    def _evaluate(self, e: int, max_queries: int | None = None, split: Any = None,
                  event: str = "eval") -> dict[str, float]:
        res: dict[str, float] = {}
        if self.main:
            sp = split if split is not None else self.eval_split
            eg, ea = torch_embed_fns(self.model, self.contract, batch_size=self.cfg.eval.batch_size,
                                     device=self.device, amp_dtype=self.amp_dtype,
                                     num_workers=self.cfg.data.num_workers,
                                     progress=self.main, stores=self._eval_stores(sp, max_queries))
            t0 = time.perf_counter()
            res, _, _ = evaluate_split(eg, ea, sp, max_queries=max_queries)
            n_img = res["queries"] + res["references"]
            self.eval_img_s = n_img / max(1e-6, time.perf_counter() - t0)
            extra = {"elapsed_s": round(self.elapsed(), 2)} if event == "final" else {}
            self.log.write(event, epoch=e, split=sp.split, **res, **extra)
            log.info("epoch %d eval on %s/%s: R@1 %.2f R@5 %.2f", e, sp.name, sp.split, res["R@1"], res["R@5"])
            if split is None and res["R@1"] > self.best_r1:
                self.best_r1 = res["R@1"]
                ckpt.save_checkpoint(self.run_dir / "checkpoints" / "best.pt",
                                     ckpt.model_payload(self.model, self.cfg.to_dict(), e, res))
        if self.distributed:
            self.dist.barrier() if hasattr(self.dist, "barrier") else torch.distributed.barrier()
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
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": get_rng_state(self.rng),
            "step": self.step,
            "best_r1": self.best_r1,
            "planned_epochs": self.planned_epochs,
            "elapsed_s": self.elapsed(),
            "eval_img_s": self.eval_img_s,
            "sampler": {
                "gps_nb": None if self.gps_nb is None else torch.from_numpy(self.gps_nb),
                "dss_nb": None if self.dss_nb is None else torch.from_numpy(self.dss_nb),
                "dss_active": self.dss_active,
                "last_refresh": self.last_refresh,
                "epoch_batches": None if self.epoch_batches is None else torch.from_numpy(self.epoch_batches),
                "batch_pos": self.batch_pos,
            },
        }
        ckpt.save_checkpoint(self.run_dir / "checkpoints" / "last.pt", payload)

    def _restore(self, path: Path) -> None:
        p = ckpt.load_checkpoint(path)
        if "train_state" not in p:
            raise ValueError(f"{path} has no training state (is it a best.pt?); resume needs last.pt")
        self.model.load_state_dict(p["model"])
        st = p["train_state"]
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        set_rng_state(st["rng"], self.rng)
        self.epoch, self.step, self.best_r1 = int(p["epoch"]), int(st["step"]), float(st["best_r1"])
        self.planned_epochs, self.elapsed_before = int(st["planned_epochs"]), float(st["elapsed_s"])
        self.eval_img_s = st.get("eval_img_s")
        s = st["sampler"]
        self.gps_nb = None if s["gps_nb"] is None else s["gps_nb"].numpy()
        self.dss_nb = None if s["dss_nb"] is None else s["dss_nb"].numpy()
        self.dss_active, self.last_refresh = bool(s["dss_active"]), int(s["last_refresh"])
        self.epoch_batches = None if s["epoch_batches"] is None else s["epoch_batches"].numpy()
        self.batch_pos = int(s["batch_pos"])
        log.info("resumed %s at epoch %d, step %d (batch %d of the epoch)", path, self.epoch, self.step,
                 self.batch_pos)

    def final_eval(self) -> dict[str, float]:
        """Evaluate the best checkpoint (or the current weights if none) on the full evaluation split."""
        best = self.run_dir / "checkpoints" / "best.pt"
        if best.is_file():
            self.model.load_state_dict(ckpt.load_checkpoint(best)["model"])
        return self._evaluate(self.epoch, max_queries=None, split=self.eval_split, event="final")

    def close(self) -> None:
        self.log.close()
        if self.distributed:
            self.dist.cleanup()


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_cli_overrides(argv)
    p = argparse.ArgumentParser(
        prog="s4g-train", description="Train Sample4Geo. Override any config field with --set section.field=value "
        "or --section.field value (e.g. --set optim.lr=3e-4 --train.epochs 10).")
    p.add_argument("--preset", help="preset name in s4g_train/presets (cvusa, cvact, vigor-same, vigor-cross, "
                                    "university, synthetic)")
    p.add_argument("--config", help="a YAML config file (applied after the preset)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")
    p.add_argument("--init", metavar="CKPT", help="fine-tune: start from the weights of CKPT (our .pt or a "
                   "published Sample4Geo .pth); fresh optimiser and schedule (= --train.init CKPT)")
    p.add_argument("--backbone", help="timm backbone of a reference --init checkpoint (default: inferred)")
    p.add_argument("--allow-partial", action="store_true", help="--init: copy only the matching tensors")
    p.add_argument("--run-dir", help="run folder (default: <train.runs_dir>/<train.name>)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(rest), overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=(logging.DEBUG if args.verbose else logging.INFO) if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for flag, key, val in (("--init", "train.init", args.init), ("--backbone", "train.init_backbone", args.backbone),
                           ("--allow-partial", "train.init_allow_partial", "true" if args.allow_partial else None)):
        if val is not None:
            if args.resume:
                print(f"s4g-train: {flag} starts a new run; it cannot be combined with --resume", file=sys.stderr)
                return 2
            overrides.append((key, val))
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            print(f"s4g-train: {run_dir}/checkpoints/last.pt does not exist: nothing to resume", file=sys.stderr)
            return 2
        cfg = Config()
        apply_dict(cfg, load_yaml(run_dir / "config.yaml"))
        for k, v in overrides:
            set_override(cfg, k, v)
        validate(cfg)
    else:
        cfg = build_config(args.preset, args.config, overrides)
        run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.train.runs_dir) / cfg.train.name
    if args.print_config:
        import yaml
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if not args.resume and rank == 0 and (run_dir / "checkpoints" / "last.pt").exists():
        print(f"s4g-train: {run_dir} already holds a run; use --resume {run_dir} or another --run-dir",
              file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    tr = Trainer(cfg, run_dir, resume=bool(args.resume))
    try:
        finished = tr.fit()
        if finished and cfg.train.final_eval:
            res = tr.final_eval()
            if tr.main:
                print(f"\n{cfg.data.dataset} ({tr.eval_split.split} split, {len(tr.eval_split.queries)} queries, "
                      f"{len(tr.eval_split.references)} references) after {tr.epoch} epochs, "
                      f"{tr.elapsed() / 60:.1f} min:")
                print(format_table({cfg.train.name: res}))
        elif not finished and tr.main:
            print(f"stopped after epoch {tr.epoch} (train.stop_after_epochs); continue with "
                  f"s4g-train --resume {run_dir}")
    finally:
        tr.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
