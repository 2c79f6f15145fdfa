"""One optimisation step of Sample4Geo training: the (DDP-wrapped) two-view encoder, AdamW with the
per-iteration warm-up + cosine schedule, AMP (autocast; GradScaler with fp16), gradient clipping, and the
in-batch hardness figure that the metrics log reports. Knows nothing about epochs, batches or checkpoints' files.

On CUDA the step takes device tensors from :class:`s4g_train.feed.TrainFeed` (already normalised and
channels-last), uses the fused AdamW kernel, and synchronises with the host once per step (loss and
hardness come back together). ``train.compile`` compiles the encoder; the first step's time, which
includes the compilation, is logged.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import torch

from s4g_train.config import Config
from s4g_train.device import autocast_context, use_channels_last
from s4g_train.ema import WeightEMA
from s4g_train.losses import SOFTMAX_LOSSES, make_loss
from s4g_train.lr import CosineWarmup
from s4g_train.model import S4GModel

log = logging.getLogger(__name__)


class PairEncoder(torch.nn.Module):
    """What DDP wraps: both embeddings and the scale come out of ``forward`` (so DDP sees every parameter).

    (Called ``Encoder`` before; that name now means only the engine's :class:`s4g_engine.encoders.Encoder`.)
    """

    def __init__(self, model: S4GModel, channels_last: bool) -> None:
        super().__init__()
        self.net = model
        self.channels_last = channels_last

    def forward(self, ground: torch.Tensor, aerial: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            ground = ground.contiguous(memory_format=torch.channels_last)
            aerial = aerial.contiguous(memory_format=torch.channels_last)
        if ground.shape[1:] == aerial.shape[1:]:
            # Same input size (polar tile): one pass over both views is faster than two smaller ones.
            e = self.net.embed(torch.cat([ground, aerial]))
            g, a = e[: len(ground)], e[len(ground):]
        else:
            g, a = self.net.embed(ground), self.net.embed(aerial)
        return g, a, self.net.scale()


class TrainStep:
    """``step(ground, aerial) → (loss, hardness)`` with its optimiser state.

    ``loss`` is the global-batch loss (under DDP the loss gathers every rank's embeddings itself,
    ``s4g_train.losses``); ``hardness`` is the mean similarity of each local ground view's hardest in-batch
    negative. The LR schedule spans ``train.epochs × steps_per_epoch`` iterations, fixed by the config.
    """

    def __init__(self, model: S4GModel, cfg: Config, *, device: torch.device, amp_dtype: torch.dtype | None,
                 use_scaler: bool, steps_per_epoch: int, distributed: bool = False) -> None:
        self.model, self.cfg, self.device, self.amp_dtype = model, cfg, device, amp_dtype
        self.encoder: torch.nn.Module = PairEncoder(model, use_channels_last(cfg.train.channels_last, device))
        self.first_step_s: float | None = None  # wall time of the first step (with torch.compile: compiling)
        if cfg.train.compile:
            self.encoder = torch.compile(self.encoder)
        if distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.encoder = torch.nn.parallel.DistributedDataParallel(self.encoder, device_ids=ids)
        o = cfg.optim
        decay = [p for _, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for _, p in model.named_parameters() if p.ndim <= 1]
        # CUDA: the fused AdamW kernel (one launch for all parameters); the CPU keeps the default implementation
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas),
                                     **fused)
        self.sched = CosineWarmup(self.opt, base_lr=o.lr, warmup=int(round(o.warmup_epochs * steps_per_epoch)),
                                  total=cfg.train.epochs * steps_per_epoch, min_ratio=o.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        kw = {"label_smoothing": cfg.train.label_smoothing} \
            if cfg.train.loss in SOFTMAX_LOSSES else {}
        self.loss_fn = make_loss(cfg.train.loss, **kw)
        self.ema = WeightEMA.from_config(model, cfg)  # None unless train.ema_decay; its state is the trainer's

    def __call__(self, g: torch.Tensor, a: torch.Tensor) -> tuple[float, float]:
        t0 = time.perf_counter() if self.first_step_s is None else 0.0
        g = g.to(self.device, non_blocking=True)
        a = a.to(self.device, non_blocking=True)
        with autocast_context(self.device, self.amp_dtype):
            ge, ae, scale = self.encoder(g, a)
        ge, ae = ge.float(), ae.float()
        loss = self.loss_fn(ge, ae, scale.float())
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.clip_value is not None:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.cfg.optim.clip_value)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)
        with torch.no_grad():  # batch hardness (local part): similarity of each ground's hardest in-batch negative
            sim = ge.detach() @ ae.detach().T
            sim.fill_diagonal_(-2.0)
            out = torch.stack([loss.detach().float(), sim.max(dim=1).values.mean()]).tolist()  # one host sync
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - t0
            log.info("first training step: %.1fs%s", self.first_step_s,
                     " (includes torch.compile)" if self.cfg.train.compile else "")
        return float(out[0]), float(out[1])

    def train(self) -> None:
        self.encoder.train()

    def lr(self) -> float:
        return self.sched.lr()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.opt.load_state_dict(st["optimizer"])
        for g in self.opt.param_groups:  # the AdamW kernel follows this run's device, not the checkpoint's
            g["fused"] = True if self.device.type == "cuda" else None
        self.sched.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])


def __getattr__(name: str) -> Any:
    if name == "Encoder":  # deprecated alias: the engine's Encoder is a different thing (an ONNX/TensorRT backend)
        warnings.warn("s4g_train.step.Encoder is deprecated: use s4g_train.step.PairEncoder", DeprecationWarning,
                      stacklevel=2)
        return PairEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
