"""Import checkpoints published by the Sample4Geo authors (reference format) into :class:`S4GModel`.

The reference code saves ``model.state_dict()`` of its ``TimmModel`` (a timm backbone created with
``num_classes=0`` under the attribute ``model``, plus a scalar parameter ``logit_scale``), or, when training
used ``torch.nn.DataParallel``, the same keys with a ``module.`` prefix. The reference *evaluation* loads with
``strict=False``, which silently keeps random weights whenever a key does not match (the origin of the
"released weights give R@1 2.56 %" reports). Here every load is strict: each missing, unexpected or
mis-shaped key is named and is an error, unless ``allow_partial=True`` asks for a documented partial load
(fine-tuning from a related architecture), which still reports every key and refuses to continue when less
than :data:`MIN_PARTIAL_FRACTION` of the network's parameters would be loaded.

Accepted inputs (anything else is rejected with a description of what was seen):

* a plain state_dict ``{str: Tensor}`` whose keys are ``model.*`` plus ``logit_scale`` (scalar or shape
  ``(1,)``), all with or all without a ``module.`` prefix;
* a dict wrapping exactly such a state_dict under one of :data:`WRAPPER_KEYS` (``state_dict``,
  ``model_state_dict``, ``model``), with any other entries being non-tensor metadata (epoch, optimizer, ...);
* a file holding one of the above: ``torch.save`` output (read with ``torch.load(weights_only=True)``) or
  ``.safetensors``.

Our own checkpoints (``{"format": "s4g-checkpoint", ...}``) are not reference checkpoints; load them with
``s4g_train.checkpoint.load_model``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .model import ModelConfig, S4GModel

log = logging.getLogger(__name__)

#: keys under which a wrapping dict may hold the reference state_dict
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
#: the backbone the Sample4Geo authors used for every published checkpoint (docs/METHOD.md §2)
PAPER_BACKBONE = "convnext_base.fb_in22k_ft_in1k_384"
#: with allow_partial=True, at least this fraction of the parameters (by element count) must be loaded
MIN_PARTIAL_FRACTION = 0.5

_DP_PREFIX = "module."

#: (ground (H, W), aerial (H, W)) the published checkpoints were trained and evaluated with (docs/METHOD.md §2)
PAPER_INPUT_SIZES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "cvusa": ((140, 768), (384, 384)),
    "cvact": ((140, 768), (384, 384)),
    "vigor-same": ((384, 768), (384, 384)),
    "vigor-cross": ((384, 768), (384, 384)),
    "university-d2s": ((384, 384), (384, 384)),
    "university-s2d": ((384, 384), (384, 384)),
}


def paper_input_sizes(dataset: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The paper's ``(ground_size, aerial_size)`` for a dataset name (reference checkpoints do not store them)."""
    try:
        return PAPER_INPUT_SIZES[dataset]
    except KeyError:
        raise ValueError(f"no paper input sizes for dataset {dataset!r}; known: {sorted(PAPER_INPUT_SIZES)}. "
                         "Pass the sizes explicitly (ground_size=(H, W), aerial_size=(H, W))") from None

# ConvNeXt signatures: (v2?, depths per stage, width of stage 0) -> timm architecture names with that shape
# signature. Several names can share a signature (e.g. the `_ols` stem or `_rms` norm variants); the exact
# key/shape comparison in `infer_backbone` picks the one that really matches. Widths double per stage in all
# of them, so stage 0 identifies the widths. Source: timm/models/convnext.py model definitions.
_CONVNEXT_SIGNATURES: dict[tuple[bool, tuple[int, ...], int], tuple[str, ...]] = {
    (False, (2, 2, 4, 2), 32): ("convnext_zepto_rms", "convnext_zepto_rms_ols"),
    (False, (2, 2, 6, 2), 40): ("convnext_atto", "convnext_atto_ols", "convnext_atto_rms"),
    (False, (2, 2, 6, 2), 48): ("convnext_femto", "convnext_femto_ols"),
    (False, (2, 2, 6, 2), 64): ("convnext_pico", "convnext_pico_ols"),
    (False, (2, 2, 8, 2), 80): ("convnext_nano", "convnext_nano_ols"),
    (False, (3, 3, 9, 3), 96): ("convnext_tiny", "convnext_tiny_hnf"),
    (False, (3, 3, 27, 3), 96): ("convnext_small",),
    (False, (3, 3, 27, 3), 128): (PAPER_BACKBONE,),
    (False, (3, 3, 27, 3), 192): ("convnext_large", "convnext_large_mlp"),
    (False, (3, 3, 27, 3), 256): ("convnext_xlarge",),
    (False, (3, 4, 30, 3), 384): ("convnext_xxlarge",),
    (True, (2, 2, 6, 2), 40): ("convnextv2_atto",),
    (True, (2, 2, 6, 2), 48): ("convnextv2_femto",),
    (True, (2, 2, 6, 2), 64): ("convnextv2_pico",),
    (True, (2, 2, 8, 2), 80): ("convnextv2_nano",),
    (True, (3, 3, 9, 3), 96): ("convnextv2_tiny",),
    (True, (3, 3, 27, 3), 96): ("convnextv2_small",),
    (True, (3, 3, 27, 3), 128): ("convnextv2_base",),
    (True, (3, 3, 27, 3), 192): ("convnextv2_large",),
    (True, (3, 3, 27, 3), 352): ("convnextv2_huge",),
}
_BLOCK_RE = re.compile(r"^model\.stages\.(\d+)\.blocks\.(\d+)\.")


# ----------------------------------------------------------------------------------------------- detection
def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe(obj: Any, limit: int = 8) -> str:
    """A short human description of a loaded object, for error messages."""
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        shown = ", ".join(
            f"{k!r}: {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}" for k, v in
            list(obj.items())[:limit]
        )
        more = f", … ({len(keys) - limit} more)" if len(keys) > limit else ""
        return f"a {type(obj).__name__} with {len(keys)} entries {{{shown}{more}}}"
    return f"an object of type {type(obj).__name__}"


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Remove a uniform DataParallel ``module.`` prefix. Raises if only some keys carry it."""
    with_prefix = [k for k in sd if k.startswith(_DP_PREFIX)]
    if not with_prefix:
        return dict(sd), False
    if len(with_prefix) != len(sd):
        without = [k for k in sd if not k.startswith(_DP_PREFIX)]
        raise ValueError(
            f"state_dict mixes keys with and without the DataParallel prefix 'module.' ({len(with_prefix)} with, "
            f"{len(without)} without, e.g. {without[:3]}); expected all keys with it or none"
        )
    return {k[len(_DP_PREFIX):]: v for k, v in sd.items()}, True


def _reference_problem(sd: Any) -> str | None:
    """None when ``sd`` is a reference-layout state_dict, else why not (for messages)."""
    if not _is_tensor_mapping(sd):
        return f"expected a non-empty mapping of str -> Tensor, got {_describe(sd)}"
    try:
        flat, _ = _strip_prefix(sd)
    except ValueError as exc:
        return str(exc)
    if "logit_scale" not in flat:
        return f"no 'logit_scale' entry (keys start {list(flat)[:5]})"
    if flat["logit_scale"].numel() != 1:
        return f"'logit_scale' should be a scalar, got shape {tuple(flat['logit_scale'].shape)}"
    other = [k for k in flat if k != "logit_scale" and not k.startswith("model.")]
    if other:
        return f"keys outside 'model.*' and 'logit_scale': {other[:8]}{' …' if len(other) > 8 else ''}"
    if len(flat) < 2:
        return "no backbone keys under 'model.'"
    return None


def _unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], str | None]:
    """Return (state_dict, wrapper key or None) or raise ValueError describing what was found."""
    if isinstance(obj, Mapping) and isinstance(obj.get("format"), str) and obj["format"] == "s4g-checkpoint":
        raise ValueError(
            "this is an s4g checkpoint (format 's4g-checkpoint'), not a reference Sample4Geo state_dict; "
            "load it with s4g_train.checkpoint.load_model"
        )
    problem = _reference_problem(obj)
    if problem is None:
        return dict(obj), None
    if isinstance(obj, Mapping):
        wrapped = [k for k in WRAPPER_KEYS if k in obj and _reference_problem(obj[k]) is None]
        stray = [k for k, v in obj.items() if k not in WRAPPER_KEYS and isinstance(v, torch.Tensor)]
        if len(wrapped) == 1 and not stray:
            return dict(obj[wrapped[0]]), wrapped[0]
        if len(wrapped) > 1:
            raise ValueError(f"ambiguous checkpoint: several entries {wrapped} each hold a reference state_dict")
    raise ValueError(
        "not a reference Sample4Geo checkpoint: expected a state_dict with keys 'model.*' (timm backbone) and "
        f"'logit_scale' (optionally all prefixed 'module.'), or a dict wrapping one under one of {list(WRAPPER_KEYS)}; "
        f"got {_describe(obj)} ({problem})"
    )


def is_reference_state_dict(obj: Any) -> bool:
    """True when ``obj`` is a reference-format checkpoint that :func:`load_reference_model` accepts
    (plain or ``module.``-prefixed state_dict, or a dict wrapping one under :data:`WRAPPER_KEYS`)."""
    try:
        _unwrap(obj)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ inference
def _meta_shapes(name: str) -> dict[str, tuple[int, ...]] | None:
    """Key -> shape of ``S4GModel``'s state_dict for backbone ``name``, built on the meta device (no memory)."""
    import timm

    try:
        with torch.device("meta"):
            backbone = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception as exc:  # noqa: BLE001 - an unknown/odd timm name just is not a candidate
        log.debug("cannot build %s on the meta device: %s", name, exc)
        return None
    shapes = {f"model.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    shapes["logit_scale"] = ()
    return shapes


def _convnext_signature(sd: Mapping[str, torch.Tensor]) -> tuple[bool, tuple[int, ...], int] | None:
    blocks: dict[int, set[int]] = {}
    for key in sd:
        m = _BLOCK_RE.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        return None
    depths = tuple(len(blocks[i]) for i in range(len(blocks)))
    dw = sd.get("model.stages.0.blocks.0.conv_dw.weight")
    if dw is None or dw.ndim != 4:
        return None
    v2 = any(".mlp.grn." in k for k in sd)
    return v2, depths, int(dw.shape[0])


def infer_backbone(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The timm backbone name whose parameters have exactly these keys and shapes, or None.

    Works for the ConvNeXt (v1/v2) family: the depth of each stage is counted from the
    ``model.stages.{i}.blocks.{j}`` keys, the width from the stage-0 depthwise convolution, and the candidate
    names with that signature are then compared key by key (shapes included) against the timm model built on
    the meta device. A ConvNeXt-B returns the paper's ``convnext_base.fb_in22k_ft_in1k_384`` (the pretrained
    tag only selects timm's data config; all published Sample4Geo checkpoints use it). Accepts the state_dict
    with or without ``module.`` prefix or wrapper.
    """
    sd, _ = _unwrap(state_dict)
    sd, _ = _strip_prefix(sd)
    sig = _convnext_signature(sd)
    if sig is None:
        log.info("backbone not inferable: no ConvNeXt stage/block keys in the state_dict")
        return None
    candidates = _CONVNEXT_SIGNATURES.get(sig, ())
    have = {k: tuple(v.shape) for k, v in sd.items()}
    have["logit_scale"] = ()  # scalar or (1,) are both accepted at load time
    for name in candidates:
        if _meta_shapes(name) == have:
            log.info("inferred backbone %s from the state_dict (v2=%s, depths=%s, width=%d)", name, *sig)
            return name
    log.info("ConvNeXt-like state_dict (v2=%s, depths=%s, width=%d) matches no known timm ConvNeXt exactly "
             "(tried %s)", *sig, list(candidates))
    return None


# ------------------------------------------------------------------------------------------------- loading
def read_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """Read a ``torch.save`` file (``weights_only=True``) or a ``.safetensors`` file, with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist (expected a .pth/.pt/.safetensors file)")
    size = p.stat().st_size
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError types
            raise ValueError(
                f"checkpoint {str(p)!r} ({size} bytes) is not a readable safetensors file, probably truncated "
                f"or corrupt: {exc}. Re-download or re-save it."
            ) from exc
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/EOFError/UnpicklingError for bad files
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise ValueError(
                f"checkpoint {str(p)!r} contains pickled Python objects that are not plain tensors/containers; "
                f"refusing to unpickle them (weights_only=True). Re-save it as model.state_dict(). Detail: {exc}"
            ) from exc
        raise ValueError(
            f"checkpoint {str(p)!r} ({size} bytes) cannot be read by torch.load: it is truncated or corrupt "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Re-download the file and "
            "compare its size/checksum with the published one."
        ) from exc


def _fmt_keys(title: str, keys: list[str]) -> str:
    return f"{title} ({len(keys)}):\n    " + "\n    ".join(keys) if keys else ""


def _match_state(sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
                 ) -> tuple[list[str], list[str], list[str], dict[str, torch.Tensor], float]:
    """(missing, unexpected, shape mismatches, loadable tensors, loaded fraction of the parameter elements)."""
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in sd and sd[k].shape != own[k].shape
    )
    loadable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    total = sum(v.numel() for v in own.values())
    loaded_fraction = sum(own[k].numel() for k in loadable) / max(total, 1)
    return missing, unexpected, mismatched, loadable, loaded_fraction


def _refuse_or_warn_partial(problems: str, *, source: str, backbone: str, inferred: bool,
                            sd: Mapping[str, torch.Tensor], loaded: int, total: int, loaded_fraction: float,
                            allow_partial: bool) -> None:
    """A checkpoint that does not match the model: ``ValueError`` saying what to do, or (``allow_partial`` and
    enough of the parameters load) a warning."""
    head = (f"checkpoint {source} does not match backbone {backbone!r}"
            f"{' (inferred from its shapes)' if inferred else ''}; {loaded}/{total} tensors "
            f"({100 * loaded_fraction:.1f}% of the parameters) would load.\n{problems}")
    if not inferred:
        guess = infer_backbone(sd)
        if guess is not None and guess != backbone:
            head += f"\nThe checkpoint's shapes match timm backbone {guess!r} exactly."
    if not allow_partial:
        raise ValueError(
            head + "\nFix: pass the backbone the checkpoint was trained with (--backbone NAME), or, to "
            "fine-tune from a related architecture on purpose, allow a partial load (--allow-partial)."
        )
    if loaded_fraction < MIN_PARTIAL_FRACTION:
        raise ValueError(
            head + f"\nRefusing even with allow_partial: less than {100 * MIN_PARTIAL_FRACTION:.0f}% of the "
            "parameters would come from the checkpoint, i.e. the model would be mostly random."
        )
    log.warning("PARTIAL load (allow_partial=True): %s", head)


def load_reference(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    backbone: str | None = None,
    allow_partial: bool = False,
    ground_size: tuple[int, int] | None = None,
    aerial_size: tuple[int, int] | None = None,
    polar_aerial: bool = False,
) -> tuple[S4GModel, dict[str, Any]]:
    """Build an :class:`S4GModel` from a reference checkpoint and report what was loaded.

    Returns ``(model, info)``; ``info`` has ``backbone``, ``backbone_inferred`` (bool), ``prefix_stripped``
    (bool), ``wrapper`` (key or None), ``missing``, ``unexpected``, ``mismatched`` (lists of key names /
    ``"key: ckpt shape vs model shape"``), ``loaded_fraction`` (of parameter elements) and ``source``.
    The model is in eval mode on the CPU. See :func:`load_reference_model` for the rules.
    """
    source = str(path_or_state_dict) if isinstance(path_or_state_dict, (str, os.PathLike)) else "<state_dict>"
    obj = read_checkpoint_file(path_or_state_dict) if isinstance(path_or_state_dict, (str, os.PathLike)) \
        else path_or_state_dict
    sd, wrapper = _unwrap(obj)
    sd, stripped = _strip_prefix(sd)
    if sd["logit_scale"].shape != ():
        sd["logit_scale"] = sd["logit_scale"].reshape(())

    inferred = False
    if backbone is None:
        backbone = infer_backbone(sd)
        inferred = backbone is not None
        if backbone is None:
            raise ValueError(
                f"cannot infer the backbone of {source} from its tensor shapes (only timm ConvNeXt v1/v2 models "
                f"are recognised; first keys {list(sd)[:4]}); pass the timm model name explicitly "
                "(--backbone NAME / backbone=NAME), e.g. --backbone convnext_base.fb_in22k_ft_in1k_384"
            )
    defaults = ModelConfig()
    cfg = ModelConfig(
        backbone=backbone,
        pretrained_file=None,
        ground_size=tuple(ground_size) if ground_size else defaults.ground_size,  # type: ignore[arg-type]
        aerial_size=tuple(aerial_size) if aerial_size else defaults.aerial_size,  # type: ignore[arg-type]
        polar_aerial=polar_aerial,
    )
    model = S4GModel(cfg)
    own = model.state_dict()
    missing, unexpected, mismatched, loadable, loaded_fraction = _match_state(sd, own)
    info: dict[str, Any] = {
        "source": source, "backbone": backbone, "backbone_inferred": inferred, "prefix_stripped": stripped,
        "wrapper": wrapper, "missing": missing, "unexpected": unexpected, "mismatched": mismatched,
        "loaded_fraction": loaded_fraction,
    }
    problems = "\n".join(s for s in (
        _fmt_keys("missing from the checkpoint", missing),
        _fmt_keys("unexpected in the checkpoint", unexpected),
        _fmt_keys("shape mismatches", mismatched),
    ) if s)
    if problems:
        _refuse_or_warn_partial(problems, source=source, backbone=backbone, inferred=inferred, sd=sd,
                                loaded=len(loadable), total=len(own), loaded_fraction=loaded_fraction,
                                allow_partial=allow_partial)
    model.load_state_dict(loadable, strict=not problems)
    model.eval()
    log.info("loaded reference checkpoint %s into %s (%s; prefix 'module.' %s)", source, backbone,
             "strict" if not problems else f"partial {100 * loaded_fraction:.1f}%",
             "stripped" if stripped else "absent")
    return model, info


def load_reference_model(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    backbone: str | None = None,
    allow_partial: bool = False,
    ground_size: tuple[int, int] | None = None,
    aerial_size: tuple[int, int] | None = None,
    polar_aerial: bool = False,
) -> S4GModel:
    """Load a published Sample4Geo checkpoint into a new :class:`S4GModel` (eval mode, CPU), strictly.

    ``backbone``: timm model name; inferred from the tensor shapes when None (ConvNeXt family), else a
    ``ValueError`` asks for it. ``allow_partial``: load only the keys that match (by name and shape) and log
    the rest, for deliberate fine-tuning from a related architecture; refused when under
    :data:`MIN_PARTIAL_FRACTION` of the parameters would load. ``ground_size`` / ``aerial_size``: ``(H, W)``
    the model is fed (not stored in reference checkpoints; default :class:`ModelConfig`'s, the VIGOR sizes —
    CVUSA/CVACT use ground 140×768). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a
    truncated/corrupt file, a non-reference object, or any missing/unexpected/mis-shaped key (all named).
    """
    model, _ = load_reference(
        path_or_state_dict, backbone=backbone, allow_partial=allow_partial, ground_size=ground_size,
        aerial_size=aerial_size, polar_aerial=polar_aerial,
    )
    return model
