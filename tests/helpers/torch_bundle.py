"""A real ``s4g-export`` bundle of a tiny torch model: a random-init timm ``test_convnext`` (64-d) exported
with :func:`s4g_train.export.export_bundle` (a few seconds). Used by the export tests and by the engine tests
that need a bundle whose embeddings can be compared with the eager model (test_localiser, test_engine_cli,
test_backends, test_torch_free, test_tensorrt, test_crash_consistency).

Importing this module skips the importing test module when torch, onnx or onnxruntime is missing (the bundle
cannot be built without them). For a bundle that needs no torch, see :mod:`helpers.onnx_bundle`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from s4g_train.export import export_bundle  # noqa: E402
from s4g_train.model import ModelConfig, S4GModel  # noqa: E402

GROUND = (32, 96)
AERIAL = (48, 48)


def tiny_model(seed: int = 0, polar: bool = False) -> S4GModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="test_convnext", ground_size=GROUND, aerial_size=(32, 96) if polar else AERIAL,
                      polar_aerial=polar)
    return S4GModel(cfg).eval()


def make_tiny_bundle(out: Path, *, seed: int = 0, **kw) -> tuple[S4GModel, dict]:
    """Export a random-init test_convnext model to ``out`` (a few seconds); returns (model, config)."""
    model = tiny_model(seed, polar=kw.pop("polar", False))
    cfg = export_bundle(model, out, provenance={"dataset": {"dataset": "test"}}, **kw)
    return model, cfg
