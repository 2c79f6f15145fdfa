"""``s4g-bench train``: training-step throughput of ``s4g-train`` against a straightforward re-creation of the
reference Sample4Geo loop — same model, batch, data files and device — and the DSS refresh time as a share
of an epoch.

The reference re-creation (Sample4Geo ``train.py`` / ``CVUSADatasetTrain``) per step: decode both images
from disk with ``cv2.imread`` (full size), albumentations resize + augment + normalise, flip both / rot90 ↔
roll, a DataLoader with shuffled batches, ``model(ground)`` and ``model(aerial)`` as two forward passes,
InfoNCE, ``clip_grad_value_(100)``, AdamW, per-step scheduler. Its autocast is ``torch.cuda.amp`` only, so on
a CPU it runs float32; we time it like that ("as is") and with bf16 autocast added ("+bf16"), so the
comparison separates the number format from the rest. When the preset feeds polar tiles, the reference
re-creation gets the same core polar transform, so both loops see the same inputs.

s4g-train's step (``Trainer.train_step`` over its own DataLoader): decoded images cached in RAM at the
network size, geometric + photometric augmentation on the small arrays, one concatenated forward when both
views have the same size, channels-last, bf16 autocast on CPUs with native bf16 (fp16 + GradScaler on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from s4g_train.bench.hygiene import RunGuard, write_results

log = logging.getLogger(__name__)


def _reference_dataset(split: Any, cfg: Any, mean: list[float], std: list[float]) -> Any:
    """Sample4Geo's training dataset, re-created: cv2 decode every time, albumentations per view."""
    import albumentations as A
    import cv2
    import torch
    from albumentations.pytorch import ToTensorV2
    from torch.utils.data import Dataset

    from s4g_train.data import photometric, polar_source_size, polar_tensor

    gh, gw = cfg.model.ground_size
    polar = cfg.model.polar_aerial
    ah, aw = polar_source_size(cfg.model.aerial_size) if polar else cfg.model.aerial_size
    norm = [A.Normalize(mean=mean, std=std), ToTensorV2()]
    t_ground = A.Compose([A.Resize(gh, gw), photometric(cfg.data.aug.jitter, cfg.data.aug.dropout_p), *norm])
    t_aerial = A.Compose([A.Resize(ah, aw), photometric(cfg.data.aug.jitter, cfg.data.aug.dropout_p),
                          *([] if polar else norm)])

    class RefTrain(Dataset):
        def __len__(self) -> int:
            return len(split.queries)

        def __getitem__(self, i: int) -> tuple[Any, Any, int]:
            q = cv2.cvtColor(cv2.imread(split.queries[i]), cv2.COLOR_BGR2RGB)
            r = cv2.cvtColor(cv2.imread(split.references[int(split.positive[i])]), cv2.COLOR_BGR2RGB)
            if np.random.random() < 0.5:
                q, r = cv2.flip(q, 1), cv2.flip(r, 1)
            q = t_ground(image=q)["image"]
            r = t_aerial(image=r)["image"]
            if np.random.random() < 0.75:
                k = np.random.choice([1, 2, 3])
                if polar:
                    r = np.ascontiguousarray(np.rot90(r, k))
                else:
                    r = torch.rot90(r, k=int(k), dims=(1, 2))
                q = torch.roll(q, shifts=-int(k) * (gw // 4), dims=2)
            if polar:
                r = polar_tensor(r, cfg.model.aerial_size, mean, std)
            return q, r, i

    return RefTrain()


def _time_steps(step_fn: Any, batches: Any, n_warm: int, n_steps: int) -> float:
    """Median seconds per step (data loading included) over ``n_steps`` after ``n_warm``."""
    times = []
    it = iter(batches)
    for i in range(n_warm + n_steps):
        t = time.perf_counter()
        g, a, _ = next(it)
        step_fn(g, a)
        if i >= n_warm:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from s4g_train.config import build_config, split_cli_overrides
    from s4g_train.losses import make_loss
    from s4g_train.model import S4GModel
    from s4g_train.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    _, overrides = split_cli_overrides(args.set)
    cfg = build_config(args.preset, None, overrides + [("train.final_eval", "false"), ("eval.every", "100000")])
    B = cfg.train.batch_size
    tmp = Path(tempfile.mkdtemp(prefix="s4g-bench-train-"))
    tr = Trainer(cfg, tmp / "run")
    need = (args.warmup + args.steps) * B
    res: dict[str, Any] = {"preset": args.preset, "overrides": args.set, "batch_size": B,
                           "backbone": cfg.model.backbone, "ground_size": list(cfg.model.ground_size),
                           "aerial_size": list(cfg.model.aerial_size), "polar_aerial": cfg.model.polar_aerial,
                           "threads": torch.get_num_threads(), "device": str(tr.device),
                           "amp": str(tr.amp_dtype), "train_pairs": tr.n, "rows": []}
    if tr.n < need:
        log.warning("only %d training pairs for %d steps of %d: batches repeat", tr.n, args.warmup + args.steps, B)

    # --- s4g-train
    def s4g_batches() -> Any:
        e = 0
        while True:
            e += 1
            from s4g_train.data import EpochBatchSampler
            batches = tr.schedule.batches()  # the trainer's batch schedule, epoch after epoch
            tr.schedule.end_epoch()
            yield from DataLoader(tr.dataset, batch_sampler=EpochBatchSampler(batches, e),
                                  num_workers=cfg.data.num_workers)

    t_s4g = _time_steps(lambda g, a: tr.train_step(g, a), s4g_batches(), args.warmup, args.steps)
    res["rows"].append({"loop": "s4g-train", "s_per_step": t_s4g, "pairs_per_s": B / t_s4g})

    # --- reference re-creation (fresh model with the same init, same files)
    mean, std = list(tr.contract.ground.mean), list(tr.contract.ground.std)
    ds = _reference_dataset(tr.train_split, cfg, mean, std)
    for label, amp in (("reference loop (as is: CUDA-only autocast → fp32 on CPU)",
                        torch.float16 if tr.device.type == "cuda" else None),
                       ("reference loop + bf16 autocast", torch.bfloat16)):
        if amp is torch.bfloat16 and tr.device.type == "cuda":
            continue
        torch.manual_seed(cfg.train.seed)
        model = S4GModel(cfg.model).to(tr.device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        scaler = torch.amp.GradScaler(tr.device.type, enabled=amp is torch.float16)
        loss_fn = make_loss("infonce", label_smoothing=cfg.train.label_smoothing)

        def ref_step(g: Any, a: Any) -> None:
            g, a = g.to(tr.device), a.to(tr.device)
            ctx = torch.autocast(tr.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
            with ctx:
                f1 = model.embed(g)
                f2 = model.embed(a)
                loss = loss_fn(f1, f2, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_value_(model.parameters(), 100.0)
            scaler.step(opt)
            scaler.update()
            sched.step()

        def ref_batches() -> Any:
            while True:
                yield from DataLoader(ds, batch_size=B, shuffle=True, drop_last=True,
                                      num_workers=cfg.data.num_workers)

        t_ref = _time_steps(ref_step, ref_batches(), args.warmup, args.steps)
        res["rows"].append({"loop": label, "s_per_step": t_ref, "pairs_per_s": B / t_ref})
    base = res["rows"][1]["s_per_step"]
    for r in res["rows"]:
        r["speedup_vs_reference_as_is"] = base / r["s_per_step"]

    # --- DSS refresh as a share of an epoch
    t0 = time.perf_counter()
    q, r, pos = tr._embed_train()
    t_embed = time.perf_counter() - t0
    from s4g_train.sampling import dss_neighbours

    t1 = time.perf_counter()
    dss_neighbours(q, r, pos, cfg.sampling.K)
    t_topk = time.perf_counter() - t1
    epoch_s = tr.steps_per_epoch * t_s4g
    res["dss"] = {"embed_s": t_embed, "topk_s": t_topk, "refresh_s": t_embed + t_topk, "epoch_s": epoch_s,
                  "share_of_epoch": (t_embed + t_topk) / epoch_s, "share_per_epoch_amortised":
                  (t_embed + t_topk) / epoch_s / max(1, cfg.sampling.dss_every),
                  "dss_every": cfg.sampling.dss_every}
    tr.close()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s4g-bench train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--steps", type=int, default=12, help="timed steps per loop")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 4 timed steps after 1 warm-up")
    p.add_argument("--out", default="bench_results/train.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both loops (e.g. --set train.batch_size=32)")
    args = p.parse_args(argv)
    args.set = [x for kv in args.set for x in ("--set", kv)]
    if args.quick:
        args.steps, args.warmup = 4, 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    guard = RunGuard.start(args.threads or os.cpu_count())
    res = run(args)
    guard.finish(res)
    out = Path(args.out)
    write_results(out, res)
    print(f"{'loop':60s} {'s/step':>8s} {'pairs/s':>8s} {'× ref':>6s}")
    for r in res["rows"]:
        print(f"{r['loop']:60s} {r['s_per_step']:8.3f} {r['pairs_per_s']:8.1f} {r['speedup_vs_reference_as_is']:6.2f}")
    d = res["dss"]
    print(f"DSS refresh: {d['refresh_s']:.1f} s (embed {d['embed_s']:.1f} s + top-k {d['topk_s']:.2f} s) = "
          f"{100 * d['share_of_epoch']:.1f}% of one epoch ({d['epoch_s']:.1f} s; every {d['dss_every']} epochs → "
          f"{100 * d['share_per_epoch_amortised']:.1f}% per epoch); wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
