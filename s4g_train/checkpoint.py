"""Checkpoints: atomic writes, safe (``weights_only=True``) reads with clear errors, model loading.

Payload of our format::

    {"format": "s4g-checkpoint", "version": 1, "model_config": ModelConfig.to_dict(),
     "model": state_dict, "config": <resolved training config dict>, "epoch": int, "metrics": dict,
     ... training state (optimizer, scheduler, scaler, rng, sampler) for last.pt}

Everything in it is a tensor, a number, a string, None or a container of these, so ``torch.load`` with
``weights_only=True`` reads it without executing pickled code.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from s4g_train.model import ModelConfig, S4GModel

log = logging.getLogger(__name__)

FORMAT = "s4g-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    A reader never sees a half-written file: a crash (even ``kill -9``) leaves the previous version.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are ordinary shared files
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; raises a clear error for missing/corrupt files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(p)!r} is empty (0 bytes): the file was truncated; use another "
                         "checkpoint (e.g. best.pt / last.pt) or retrain")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # zipfile/pickle/EOF errors all mean the file cannot be trusted
        raise ValueError(f"checkpoint {str(p)!r} is truncated or corrupt and cannot be read safely "
                         f"({type(exc).__name__}: {exc}); use another checkpoint or retrain") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {str(p)!r}: expected a dict payload, got {type(obj).__name__}")
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


def load_model(path: str | os.PathLike[str], *, backbone: str | None = None,
               allow_partial: bool = False) -> tuple[S4GModel, dict[str, Any]]:
    """Build the model stored at ``path`` and load its weights (strictly unless ``allow_partial``).

    Our own checkpoints carry their ``ModelConfig``; anything else is handed to
    ``s4g_train.reference.load_reference_model`` (published Sample4Geo weights), which needs ``backbone``.
    Returns ``(model in eval mode, info)`` with info = epoch, metrics, config, format, missing/unexpected keys.
    """
    payload = load_checkpoint(path)
    if not is_s4g_checkpoint(payload):
        from s4g_train import reference  # viz helper's module: reference checkpoint format

        model = reference.load_reference_model(path, backbone=backbone, allow_partial=allow_partial)
        return model, {"format": "sample4geo-reference", "epoch": None, "metrics": {}, "config": {},
                       "path": str(path)}
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path}: format version {payload.get('version')} is not supported "
                         f"(this s4g reads version {VERSION})")
    mcfg = ModelConfig.from_dict(payload["model_config"])
    if backbone is not None and backbone != mcfg.backbone:
        raise ValueError(f"checkpoint {path} holds backbone {mcfg.backbone!r}, but {backbone!r} was requested; "
                         "omit the backbone argument for our own checkpoints")
    mcfg.pretrained_file = None  # weights come from the checkpoint, never from the original init file
    model = S4GModel(mcfg)
    result = model.load_state_dict(payload["model"], strict=not allow_partial)
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
        "path": str(path),
    }
    return model, info
