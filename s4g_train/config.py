"""Typed training configuration: dataclasses, YAML presets, CLI overrides of any field.

Resolution order (timm ``train.py`` style): dataclass defaults → preset YAML (``--preset NAME`` from
``s4g_train/presets/`` or ``--config FILE``) → ``--set section.field=value`` / ``--section.field value``
overrides. The resolved config is written to ``<run_dir>/config.yaml`` by the trainer, and stored in every
checkpoint, so a run can be rebuilt from its folder alone.

Values given on the command line are parsed as YAML scalars (``3e-4`` → float, ``[64, 256]`` → list,
``null`` → None, ``true`` → bool) and then coerced to the field's declared type; a wrong type or an unknown
field raises ``ValueError`` naming the field, what was expected and what came. Files and ``--set`` values
are read by :mod:`s4g_train.config_yaml`, which keeps ``on``/``off``/``yes``/``no`` as the words they are
until the field's type decides (``train.amp=off`` means ``off``; ``train.compile=yes`` means true).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from s4g_engine.datasets import DATASET_NAMES as DATASETS
from s4g_engine.errors import InputError
from s4g_engine.fileio import atomic_write_text
from s4g_engine.geo import GPS_METRICS
from s4g_train.config_yaml import Yaml11Bool, load_yaml, untyped, yaml_load
from s4g_train.health import COLLAPSE_ACTIONS
from s4g_train.losses import LOSSES
from s4g_train.model import ModelConfig
from s4g_train.parsers import AMP_MODES, DEVICES
from s4g_train.sampling import STRATEGIES

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class AugConfig:
    """docs/METHOD.md §5 training augmentation (evaluation uses resize + normalise only)."""

    flip_p: float = 0.5  # flip BOTH views horizontally
    rotate_p: float = 0.75  # rotate tile by r·90° (r∈{1,2,3}) and roll the panorama by −r·W/4 columns
    photometric: bool = True  # JPEG 90–100, colour jitter 0.15, blur/sharpen, grid/coarse dropout per view
    jitter: float = 0.15
    dropout_p: float = 0.25  # probability of grid- or coarse-dropout per view


@dataclass
class SynthConfig:
    """Parameters of the synthetic world (only used when ``data.synthetic`` is true)."""

    layout: str = "cvusa"
    pairs: int = 2000
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for generate_dataset


@dataclass
class DataConfig:
    dataset: str = "cvusa"  # one of DATASETS
    root: str = "data/CVUSA"  # dataset root; for synthetic data the cache folder's parent
    synthetic: bool = False  # generate (or reuse) the synthetic world under ``root`` instead of reading real data
    synth: SynthConfig = field(default_factory=SynthConfig)
    train_split: str = "train"
    eval_split: str = "test"
    strict: bool = False  # load_split(strict=...)
    max_train: int | None = None  # use only the first N training pairs (smoke runs)
    max_eval: int | None = None  # use only the first N evaluation queries (smoke runs)
    # hold out this many training pairs (chosen by train.seed; whole reference tiles, so no held-out tile is
    # trained on) as a validation split for checkpoint selection (eval.select best-val); 0 = none
    val_from_train: int = 0
    cache_images: bool = False  # decode every image once at the network size and keep it in RAM
    draft: bool = True  # JPEG draft-mode decoding at reduced size
    # resize filter of both views (s4g_engine.preprocess.INTERPOLATIONS, or "backbone" = timm's data config);
    # part of the data contract the exported bundle records. bilinear = what every run before this field used.
    interpolation: str = "bilinear"
    num_workers: int = 0
    persistent_workers: bool = True  # keep the training loader's workers from epoch to epoch (num_workers > 0)
    prefetch_factor: int = 2  # batches each loader worker prepares ahead (num_workers > 0)
    # GPU input path (s4g_train/feed.py). null = auto: with CUDA the loader ships uint8 images in pinned memory
    # and the device normalises them (and flips/rotates/rolls them when no photometric step follows) — the same
    # values as the CPU path; on a CPU device the loader normalises. true/false force it on/off on any device.
    device_preprocess: bool | None = None
    # decoder of the RAM image cache and of un-augmented embedding: pil (the data contract's) or nvjpeg (CUDA:
    # torchvision.io.decode_jpeg on the GPU + antialiased resize; close to, not bit-identical with, the contract)
    decode: str = "pil"
    aug: AugConfig = field(default_factory=AugConfig)
    resolved_root: str | None = None  # set by the trainer: the folder actually read (synthetic: generated one)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0  # linear warm-up, then cosine to ``min_lr_ratio``·lr, stepped per iteration
    min_lr_ratio: float = 0.0
    clip_value: float | None = 100.0  # clip gradients by value (None = off)


@dataclass
class SamplingConfig:
    strategy: str = "gps+dss"  # random | gps | dss | gps+dss (docs/METHOD.md §4)
    k: int = 64  # neighbours taken per anchor (k/2 nearest + k/2 random from ranks k/2…K−1)
    K: int = 128  # neighbour pool size
    dss_every: int = 4  # refresh DSS lists after every n-th epoch
    dss_start_epoch: int = 4  # the first refresh happens after this epoch … (reference: 4)
    dss_start_r1: float | None = None  # … or (if set) once training-set R@1 (%) measured at a refresh check ≥ this
    dss_mining_size: int | None = None  # queries used for the R@1 criterion (None = all)
    gps_metric: str = "auto"  # haversine | euclidean (UTM, CVACT) | auto


@dataclass
class TrainConfig:
    name: str = "run"
    runs_dir: str = "runs"
    epochs: int = 40
    batch_size: int = 128  # GLOBAL batch (pairs), split across DDP ranks
    loss: str = "infonce"
    label_smoothing: float = 0.1
    seed: int = 1
    amp: str = "auto"  # auto: fp16+GradScaler on CUDA, bf16 on CPUs with native bf16, else off
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads (None = leave as is)
    # a guard, never a planner (s4g_train/budget.py): warns when the run is projected not to fit, and when
    # training + final evaluation would pass it, cuts the run (resumable with --resume); epochs stay as set
    time_budget_min: float | None = None
    # wall: real time. cpu: this process's CPU seconds / torch threads ≈ the wall time the run would take
    # alone on the machine (for comparing runs on a shared, overloaded machine; slightly optimistic)
    budget_clock: str = "wall"
    stop_after_epochs: int | None = None  # stop (as if killed) after this many epochs; resume continues
    save_every_steps: int | None = None  # also checkpoint inside an epoch every N steps
    steps_per_epoch: int | None = None  # cap the number of batches per epoch (smoke runs)
    final_eval: bool = True  # evaluate the final model (eval.select) once on ``data.eval_split`` at the end
    compile: bool = False  # torch.compile the backbone
    # NHWC activations; null = auto: on with CUDA (faster), off on a CPU (bf16 NHWC is slower there, measured)
    channels_last: bool | None = None
    # fine-tune from: initialise the model weights from this checkpoint (ours or a published Sample4Geo one)
    # before training; fresh optimiser and schedule (not a resume). Ignored on --resume (last.pt wins).
    init: str | None = None
    init_backbone: str | None = None  # timm name of a reference checkpoint (None = inferred from its shapes)
    init_allow_partial: bool = False  # load only the matching tensors (named in the log); else strict
    # EMA of the weights (s4g_train/ema.py): decay per step, with the warm-up min(decay, (1+n)/(10+n)). When
    # set, evaluation, best.pt, final.pt and exports hold the EMA weights; last.pt keeps the raw ones + the EMA
    ema_decay: float | None = None
    # collapse detection (s4g_train/health.py): loss pinned at ln B with all in-batch similarities ≈ 1 for
    # collapse_window consecutive steps → stop (exit code 3, with advice) | warn | off
    collapse: str = "stop"
    collapse_window: int = 50


SELECTIONS = ("auto", "last", "best-val", "best-test")


@dataclass
class EvalConfig:
    every: int = 4  # evaluate every n epochs (and after the last); 0 = only the final evaluation
    batch_size: int = 128
    split: str | None = None  # None = data.eval_split
    # which weights the run delivers (checkpoints/final.pt; evaluated once on the test split at the end):
    # last = the last epoch's; best-val = best R@1 on the data.val_from_train split; best-test = best R@1 on
    # the evaluation split (the paper's protocol: selects on the split it reports, so slightly optimistic).
    # auto = best-val when data.val_from_train > 0, else best-test when eval.every > 0, else last.
    select: str = "auto"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        cfg = cls()
        apply_dict(cfg, d)
        validate(cfg)
        return cfg


# ---------------------------------------------------------------------------------------------- helpers
def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    return obj


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _finite(f: float, value: Any, where: str) -> float:
    """``f``, or an :class:`InputError` for nan/inf (a learning rate of nan would train nothing, silently)."""
    if f != f or f in (float("inf"), float("-inf")):
        raise InputError(f"{where}: expected a finite number, got {value!r}")
    return f


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML-parsed value to the annotated type ``tp`` (or raise InputError, a ValueError)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if tp is Any:
        return untyped(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list of {len(args)} values like [64, 256], got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise InputError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {value!r}")
        return untyped(dict(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, Yaml11Bool):
            return value.value
        raise InputError(f"{where}: expected true/false, got {value!r}")
    if tp is int:  # float.is_integer() is False for inf and nan too (int() would raise on them)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not value.is_integer()):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    f = float(value)
                except ValueError:
                    f = None
                if f is not None:
                    return _finite(f, value, where)
            raise InputError(f"{where}: expected a number, got {value!r}")
        return _finite(float(value), value, where)
    if tp is str:
        if isinstance(value, bool):
            raise InputError(f"{where}: expected a word, got the boolean {str(value).lower()}; write the word the "
                             "field takes (e.g. train.amp=off), quoted if in doubt")
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return str.__str__(value)  # a plain str, also for a Yaml11Bool
    raise InputError(f"{where}: unsupported field type {tp!r}")


def apply_dict(obj: Any, d: dict[str, Any], prefix: str = "") -> None:
    """Recursively set the fields of dataclass ``obj`` from mapping ``d`` (unknown keys → ValueError)."""
    if not isinstance(d, dict):
        raise InputError(f"{prefix or 'config'}: expected a mapping, got {type(d).__name__} {d!r}")
    hints = _field_types(obj)
    for key, value in d.items():
        where = f"{prefix}{key}"
        if key not in hints:
            raise InputError(
                f"unknown config field {where!r}; known fields here: {sorted(hints)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, prefix=f"{where}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], where))


def set_override(cfg: Config, dotted: str, raw: str) -> None:
    """Apply one override ``section.field[.sub]=raw`` (raw parsed as a YAML scalar)."""
    parts = dotted.split(".")
    if len(parts) < 2:
        raise InputError(f"override {dotted!r}: expected section.field=value, e.g. optim.lr=3e-4")
    try:
        value = yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise InputError(f"override {dotted}={raw!r}: not a valid YAML value ({exc})") from exc
    nested: Any = value
    for p in reversed(parts[1:]):
        nested = {p: nested}
    apply_dict(cfg, {parts[0]: nested})


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    p = PRESET_DIR / f"{name}.yaml"
    if not p.is_file():
        raise InputError(f"unknown preset {name!r}; available presets: {preset_names()}")
    return p


def build_config(
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[tuple[str, str]] | None = None,
) -> Config:
    """Defaults → preset → config file → overrides, validated."""
    cfg = Config()
    if preset is not None:
        apply_dict(cfg, load_yaml(preset_path(preset)))
    if config_file is not None:
        apply_dict(cfg, load_yaml(config_file))
    for dotted, raw in overrides or []:
        set_override(cfg, dotted, raw)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks with messages that say how to fix the value."""
    def bad(msg: str) -> None:
        raise InputError(msg)

    if cfg.data.dataset not in DATASETS:
        bad(f"data.dataset={cfg.data.dataset!r}: expected one of {DATASETS}")
    from s4g_engine.preprocess import INTERPOLATIONS  # the owner of the filter names
    if cfg.data.interpolation not in (*INTERPOLATIONS, "backbone"):
        bad(f"data.interpolation={cfg.data.interpolation!r}: expected one of {[*INTERPOLATIONS, 'backbone']}")
    if cfg.sampling.strategy not in STRATEGIES:
        bad(f"sampling.strategy={cfg.sampling.strategy!r}: expected one of {STRATEGIES}")
    if cfg.train.loss not in LOSSES:
        bad(f"train.loss={cfg.train.loss!r}: expected one of {LOSSES}")
    if cfg.train.amp not in AMP_MODES:
        bad(f"train.amp={cfg.train.amp!r}: expected one of {AMP_MODES}")
    if cfg.train.device not in DEVICES:
        bad(f"train.device={cfg.train.device!r}: expected one of {DEVICES}")
    if cfg.data.decode not in ("pil", "nvjpeg"):
        bad(f"data.decode={cfg.data.decode!r}: expected pil (the data contract's decoder) or nvjpeg (CUDA)")
    if cfg.data.prefetch_factor < 1:
        bad(f"data.prefetch_factor={cfg.data.prefetch_factor}: must be ≥ 1")
    s = cfg.sampling
    if s.K < 1 or s.k < 0 or s.k > s.K:
        bad(f"sampling.k={s.k}, sampling.K={s.K}: need 0 ≤ k ≤ K and K ≥ 1 (paper: k=64, K=128)")
    if s.k % 2:
        bad(f"sampling.k={s.k}: must be even (k/2 nearest + k/2 random neighbours)")
    if s.dss_every < 1:
        bad(f"sampling.dss_every={s.dss_every}: must be ≥ 1")
    if s.gps_metric not in ("auto", *GPS_METRICS):
        bad(f"sampling.gps_metric={s.gps_metric!r}: expected auto or one of {GPS_METRICS}")
    t = cfg.train
    if t.epochs < 1:
        bad(f"train.epochs={t.epochs}: must be ≥ 1")
    if t.batch_size < 2:
        bad(f"train.batch_size={t.batch_size}: need at least 2 pairs (in-batch negatives)")
    if s.strategy != "random" and s.k >= t.batch_size:
        bad(f"sampling.k={s.k} must be smaller than train.batch_size={t.batch_size} (the anchor and its k "
            "neighbours share one batch); lower sampling.k")
    if t.budget_clock not in ("wall", "cpu"):
        bad(f"train.budget_clock={t.budget_clock!r}: expected wall or cpu")
    if t.time_budget_min is not None and t.time_budget_min <= 0:
        bad(f"train.time_budget_min={t.time_budget_min}: must be > 0 (or null for no budget)")
    if cfg.optim.lr <= 0:
        bad(f"optim.lr={cfg.optim.lr}: must be > 0")
    if cfg.optim.warmup_epochs < 0:
        bad(f"optim.warmup_epochs={cfg.optim.warmup_epochs}: must be ≥ 0")
    if not 0.0 <= cfg.train.label_smoothing < 1.0:
        bad(f"train.label_smoothing={cfg.train.label_smoothing}: must be in [0, 1)")
    if t.collapse not in COLLAPSE_ACTIONS or t.collapse_window < 1:
        bad(f"train.collapse={t.collapse!r}, train.collapse_window={t.collapse_window}: expected stop, warn or off "
            "and a window ≥ 1 step")
    if t.init is not None and not os.path.isfile(t.init):
        bad(f"train.init={t.init!r}: no such checkpoint file; give our best.pt/last.pt or a published .pth")
    _validate_eval(cfg, bad)
    _validate_counts(cfg, bad)
    for name, size in (("model.ground_size", cfg.model.ground_size), ("model.aerial_size", cfg.model.aerial_size)):
        if len(size) != 2 or min(size) < 8:
            bad(f"{name}={list(size)}: expected [H, W] with both ≥ 8")
    a = cfg.data.aug
    for name, p in (("data.aug.flip_p", a.flip_p), ("data.aug.rotate_p", a.rotate_p),
                    ("data.aug.dropout_p", a.dropout_p)):
        if not 0.0 <= p <= 1.0:
            bad(f"{name}={p}: must be a probability in [0, 1]")
    n = cfg.model.tile_centres
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
        bad(f"model.tile_centres={n!r}: expected an integer from 1 (tile centre only) to 8")
    elif n > 1 and not cfg.data.dataset.startswith("vigor"):
        bad(f"model.tile_centres={n} re-centres tiles on the camera offsets of a VIGOR split; {cfg.data.dataset} "
            "has its camera at the tile centre — use model.tile_centres=1")
    elif n > 1 and not cfg.model.polar_aerial and cfg.model.aerial_size[0] != cfg.model.aerial_size[1]:
        bad(f"model.tile_centres={n} shifts the tile: model.aerial_size={list(cfg.model.aerial_size)} must be square")
    if cfg.model.polar_aerial and a.rotate_p > 0 and cfg.model.aerial_size[1] % 4:
        bad(f"model.aerial_size={list(cfg.model.aerial_size)}: polar width must be divisible by 4 for rot90↔roll")
    if a.rotate_p > 0 and cfg.model.ground_size[1] % 4:
        bad(f"model.ground_size={list(cfg.model.ground_size)}: panorama width must be divisible by 4 so that "
            "rot90 of the tile matches a roll of W/4 columns; pick a width like 256 or 768")


def _validate_counts(cfg: Config, bad: Any) -> None:
    """Counts that must be positive (or >= 0) when set; 0 or a negative value would fail only mid-run."""
    t = cfg.train
    for name, v, low in (("eval.batch_size", cfg.eval.batch_size, 1), ("data.num_workers", cfg.data.num_workers, 0),
                         ("train.threads", t.threads, 1), ("train.steps_per_epoch", t.steps_per_epoch, 1),
                         ("train.save_every_steps", t.save_every_steps, 1),
                         ("train.stop_after_epochs", t.stop_after_epochs, 1)):
        if v is not None and v < low:
            bad(f"{name}={v}: expected an integer >= {low}" + (" (or null)" if name.startswith("train.") else ""))


def _validate_eval(cfg: Config, bad: Any) -> None:
    e = cfg.eval
    if e.every < 0:
        bad(f"eval.every={e.every}: must be ≥ 0 (0 = evaluate only once at the end)")
    if e.select not in SELECTIONS:
        bad(f"eval.select={e.select!r}: expected one of {SELECTIONS}")
    if cfg.data.val_from_train < 0:
        bad(f"data.val_from_train={cfg.data.val_from_train}: must be ≥ 0 (pairs held out for validation)")
    sel = selection(cfg)
    if sel == "best-val" and cfg.data.val_from_train == 0:
        bad("eval.select=best-val needs a validation split: set data.val_from_train to the number of training "
            "pairs to hold out (e.g. 200)")
    if sel.startswith("best") and e.every == 0:
        bad(f"eval.select={e.select} picks the best of the evaluations during training, but eval.every=0 "
            "evaluates only at the end: set eval.every ≥ 1, or eval.select=last")
    if cfg.data.val_from_train and sel != "best-val" and e.every == 0:
        bad(f"data.val_from_train={cfg.data.val_from_train} holds out pairs that are never evaluated "
            "(eval.every=0): set data.val_from_train=0, or eval.every ≥ 1 with eval.select=best-val")
    d = cfg.train.ema_decay
    if d is not None and not 0.0 < d < 1.0:
        bad(f"train.ema_decay={d}: must lie in (0, 1) (typical 0.99–0.9999), or null for no EMA")


def selection(cfg: Config) -> str:
    """``eval.select`` with ``auto`` resolved: last, best-val or best-test."""
    s = cfg.eval.select
    if s != "auto":
        return s
    if cfg.data.val_from_train > 0:
        return "best-val" if cfg.eval.every > 0 else "last"
    return "best-test" if cfg.eval.every > 0 else "last"


def save_yaml(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config atomically (``s4g_engine.fileio``)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def split_cli_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Pull ``--set a.b=v`` and dotted flags ``--a.b v`` / ``--a.b=v`` out of argv.

    Returns (remaining argv for argparse, [(dotted, raw), ...]) in command-line order.
    """
    rest: list[str] = []
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--set":
            if i + 1 >= len(argv) or "=" not in argv[i + 1]:
                raise InputError("--set expects section.field=value, e.g. --set optim.lr=3e-4")
            k, v = argv[i + 1].split("=", 1)
            overrides.append((k, v))
            i += 2
            continue
        if a.startswith("--set="):
            if "=" not in a[len("--set="):]:
                raise InputError(f"{a}: --set expects section.field=value, e.g. --set=optim.lr=3e-4")
            k, v = a[len("--set="):].split("=", 1)
            overrides.append((k, v))
            i += 1
            continue
        if a.startswith("--") and "." in a.split("=", 1)[0] and a[2:3].isalpha():
            key = a[2:]
            if "=" in key:
                k, v = key.split("=", 1)
                i += 1
            else:
                if i + 1 >= len(argv):
                    raise InputError(f"{a}: missing value")
                k, v = key, argv[i + 1]
                i += 2
            overrides.append((k.replace("-", "_"), v))
            continue
        rest.append(a)
        i += 1
    return rest, overrides
