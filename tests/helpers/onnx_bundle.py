"""A tiny model bundle built with the ``onnx`` package alone (no torch): for engine tests that need a real
bundle but not a trained network. Each view: image (B, 3, H, W) → flatten → linear → L2 normalise →
``embedding`` (B, D), written exactly as ``s4g-export`` lays a bundle out (config.json with the data
contract, the sha256 and size of every file, the fingerprint derived from the fp32 graphs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

GROUND = (16, 32)
AERIAL = (16, 16)
DIM = 16


def onnx_model_bytes(h: int, w: int, dim: int, seed: int, *, batch: str | int = "batch") -> bytes:
    """Serialized ONNX graph ``image (B, 3, h, w) -> embedding (B, dim)``, L2-normalised."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = (np.random.default_rng(seed).standard_normal((3 * h * w, dim)) / np.sqrt(3 * h * w)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["proj"]),
             helper.make_node("LpNormalization", ["proj"], ["embedding"], axis=1, p=2)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, dim])],
        initializer=[numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(dim: int, shas: list[str]) -> str:
    """The fingerprint rule of s4g_engine.bundle.model_fingerprint, written out independently."""
    return hashlib.sha256((f"s4g|{dim}|" + "|".join(shas)).encode()).hexdigest()


def write_config(root: Path, cfg: dict) -> None:
    (root / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")


def relist(root: Path, cfg: dict) -> dict:
    """Recompute ``files`` (sha256, bytes) for the listed files and the fingerprint; write config.json."""
    for name in cfg["files"]:
        data = (root / name).read_bytes()
        cfg["files"][name] = {"sha256": _sha(data), "bytes": len(data)}
    cfg["fingerprint"] = fingerprint(cfg["embed_dim"], [cfg["files"][cfg["views"][v]["files"]["fp32"]]["sha256"]
                                                        for v in ("ground", "aerial")])
    write_config(root, cfg)
    return cfg


def make_onnx_bundle(root: Path, *, dim: int = DIM, ground: tuple[int, int] = GROUND,
                     aerial: tuple[int, int] = AERIAL, seed: int = 0) -> dict:
    """Write a bundle folder at ``root``; returns its config."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    views = {}
    for k, (view, size) in enumerate((("ground", ground), ("aerial", aerial))):
        (root / f"{view}.onnx").write_bytes(onnx_model_bytes(size[0], size[1], dim, seed + k))
        views[view] = {"input_size": list(size), "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "interpolation": "bilinear", "channel_order": "RGB", "layout": "NCHW", "polar": None,
                       "input_name": "image", "files": {"fp32": f"{view}.onnx"}, "outputs": ["embedding"]}
    cfg = {"format": "s4g-bundle", "version": 1, "name": "tiny-onnx", "embed_dim": dim, "views": views,
           "files": {"ground.onnx": {}, "aerial.onnx": {}}, "fingerprint": ""}
    return relist(root, cfg)
