"""``s4g-bench train``: s4g-train's training step and embedding against the ceiling the model itself sets,
and against a re-creation of the reference Sample4Geo loop — same model, input sizes, batch, data files,
precision and device — plus the DSS refresh time as a share of an epoch.

Rows (s/step, pairs/s, ``× model step`` = fraction of the ceiling, ``× reference`` = speed-up):

* **model step** — the model's own optimisation step on device tensors, no data loading
  (s4g_train/bench/train_loops.py); with ``--variants`` also fp16 + GradScaler and NCHW, so the precision
  and layout defaults can be checked.
* **s4g-train input path only** — the same batches, loader → device → normalised, without the step: above
  the model step's pairs/s means the input keeps up.
* **s4g-train** — ``Trainer.train_step`` fed by the trainer's own :class:`s4g_train.feed.TrainFeed` over its
  batch schedule: decode (cached in RAM), augmentation, the CPU or device input path, the step.
  ``--compile`` adds the same with ``train.compile`` and reports the compile time (first step − a step).
* **reference loop** — cv2 decode every step, albumentations, two forward passes; on a CPU run "as is"
  (its autocast is ``torch.cuda.amp``: float32) and "+bf16"; on CUDA fp16 + GradScaler as the reference.

Embedding: the model's inference rate per view (eval mode, autocast, device tensors, the embedding batch)
against s4g's DSS refresh embedding (the training pairs, un-augmented) and evaluation embedding. DSS share:
refresh (embedding + top-k) / one epoch of s4g-train steps, measured on the run's data and projected to
CVUSA's 35,532 training pairs (``--cvusa-topk`` times the top-k at that size; default on CUDA).
Writes JSON (``--out``) and the same figures as Markdown (``--md``, default: ``--out`` with ``.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.fileio import atomic_write_text
from s4g_engine.logs import setup_logging
from s4g_train.bench.hygiene import RunGuard, write_results

log = logging.getLogger(__name__)

CVUSA_TRAIN_PAIRS = 35_532


def _row(name: str, t: dict[str, float], batch: int, **extra: Any) -> dict[str, Any]:
    return {"loop": name, **t, "pairs_per_s": batch / t["s_per_step"], **extra}


def _ceiling_rows(tr: Any, cfg: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The model step with the run's settings (+ fp16/GradScaler and NCHW variants)."""
    import torch

    from s4g_train.bench.train_loops import model_step
    from s4g_train.device import use_channels_last

    cl = use_channels_last(cfg.train.channels_last, tr.device)
    kw = dict(batch=cfg.train.batch_size, device=tr.device, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
              label_smoothing=cfg.train.label_smoothing, clip_value=cfg.optim.clip_value, n_warm=args.warmup,
              n_steps=args.steps, seed=cfg.train.seed)
    amp_name = str(tr.amp_dtype).replace("torch.", "") if tr.amp_dtype is not None else "float32"
    scaler = tr.train_step.scaler.is_enabled()
    variants = [(f"model step ({amp_name}{' + GradScaler' if scaler else ''}, {'NHWC' if cl else 'NCHW'})",
                 tr.amp_dtype, scaler, cl)]
    if args.variants and tr.device.type == "cuda":
        variants += [("model step (float16 + GradScaler, NHWC)", torch.float16, True, True),
                     (f"model step ({amp_name}, NCHW)", tr.amp_dtype, scaler, False)]
    rows = []
    for name, amp, sc, layout in variants:
        t = model_step(cfg.model, amp_dtype=amp, use_scaler=sc, channels_last=layout, **kw)
        rows.append(_row(name, t, cfg.train.batch_size, kind="ceiling"))
        log.info("%s: %.4f s/step", name, t["s_per_step"])
        if tr.device.type == "cuda":
            torch.cuda.empty_cache()  # the ceiling's model and optimiser are gone; give their memory back
    return rows


def _s4g_batches(tr: Any) -> Iterator[Any]:
    """The trainer's own batches, epoch after epoch, through its feed (persistent workers, device path)."""
    e = 0
    while True:
        e += 1
        batches = tr.schedule.batches()
        tr.schedule.end_epoch()
        yield from tr.feed.epoch(batches, e)


def _s4g_rows(tr: Any, cfg: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from s4g_train.bench.train_loops import time_steps

    # the input path alone (loader workers → pinned → device → normalise), to see whether it keeps up with the step;
    # the warm-up drains the batches the workers prepared ahead, so the timed ones show their steady rate
    ahead = cfg.data.num_workers * cfg.data.prefetch_factor
    t = time_steps(lambda g, a: None, _s4g_batches(tr), max(args.warmup, ahead + 1),
                   max(args.steps, cfg.data.num_workers), tr.device)
    rows = [_row("s4g-train input path only (no step)", t, cfg.train.batch_size, kind="input")]
    t = time_steps(lambda g, a: tr.train_step(g, a), _s4g_batches(tr), args.warmup, args.steps, tr.device)
    rows.append(_row("s4g-train", t, cfg.train.batch_size, kind="s4g"))
    if args.compile:
        from s4g_train.step import TrainStep

        cfg.train.compile = True
        step = TrainStep(tr.model, cfg, device=tr.device, amp_dtype=tr.amp_dtype,
                         use_scaler=tr.train_step.scaler.is_enabled(), steps_per_epoch=tr.steps_per_epoch)
        t = time_steps(lambda g, a: step(g, a), _s4g_batches(tr), args.warmup, args.steps, tr.device)
        compile_s = (step.first_step_s or t["first_s"]) - t["s_per_step"]  # the first step compiles
        rows.append(_row("s4g-train + torch.compile", t, cfg.train.batch_size, kind="s4g", compile_s=compile_s))
        cfg.train.compile = False
    tr.feed.close()  # its workers may still be preparing batches: they must not compete with the next loop
    return rows


def _reference_rows(tr: Any, cfg: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    from torch.utils.data import DataLoader

    from s4g_train.bench.train_loops import reference_dataset, reference_step, time_steps

    mean, std = list(tr.contract.ground.mean), list(tr.contract.ground.std)
    ds = reference_dataset(tr.train_split, cfg, mean, std)
    cuda = tr.device.type == "cuda"
    loops = [("reference loop (fp16 autocast + GradScaler, as the reference on CUDA)", torch.float16)] if cuda else \
        [("reference loop (as is: CUDA-only autocast → fp32 on CPU)", None), ("reference loop + bf16 autocast",
                                                                             torch.bfloat16)]
    rows = []
    for label, amp in loops:
        step = reference_step(cfg, tr.device, amp)

        def batches() -> Iterator[Any]:
            while True:
                yield from DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                      num_workers=cfg.data.num_workers, pin_memory=cuda)

        t = time_steps(step, batches(), args.warmup, args.steps, tr.device)
        rows.append(_row(label, t, cfg.train.batch_size, kind="reference"))
    return rows


def _embedding(tr: Any, cfg: Any, res: dict[str, Any], args: argparse.Namespace) -> None:
    """Model inference rate vs DSS refresh and evaluation embedding; the refresh's share of an epoch."""
    import torch

    from s4g_train.bench.train_loops import model_inference
    from s4g_train.device import synchronize
    from s4g_train.evaluate import torch_embed_fns
    from s4g_train.sampling import dss_neighbours

    dev, bs = tr.device, cfg.eval.batch_size
    # NHWC inputs, as s4g's embedding feeds them
    rate = {v: model_inference(tr.model, size, batch=bs, device=dev, amp_dtype=tr.amp_dtype, channels_last=True)
            for v, size in (("ground", cfg.model.ground_size), ("aerial", cfg.model.aerial_size))}
    model_pairs_s = 1.0 / (1.0 / rate["ground"] + 1.0 / rate["aerial"])
    tr._embed_train(np.arange(min(tr.n, 2 * bs)))  # warm-up: cuDNN tuning for the embedding shapes
    synchronize(dev)
    t0 = time.perf_counter()
    q, r, pos = tr._embed_train()
    synchronize(dev)
    t_embed = time.perf_counter() - t0
    t1 = time.perf_counter()
    dss_neighbours(q, r, pos, cfg.sampling.K)
    t_topk = time.perf_counter() - t1
    sp = tr.eval_split
    eg, ea = torch_embed_fns(tr.model, tr.contract, batch_size=bs, device=dev, amp_dtype=tr.amp_dtype,
                             num_workers=cfg.data.num_workers, progress=False, stores=tr._eval_stores(sp, None),
                             device_preprocess=cfg.data.device_preprocess)
    t2 = time.perf_counter()
    eg(sp.queries)
    ea(sp.references)
    t_eval = time.perf_counter() - t2
    n_eval = len(sp.queries) + len(sp.references)
    res["embedding"] = {
        "batch": bs, "model_img_s": rate, "model_pairs_s": model_pairs_s,
        "dss_pairs": tr.n, "dss_embed_s": t_embed, "dss_pairs_s": tr.n / t_embed,
        "dss_x_model": tr.n / t_embed / model_pairs_s,
        "eval_images": n_eval, "eval_embed_s": t_eval, "eval_img_s": n_eval / t_eval,
        "eval_x_model": (n_eval / t_eval) / (2.0 * model_pairs_s)}
    s4g = next(x for x in res["rows"] if x["loop"] == "s4g-train")
    epoch_s = tr.steps_per_epoch * s4g["s_per_step"]
    refresh = t_embed + t_topk
    res["dss"] = {"embed_s": t_embed, "topk_s": t_topk, "refresh_s": refresh, "epoch_s": epoch_s,
                  "share_of_epoch": refresh / epoch_s, "dss_every": cfg.sampling.dss_every,
                  "share_per_epoch_amortised": refresh / epoch_s / max(1, cfg.sampling.dss_every)}
    res["dss"]["cvusa"] = _cvusa_projection(tr, cfg, s4g["s_per_step"], tr.n / t_embed, t_topk, args,
                                            q if isinstance(q, torch.Tensor) else None)


def _cvusa_projection(tr: Any, cfg: Any, step_s: float, embed_pairs_s: float, topk_s: float,
                      args: argparse.Namespace, like: Any) -> dict[str, Any]:
    """The refresh share at CVUSA's size: embedding and epoch both scale with N; the top-k is timed at N when
    asked (random unit vectors; default on CUDA), else scaled by (N / n)² from the measured one."""
    import torch

    from s4g_train.sampling import dss_neighbours

    n, B = CVUSA_TRAIN_PAIRS, cfg.train.batch_size
    if args.cvusa_topk if args.cvusa_topk is not None else tr.device.type == "cuda":
        d = tr.model.embed_dim
        gen = torch.Generator(device=tr.device).manual_seed(0)
        emb = torch.nn.functional.normalize(torch.randn(2 * n, d, device=tr.device, generator=gen), dim=1)
        g, a = (emb[:n], emb[n:]) if like is not None else (emb[:n].cpu().numpy(), emb[n:].cpu().numpy())
        t = time.perf_counter()
        dss_neighbours(g, a, np.arange(n), cfg.sampling.K)
        topk, how = time.perf_counter() - t, "timed at N"
    else:
        topk, how = topk_s * (n / tr.n) ** 2, f"scaled from {tr.n} pairs by (N/n)^2"
    refresh = n / embed_pairs_s + topk
    epoch = (n // B) * step_s
    return {"pairs": n, "embed_s": n / embed_pairs_s, "topk_s": topk, "topk_how": how, "refresh_s": refresh,
            "epoch_s": epoch, "share_of_epoch": refresh / epoch,
            "share_per_epoch_at_dss_every_4": refresh / epoch / 4}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from s4g_train.config import build_config, split_cli_overrides
    from s4g_train.device import use_channels_last, use_device_preprocess
    from s4g_train.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    _, overrides = split_cli_overrides(args.set)
    cfg = build_config(args.preset, None, overrides + [("train.final_eval", "false"), ("eval.every", "100000")])
    B = cfg.train.batch_size
    tr = Trainer(cfg, Path(tempfile.mkdtemp(prefix="s4g-bench-train-")) / "run")
    dev = tr.device
    res: dict[str, Any] = {
        "preset": args.preset, "overrides": args.set, "batch_size": B, "backbone": cfg.model.backbone,
        "ground_size": list(cfg.model.ground_size), "aerial_size": list(cfg.model.aerial_size),
        "polar_aerial": cfg.model.polar_aerial, "threads": torch.get_num_threads(), "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "torch": torch.__version__,
        "amp": str(tr.amp_dtype), "grad_scaler": tr.train_step.scaler.is_enabled(),
        "channels_last": use_channels_last(cfg.train.channels_last, dev),
        "device_preprocess": use_device_preprocess(cfg.data.device_preprocess, dev), "feed_mode": tr.feed.mode,
        "num_workers": cfg.data.num_workers, "train_pairs": tr.n, "steps": args.steps, "warmup": args.warmup,
        "rows": []}
    if tr.n < (args.warmup + args.steps) * B:
        log.warning("only %d training pairs for %d steps of %d: batches repeat", tr.n, args.warmup + args.steps, B)
    parts = set(args.parts.split(","))
    try:
        if "ceiling" in parts:
            res["rows"] += _ceiling_rows(tr, cfg, args)
        if parts & {"s4g", "embedding"}:
            res["rows"] += _s4g_rows(tr, cfg, args)
        if "reference" in parts:
            res["rows"] += _reference_rows(tr, cfg, args)
        ceiling = next((x["s_per_step"] for x in res["rows"] if x["kind"] == "ceiling"), None)
        ref = next((x["s_per_step"] for x in res["rows"] if x["kind"] == "reference"), None)
        for x in res["rows"]:
            x["x_model_step"] = ceiling / x["s_per_step"] if ceiling else None
            x["x_reference"] = ref / x["s_per_step"] if ref else None
        if "embedding" in parts:
            _embedding(tr, cfg, res, args)
    finally:
        tr.close()
    return res


def to_markdown(res: dict[str, Any]) -> str:
    """The figures of one run as Markdown tables."""
    f = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"**{res['backbone']}**, ground {res['ground_size']}, aerial {res['aerial_size']}"
             f"{' (polar)' if res['polar_aerial'] else ''}, batch {res['batch_size']}, {res['device']}"
             f"{' (' + res['gpu'] + ')' if res.get('gpu') else ''}, amp {res['amp']}"
             f"{' + GradScaler' if res['grad_scaler'] else ''}, channels_last {res['channels_last']}, input path "
             f"{'device (' + res['feed_mode'] + ')' if res['device_preprocess'] else 'CPU'}, "
             f"{res['num_workers']} workers, torch {res['torch']}; {res['steps']} timed steps after {res['warmup']}.",
             "", "| loop | s / step | pairs / s | × model step | × reference |", "|---|---|---|---|---|"]
    for x in res["rows"]:
        extra = f" (compile {x['compile_s']:.0f} s)" if "compile_s" in x else ""
        lines.append(f"| {x['loop']}{extra} | {x['s_per_step']:.4f} | {x['pairs_per_s']:.1f} | "
                     f"{f(x['x_model_step'])} | {f(x['x_reference'])} |")
    e, d = res.get("embedding"), res.get("dss")
    if e:
        lines += ["", f"| embedding (batch {e['batch']}) | rate | × model |", "|---|---|---|",
                  f"| model inference, ground / aerial | {e['model_img_s']['ground']:.0f} / "
                  f"{e['model_img_s']['aerial']:.0f} img/s ({e['model_pairs_s']:.0f} pairs/s) | 1.00 |",
                  f"| DSS refresh embedding ({e['dss_pairs']} pairs) | {e['dss_pairs_s']:.0f} pairs/s | "
                  f"{e['dss_x_model']:.2f} |",
                  f"| evaluation embedding ({e['eval_images']} images) | {e['eval_img_s']:.0f} img/s | "
                  f"{e['eval_x_model']:.2f} |"]
    if d:
        c = d["cvusa"]
        lines += ["", f"DSS refresh: {d['refresh_s']:.2f} s (embed {d['embed_s']:.2f} s + top-k {d['topk_s']:.3f} s)"
                  f" = **{100 * d['share_of_epoch']:.1f} % of an epoch** ({d['epoch_s']:.1f} s); every "
                  f"{d['dss_every']} epochs → {100 * d['share_per_epoch_amortised']:.1f} % per epoch.",
                  f"At CVUSA size ({c['pairs']} pairs): {c['refresh_s']:.1f} s (embed {c['embed_s']:.1f} s + top-k "
                  f"{c['topk_s']:.2f} s, {c['topk_how']}) vs an epoch of {c['epoch_s']:.0f} s = "
                  f"**{100 * c['share_of_epoch']:.1f} %** per refresh, {100 * c['share_per_epoch_at_dss_every_4']:.1f}"
                  " % per epoch at dss_every 4."]
    if res.get("noisy"):
        lines += ["", "**Noisy run** (the machine was loaded): not figures to report."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s4g-bench train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--steps", type=int, default=12, help="timed steps per loop")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 4 timed steps after 1 warm-up")
    p.add_argument("--variants", action="store_true", help="CUDA: also time the model step in fp16 + GradScaler "
                   "and in NCHW (to check the precision and layout defaults)")
    p.add_argument("--compile", action="store_true", help="also time s4g-train with train.compile (torch.compile) "
                   "and report the compile time")
    p.add_argument("--parts", default="ceiling,s4g,reference,embedding",
                   help="what to time, comma-separated: ceiling, s4g, reference, embedding (needs s4g)")
    p.add_argument("--cvusa-topk", action=argparse.BooleanOptionalAction, default=None,
                   help="time the DSS top-k at CVUSA size (default: on CUDA only)")
    p.add_argument("--out", default="bench_results/train.json")
    p.add_argument("--md", default=None, help="Markdown copy of the figures (default: --out with .md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every loop (e.g. --set train.batch_size=32)")
    args = p.parse_args(argv)
    args.set = [x for kv in args.set for x in ("--set", kv)]
    if args.quick:
        args.steps, args.warmup = 4, 1
    setup_logging(plain=True)
    guard = RunGuard.start(args.threads or os.cpu_count())
    res = run(args)
    guard.finish(res)
    out = Path(args.out)
    write_results(out, res)
    md = to_markdown(res)
    atomic_write_text(Path(args.md) if args.md else out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
