"""The loops ``s4g-bench train`` times besides s4g-train itself (s4g_train/bench/train.py).

* :func:`model_step` — **the ceiling**: the model's own optimisation step with the run's model, input sizes,
  batch, precision, layout and optimiser, on tensors already on the device: no data loading, no
  augmentation, no bookkeeping. What any training loop can at best reach on this machine.
* :func:`model_inference` — the model's own inference rate per view (eval mode, no_grad, autocast,
  device tensors), the ceiling of DSS mining and evaluation.
* :func:`reference_dataset` / :func:`reference_step` — a straightforward re-creation of the reference
  Sample4Geo loop (``train.py`` / ``CVUSADatasetTrain``): decode both images from disk with ``cv2.imread``
  every step, albumentations resize + augment + normalise, flip both / rot90 ↔ roll, shuffled batches, two
  forward passes, InfoNCE, ``clip_grad_value_(100)``, AdamW, GradScaler with ``torch.cuda.amp`` semantics.

Timings synchronise the device before the clock is read, so queued GPU work is counted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from s4g_train.device import autocast_context, synchronize
from s4g_train.losses import make_loss
from s4g_train.model import ModelConfig, S4GModel
from s4g_train.step import PairEncoder

log = logging.getLogger(__name__)


def time_steps(step_fn: Callable[[Any, Any], Any], batches: Iterator[Any], n_warm: int, n_steps: int,
               device: torch.device) -> dict[str, float]:
    """Per-step wall time (data loading included) of ``step_fn(ground, aerial)`` over ``n_steps`` after
    ``n_warm`` warm-up steps: ``s_per_step`` (median), ``mean_s`` and ``first_s`` (the first warm-up step:
    cuDNN tuning, torch.compile)."""
    times, first = [], None
    for i in range(n_warm + n_steps):
        t = time.perf_counter()
        g, a = next(batches)[:2]
        step_fn(g, a)
        synchronize(device)
        dt = time.perf_counter() - t
        if i == 0:
            first = dt
        if i >= n_warm:
            times.append(dt)
    return {"s_per_step": float(np.median(times)), "mean_s": float(np.mean(times)), "first_s": float(first or 0.0)}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as :class:`s4g_train.step.TrainStep` makes them (no decay on biases, norms, the scale)."""
    decay = [p for _, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for _, p in model.named_parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def model_step(model_cfg: ModelConfig, *, batch: int, device: torch.device, amp_dtype: torch.dtype | None,
               use_scaler: bool, channels_last: bool, lr: float, weight_decay: float, label_smoothing: float,
               clip_value: float | None, n_warm: int, n_steps: int, seed: int = 1) -> dict[str, float]:
    """The model's own training step on random device tensors → ``s_per_step`` (mean over ``n_steps``; the
    device is synchronised only around the timed block, so nothing but the GPU's work is counted)."""
    torch.manual_seed(seed)
    model = S4GModel(model_cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    enc = PairEncoder(model, channels_last)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, **fused)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    loss_fn = make_loss("infonce", label_smoothing=label_smoothing)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator(device=device).manual_seed(seed)
    g = torch.randn(batch, 3, *model_cfg.ground_size, device=device, generator=gen).contiguous(memory_format=fmt)
    a = torch.randn(batch, 3, *model_cfg.aerial_size, device=device, generator=gen).contiguous(memory_format=fmt)

    def step() -> None:
        with autocast_context(device, amp_dtype):
            ge, ae, scale = enc(g, a)
        loss = loss_fn(ge.float(), ae.float(), scale.float())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_value is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
        scaler.step(opt)
        scaler.update()

    t = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - t
    for _ in range(max(0, n_warm - 1)):
        step()
    synchronize(device)
    t = time.perf_counter()
    for _ in range(n_steps):
        step()
    synchronize(device)
    s = (time.perf_counter() - t) / n_steps
    return {"s_per_step": s, "mean_s": s, "first_s": first}


@torch.no_grad()
def model_inference(model: S4GModel, size: tuple[int, int], *, batch: int, device: torch.device,
                    amp_dtype: torch.dtype | None, channels_last: bool = True, n_warm: int = 2,
                    n_batches: int = 6) -> float:
    """Images per second of ``model.embed`` in eval mode on random device tensors of ``size`` (H, W)."""
    was = model.training
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=fmt)
    try:
        for _ in range(n_warm):
            with autocast_context(device, amp_dtype):
                model.embed(x)
        synchronize(device)
        t = time.perf_counter()
        for _ in range(n_batches):
            with autocast_context(device, amp_dtype):
                model.embed(x)
        synchronize(device)
        return batch * n_batches / (time.perf_counter() - t)
    finally:
        model.train(was)


def reference_dataset(split: Any, cfg: Any, mean: list[float], std: list[float]) -> Any:
    """Sample4Geo's training dataset, re-created: cv2 decode every time, albumentations per view."""
    import albumentations as A
    import cv2
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


def reference_step(cfg: Any, device: torch.device, amp: torch.dtype | None) -> Callable[[Any, Any], None]:
    """The reference loop's optimisation step on a fresh model (same init seed as s4g-train's): two forward
    passes, InfoNCE, GradScaler (fp16 only), clip 100, AdamW, a per-step scheduler."""
    torch.manual_seed(cfg.train.seed)
    model = S4GModel(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    loss_fn = make_loss("infonce", label_smoothing=cfg.train.label_smoothing)

    def step(g: Any, a: Any) -> None:
        g, a = g.to(device), a.to(device)
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
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

    return step
