"""Checkpoints: atomic writes, safe (``weights_only=True``) reads with clear errors, model loading and
fine-tune initialisation from a checkpoint.

Payload of our format::

    {"format": "s4g-checkpoint", "version": 1, "model_config": ModelConfig.to_dict(),
     "model": state_dict, "config": <resolved training config dict>, "epoch": int, "metrics": dict,
     ... training state (optimizer, scheduler, scaler, rng, batch schedule) for last.pt}

Everything in it is a tensor, a number, a string, None or a container of these, so ``torch.load`` with
``weights_only=True`` reads it without executing pickled code.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from s4g_engine.errors import (
    CorruptFileError,
    FormatError,
    InputError,
    MissingFileError,
    ModelMismatchError,
    NotAFileError,
)
from s4g_engine.fileio import atomic_write_with
from s4g_train.model import ModelConfig, S4GModel

log = logging.getLogger(__name__)

FORMAT = "s4g-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (``s4g_engine.fileio``): a reader never sees a half-written
    file; a crash (even ``kill -9``) leaves the previous version."""
    atomic_write_with(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; raises a clear error for missing/corrupt files."""
    p = Path(path)
    if p.is_dir():
        raise NotAFileError(f"checkpoint {str(p)!r} is a folder; expected a checkpoint file (e.g. "
                            "run/checkpoints/best.pt)")
    if not p.is_file():
        raise MissingFileError(f"checkpoint {str(p)!r} does not exist")
    if p.stat().st_size == 0:
        raise CorruptFileError(f"checkpoint {str(p)!r} is empty (0 bytes): the file was truncated; use another "
                         "checkpoint (e.g. best.pt / last.pt) or retrain")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():  # torch refused a pickled object: say so, never advise unpickling
            raise FormatError(f"checkpoint {str(p)!r} holds pickled Python objects besides tensors, numbers and "
                              "strings; s4g never unpickles them (that can run arbitrary code). Expected an s4g "
                              "checkpoint or a plain state_dict of tensors: re-save the weights where you trust "
                              "the file, e.g. torch.save(model.state_dict(), 'weights.pt')") from None
        raise CorruptFileError(f"checkpoint {str(p)!r} is truncated or corrupt (the pickle stream is damaged); "
                               "use another checkpoint or retrain") from None
    except Exception as exc:  # zipfile/EOF/storage errors all mean the file cannot be trusted
        raise CorruptFileError(f"checkpoint {str(p)!r} is truncated or corrupt and cannot be read safely "
                               f"({type(exc).__name__}); use another checkpoint or retrain") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"checkpoint {str(p)!r}: expected a dict payload, got {type(obj).__name__}")
    return obj


def is_s4g_checkpoint(payload: dict[str, Any]) -> bool:
    return payload.get("format") == FORMAT


def model_payload(model: S4GModel, cfg_dict: dict[str, Any], epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """The model part of our payload (weights on CPU, so a checkpoint loads on any device)."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_config": unwrap(model).cfg.to_dict(),
        "model": state,
        "config": cfg_dict,
        "epoch": int(epoch),
        "metrics": dict(metrics),
    }


def unwrap(model: torch.nn.Module) -> S4GModel:
    """Strip DDP / torch.compile wrappers."""
    m: Any = model
    while True:
        if hasattr(m, "module") and isinstance(m.module, torch.nn.Module):
            m = m.module
        elif hasattr(m, "_orig_mod"):
            m = m._orig_mod
        else:
            return m


def _size(v: Any, name: str) -> tuple[int, int] | None:
    """``(H, W)`` from a 2-sequence of positive ints, or None."""
    if v is None:
        return None
    t = tuple(int(x) for x in v)
    if len(t) != 2 or min(t) <= 0:
        raise InputError(f"{name} must be (H, W) with two positive ints, got {v!r}")
    return t  # type: ignore[return-value]


def _stored_model_config(payload: dict[str, Any], path: Any) -> ModelConfig:
    """The ``ModelConfig`` of one of our checkpoints; a damaged or hand-made payload is a :class:`FormatError`."""
    mc, sd = payload.get("model_config"), payload.get("model")
    if not isinstance(mc, dict) or not isinstance(sd, dict):
        raise FormatError(f"checkpoint {path}: expected 'model_config' and 'model' as mappings (an s4g checkpoint), "
                          f"got {type(mc).__name__} and {type(sd).__name__}; use an intact checkpoint "
                          "(best.pt / last.pt)")
    try:
        return ModelConfig.from_dict(mc)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"checkpoint {path}: its model_config cannot be used ({exc}); expected the ModelConfig "
                          "an s4g checkpoint stores") from None


def load_model(path: str | os.PathLike[str], *, backbone: str | None = None, allow_partial: bool = False,
               ground_size: Any = None, aerial_size: Any = None,
               dataset: str | None = None) -> tuple[S4GModel, dict[str, Any]]:
    """Build the model stored at ``path`` and load its weights (strictly unless ``allow_partial``).

    Our own checkpoints carry their ``ModelConfig``; anything else is handed to
    ``s4g_train.reference.load_reference`` (published Sample4Geo weights; backbone inferred from the shapes or
    ``backbone``). ``ground_size`` / ``aerial_size`` ``(H, W)``: the input sizes for reference checkpoints
    (which do not store them); a size not given comes from ``reference.paper_input_sizes(dataset)`` when
    ``dataset`` is given, else from :class:`ModelConfig` (logged as a warning: wrong for CVUSA/CVACT). For
    our own checkpoints a size that differs from the stored one is a ``ValueError`` (the model was trained at
    it) and ``dataset`` is not used. ``info["input_sizes_from"]``: "checkpoint", "given", "paper:<dataset>",
    "given+paper:<dataset>" or "default".
    Returns ``(model in eval mode, info)`` with info = epoch, metrics, config, format, missing/unexpected keys.
    """
    gs, as_ = _size(ground_size, "ground_size"), _size(aerial_size, "aerial_size")
    # .safetensors files are never ours; the reference reader handles them (and the .pth we read here)
    payload = None if str(path).endswith(".safetensors") else load_checkpoint(path)
    if payload is None or not is_s4g_checkpoint(payload):
        from s4g_train import reference  # viz helper's module: reference checkpoint format

        if gs is not None and as_ is not None:
            origin = "given"
        elif dataset:
            pg, pa = reference.paper_input_sizes(dataset)
            origin = ("given+" if (gs, as_) != (None, None) else "") + f"paper:{dataset}"
            gs, as_ = gs or pg, as_ or pa
            log.info("reference checkpoint %s stores no input sizes: ground %s, aerial %s (%s)", path, list(gs),
                     list(as_), origin)
        else:
            origin = "given+default" if (gs, as_) != (None, None) else "default"
            log.warning("reference checkpoint %s stores no input sizes and no dataset was named: using the "
                        "ModelConfig defaults for the missing ones (ground %s, aerial %s), which are wrong for "
                        "CVUSA/CVACT (ground 140x768); pass the dataset (--dataset) or the sizes", path,
                        list(gs or ModelConfig().ground_size), list(as_ or ModelConfig().aerial_size))
        # by path (a second read) so that every error message names the file
        model, rinfo = reference.load_reference(path, backbone=backbone, allow_partial=allow_partial,
                                                ground_size=gs, aerial_size=as_)
        return model, {"format": "sample4geo-reference", "epoch": None, "metrics": {}, "config": {},
                       "missing_keys": rinfo["missing"], "unexpected_keys": rinfo["unexpected"],
                       "reference": rinfo, "input_sizes_from": origin, "path": str(path)}
    if payload.get("version") != VERSION:
        raise FormatError(f"checkpoint {path}: format version {payload.get('version')} is not supported "
                         f"(this s4g reads version {VERSION})")
    mcfg = _stored_model_config(payload, path)
    if backbone is not None and backbone != mcfg.backbone:
        raise ModelMismatchError(f"checkpoint {path} holds backbone {mcfg.backbone!r}, but {backbone!r} was requested; "
                         "omit the backbone argument for our own checkpoints")
    for name, want, have in (("ground_size", gs, mcfg.ground_size), ("aerial_size", as_, mcfg.aerial_size)):
        if want is not None and tuple(want) != tuple(have):
            raise ModelMismatchError(f"checkpoint {path} was trained with {name} {list(have)}, but {list(want)} was "
                             f"requested; omit the size option for our own checkpoints (they store their sizes)")
    mcfg.pretrained_file = None  # weights come from the checkpoint, never from the original init file
    try:
        model = S4GModel(mcfg)
    except ValueError as exc:  # e.g. a backbone this timm does not know
        raise FormatError(f"checkpoint {path}: cannot build its model ({exc}); expected a model_config this "
                          "s4g and timm can build") from None
    try:
        result = model.load_state_dict(payload["model"], strict=not allow_partial)
    except RuntimeError as exc:  # torch names the missing/unexpected/mis-shaped keys; make it a ValueError
        raise ModelMismatchError(f"checkpoint {path} does not match its own model config (backbone {mcfg.backbone!r}): "
                         f"{exc}. Fix: use an intact checkpoint, or pass allow_partial / --allow-partial to load "
                         "only the matching tensors") from exc
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if allow_partial and (missing or unexpected):
        log.warning("partial load of %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))
    model.eval()
    info = {
        "format": FORMAT,
        "epoch": payload.get("epoch"),
        "metrics": payload.get("metrics", {}),
        "config": payload.get("config", {}),
        "missing_keys": missing,
        "unexpected_keys": unexpected,
        "input_sizes_from": "checkpoint",
        "path": str(path),
    }
    return model, info


def init_weights(model: S4GModel, path: str, *, backbone: str | None = None,
                 allow_partial: bool = False) -> dict[str, Any]:
    """Copy the weights of checkpoint ``path`` (ours or a reference Sample4Geo one) into ``model`` in place.

    The checkpoint is loaded through :func:`load_model` (strict, ``weights_only``), then its state_dict is
    loaded into ``model`` strictly: a checkpoint of another architecture is a ``ValueError`` naming the keys,
    unless ``allow_partial`` (then only tensors that match by name and shape are copied and the rest is
    logged). Input sizes do not matter for the weights (the model keeps its own config's).
    Returns the loader's info plus ``copied`` / ``skipped`` key lists.
    """
    src, info = load_model(path, backbone=backbone, allow_partial=allow_partial)
    sd, own = src.state_dict(), model.state_dict()
    copied = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(copied)) + sorted(k for k in sd if k not in own)
    if skipped and not allow_partial:
        raise ModelMismatchError(
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
