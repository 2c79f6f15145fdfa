"""The Sample4Geo model: one timm backbone shared by both views, L2-normalised pooled features and a
learnable temperature (docs/METHOD.md §2).

The backbone lives under the attribute ``model`` and the temperature under ``logit_scale`` so that our
``state_dict`` has exactly the key layout of the reference implementation (``model.*`` + ``logit_scale``):
published Sample4Geo checkpoints load strictly into :class:`S4GModel` after stripping a ``module.`` prefix.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: exp(logit_scale) is clamped to this value (as CLIP does; the reference code never clamps).
MAX_LOGIT_SCALE = 100.0


@dataclass
class ModelConfig:
    """What is needed to rebuild the network (stored in every checkpoint and in exported config.json)."""

    backbone: str = "convnext_base.fb_in22k_ft_in1k_384"  # any timm model name
    pretrained_file: str | None = None  # local weights file for timm; None = random init (never a hub download)
    ground_size: tuple[int, int] = (384, 768)  # (H, W) of the ground/drone view fed to the network
    aerial_size: tuple[int, int] = (384, 384)  # (H, W) of the aerial view fed to the network
    polar_aerial: bool = False  # feed the polar-transformed tile (docs/METHOD.md §9) instead of the raw tile (ablation)
    tile_centres: int = 1  # n > 1: train on tiles re-centred on the camera, search n×n tile centres (METHOD.md §9.1)
    logit_scale_init: float = math.log(1.0 / 0.07)
    drop_path_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ground_size"] = list(self.ground_size)
        d["aerial_size"] = list(self.aerial_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        d = dict(d)
        for key in ("ground_size", "aerial_size"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


def create_backbone(name: str, pretrained_file: str | None = None, drop_path_rate: float = 0.0) -> nn.Module:
    """A timm backbone with ``num_classes=0`` (pooled features, no projection head).

    Weights come from a local file (timm ``pretrained_cfg_overlay=dict(file=...)``) or random init: this
    never reaches a model hub.
    """
    kwargs: dict[str, Any] = {"num_classes": 0}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights file {str(path)!r} does not exist; pass the path of a local timm weights "
                "file (.pth/.bin/.safetensors), or omit it for random initialisation"
            )
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ValueError(f"unknown timm backbone {name!r}: {exc}") from exc


class S4GModel(nn.Module):
    """Shared-weight encoder for both views.

    ``embed(x)`` maps a batch ``(B, 3, H, W)`` (normalised float) to L2-normalised embeddings ``(B, D)``.
    ``forward(ground, aerial)`` returns both embeddings; ``scale()`` the clamped temperature exp(logit_scale).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = create_backbone(cfg.backbone, cfg.pretrained_file, cfg.drop_path_rate)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    @property
    def embed_dim(self) -> int:
        return int(self.model.num_features)

    def data_config(self) -> dict[str, Any]:
        """timm's data contract for the backbone: mean, std, interpolation (input size is ours, per view)."""
        dc = timm.data.resolve_model_data_config(self.model)
        return {
            "mean": [float(v) for v in dc["mean"]],
            "std": [float(v) for v in dc["std"]],
            "interpolation": str(dc.get("interpolation", "bicubic")),
        }

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to ≤ MAX_LOGIT_SCALE."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(x).float(), dim=-1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``(B, C, h, w)`` (before pooling), for activation heatmaps."""
        return self.model.forward_features(x)

    def forward(self, ground: torch.Tensor, aerial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(ground), self.embed(aerial)
