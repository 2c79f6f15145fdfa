"""Pieces of a training run that are not the loop itself: LR schedule, RNG state capture, the metrics log,
batch-hardness statistics and data preparation (including generating / reusing the synthetic world)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from s4g_train.model import S4GModel

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ devices
def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available; use auto or cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


_CPU_BF16: bool | None = None


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 / AMX / ARM BF16) and correctly.

    ``torch.backends.cpu.get_cpu_capability()`` reports "AVX512" on CPUs with and without the BF16
    extension, so we read the CPU flags and, as a check, run a tiny bf16 matmul against float32.
    Without native support bf16 autocast is emulated and several times *slower* than float32.
    """
    global _CPU_BF16
    if _CPU_BF16 is None:
        flags = ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = " ".join(line for line in f if line.startswith(("flags", "Features")))
        except OSError:
            pass
        cap = torch.backends.cpu.get_cpu_capability()
        native = any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16")) or "AMX" in cap.upper()
        ok = False
        if native:
            g = torch.Generator().manual_seed(0)
            a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
            ref = a @ b
            got = (a.bfloat16() @ b.bfloat16()).float()
            ok = bool(torch.allclose(got, ref, rtol=0.05, atol=0.5))
        _CPU_BF16 = native and ok
    return _CPU_BF16


def pick_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler). auto: fp16+scaler on CUDA, bf16 on capable CPUs."""
    if mode == "off":
        return None, False
    if mode == "auto":
        if device.type == "cuda":
            return torch.float16, True
        return (torch.bfloat16, False) if cpu_has_native_bf16() else (None, False)
    if mode == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use bf16, auto or off on CPU")
    return torch.float16, True


class Encoder(torch.nn.Module):
    """What DDP wraps: both embeddings and the scale come out of ``forward`` (so DDP sees every parameter)."""

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




class CosineWarmup:
    """Linear warm-up for ``warmup`` steps, then cosine from ``base_lr`` to ``min_ratio·base_lr`` at ``total``.

    Stepped once per iteration. Hand-written rather than ``LambdaLR`` so that ``total`` can be shortened
    mid-run (time-budgeted runs) and the whole state is two integers in the checkpoint.
    """

    def __init__(self, opt: torch.optim.Optimizer, base_lr: float, warmup: int, total: int,
                 min_ratio: float = 0.0) -> None:
        self.opt, self.base_lr, self.warmup, self.total, self.min_ratio = opt, base_lr, int(warmup), int(total), min_ratio
        self.last_step = 0
        self._apply()

    def lr(self, step: int | None = None) -> float:
        s = self.last_step if step is None else step
        if s < self.warmup:
            return self.base_lr * (s + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (s - self.warmup) / span)
        return self.base_lr * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def _apply(self) -> None:
        lr = self.lr()
        for g in self.opt.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total": self.total, "warmup": self.warmup}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.last_step, self.total, self.warmup = int(d["last_step"]), int(d["total"]), int(d["warmup"])
        self._apply()


# ------------------------------------------------------------------------------------------ RNG state
def get_rng_state(gen: np.random.Generator) -> dict[str, Any]:
    """Python, NumPy (global + the sampler's Generator) and torch RNG states in a weights_only-safe form."""
    np_state = np.random.get_state()
    st: dict[str, Any] = {
        "python": json.dumps(random.getstate()),
        "numpy_global": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                         int(np_state[3]), float(np_state[4])],
        # 128-bit PCG64 integers do not fit any tensor dtype: store the state as JSON text.
        "sampler": json.dumps(gen.bit_generator.state),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any], gen: np.random.Generator) -> None:
    py = json.loads(st["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy_global"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    gen.bit_generator.state = json.loads(st["sampler"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ------------------------------------------------------------------------------------------ metrics log
class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line, flushed) + TensorBoard scalars when installed."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.f = open(path, "a", encoding="utf-8") if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tb"))
            except Exception:  # tensorboard not installed: the jsonl file is the log
                self.tb = None

    def write(self, event: str, **rec: Any) -> None:
        if not self.enabled or self.f is None:
            return
        rec = {"event": event, **rec, "wall_time": round(time.time(), 3)}
        self.f.write(json.dumps(rec, default=float) + "\n")
        self.f.flush()
        if self.tb is not None:
            step = int(rec.get("epoch", 0))
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "wall_time"):
                    self.tb.add_scalar(f"{event}/{k}", v, step)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


# ------------------------------------------------------------------------------------------ hardness
def batch_gps_m(split: Any, batches: np.ndarray) -> float | None:
    """Mean distance (m) from each batch member to its nearest other member: low = geographically hard."""
    from s4g_train.sampling import batch_hardness

    gps = np.where(np.isfinite(split.query_gps), split.query_gps, split.reference_gps[split.positive])
    if not np.isfinite(gps).any() or len(batches) == 0:
        return None
    v = batch_hardness(list(batches), gps=gps).get("hardness_gps_m")
    return None if v is None or not np.isfinite(v) else float(v)


def train_r1(q: np.ndarray, r: np.ndarray, pos: np.ndarray) -> float:
    from s4g_engine.metrics import retrieval_metrics

    return float(retrieval_metrics(q, r, pos)["R@1"])


# ------------------------------------------------------------------------------------------ data
def synth_dir(cfg: Any) -> Path:
    """``<data.root>/<key>``: the key changes whenever a generator parameter changes."""
    s = cfg.data.synth
    # worker count does not change the generated bytes (synth contract), so it is not part of the key
    opts = {k: v for k, v in s.options.items() if k != "workers"}
    from s4g_synth import GENERATOR_VERSION  # a new generator version must not reuse old worlds

    params = {"layout": s.layout, "pairs": s.pairs, "seed": s.seed, "options": opts, "generator": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.data.root) / f"{s.layout}-p{s.pairs}-s{s.seed}-{digest}"


def ensure_synthetic(cfg: Any) -> Path:
    """Generate the synthetic world once (into a temp folder, then renamed) or reuse it."""
    out = synth_dir(cfg)
    if (out / ".s4g-complete").is_file():
        log.info("reusing synthetic world %s", out)
        return out
    from s4g_synth import generate_dataset

    s = cfg.data.synth
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    t0 = time.perf_counter()
    log.info("generating the synthetic world (%s layout, %d pairs, seed %d) in %s", s.layout, s.pairs, s.seed, out)
    try:
        generate_dataset(s.layout, tmp, pairs=s.pairs, seed=s.seed, **s.options)
        (tmp / ".s4g-complete").write_text(json.dumps({"pairs": s.pairs, "seed": s.seed,
                                                        "seconds": time.perf_counter() - t0}))
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; a dataset folder is an ordinary shared folder
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("synthetic world generated in %.1fs", time.perf_counter() - t0)
    return out


def prepare_data(cfg: Any, main: bool, barrier: Callable[[], None] | None = None) -> tuple[Any, Any, str]:
    """(train split, eval split, resolved root). Synthetic data is generated by rank 0 only."""
    from s4g_engine.datasets import load_split

    if cfg.data.synthetic:
        if main:
            root = ensure_synthetic(cfg)
        if barrier is not None:
            barrier()
        root = synth_dir(cfg)
    else:
        root = Path(cfg.data.root)
    train = load_split(cfg.data.dataset, str(root), cfg.data.train_split, strict=cfg.data.strict)
    ev = load_split(cfg.data.dataset, str(root), cfg.eval.split or cfg.data.eval_split, strict=cfg.data.strict)
    return train, ev, str(root)


# ------------------------------------------------------------------------------------------ fine-tune init
def init_weights(model: S4GModel, path: str, *, backbone: str | None = None,
                 allow_partial: bool = False) -> dict[str, Any]:
    """Copy the weights of checkpoint ``path`` (ours or a reference Sample4Geo one) into ``model`` in place.

    The checkpoint is loaded through :func:`s4g_train.checkpoint.load_model` (strict, ``weights_only``), then
    its state_dict is loaded into ``model`` strictly: a checkpoint of another architecture is a ``ValueError``
    naming the keys, unless ``allow_partial`` (then only tensors that match by name and shape are copied and
    the rest is logged). Input sizes do not matter for the weights (the model keeps its own config's).
    Returns the loader's info plus ``copied`` / ``skipped`` key lists.
    """
    from s4g_train.checkpoint import load_model

    src, info = load_model(path, backbone=backbone, allow_partial=allow_partial)
    sd, own = src.state_dict(), model.state_dict()
    copied = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(copied)) + sorted(k for k in sd if k not in own)
    if skipped and not allow_partial:
        raise ValueError(
            f"init checkpoint {path} (backbone {src.cfg.backbone!r}) does not fit the configured model "
            f"(model.backbone {model.cfg.backbone!r}): {len(skipped)} tensors differ, e.g. {skipped[:6]}. "
            "Fix: set --model.backbone to the checkpoint's backbone, or pass --allow-partial to fine-tune "
            "from the matching tensors only")
    if skipped:
        log.warning("partial init from %s: %d/%d tensors copied; not from the checkpoint: %s", path,
                    len(copied), len(own), skipped)
    with torch.no_grad():
        for k, v in copied.items():
            own[k].copy_(v.to(own[k].dtype))
    log.info("initialised the model from %s (%s, backbone %s, %d tensors)", path, info.get("format"),
             src.cfg.backbone, len(copied))
    return {**info, "copied": sorted(copied), "skipped": skipped}
