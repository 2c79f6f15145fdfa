"""s4g-export: ONNX graphs reproduce the eager model, config.json is a complete data contract, writes are atomic.

The tiny model and its bundle (a timm ``test_convnext``, 64-d) come from :mod:`helpers.torch_bundle`, which the
engine tests share.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers.torch_bundle import AERIAL, GROUND, make_tiny_bundle, tiny_model  # noqa: E402
from s4g_engine.preprocess import DataContract  # noqa: E402
from s4g_train.export import ExportError, bundle_fingerprint, export_bundle, main, parity  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    model, cfg = make_tiny_bundle(out, fp16=True, with_features=True)
    return out, model, cfg


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("view,size", [("ground", GROUND), ("aerial", AERIAL)])
@pytest.mark.parametrize("variant,threshold", [("fp32", 0.9999), ("fp16", 0.999)])
def test_onnx_matches_eager_on_fresh_inputs(bundle, view, size, variant, threshold):
    out, model, cfg = bundle
    name = cfg["views"][view]["files"][variant]
    sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(123)
    for b in (1, 5):  # the batch axis is dynamic
        x = torch.randn(b, 3, *size, generator=g) * 1.5
        with torch.no_grad():
            ref = model.embed(x).numpy()
            ref_f = model.forward_features(x).numpy()
        emb, feats = sess.run(["embedding", "features"], {"image": x.numpy()})
        assert emb.shape == (b, model.embed_dim) and emb.dtype == np.float32
        assert _cos(emb, ref).min() >= threshold
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)  # normalised inside the graph
        assert feats.shape == ref_f.shape
        np.testing.assert_allclose(feats, ref_f, atol=(2e-2 if variant == "fp16" else 1e-4) * np.abs(ref_f).max())


def test_config_is_a_complete_contract(bundle):
    out, model, cfg = bundle
    on_disk = json.loads((out / "config.json").read_text())
    assert on_disk == cfg
    assert cfg["format"] == "s4g-bundle" and cfg["embed_dim"] == model.embed_dim == 64
    assert cfg["backbone"] == "test_convnext" and cfg["opset"] >= 17
    for view, size in (("ground", GROUND), ("aerial", AERIAL)):
        v = cfg["views"][view]
        assert v["input_size"] == list(size) and v["channel_order"] == "RGB" and v["layout"] == "NCHW"
        assert v["mean"] == pytest.approx(model.data_config()["mean"]) and len(v["std"]) == 3
        assert v["interpolation"] == "bilinear" and v["polar"] is None and v["jpeg_draft"] is True
        # exactly the engine's data contract, plus the graph's files and tensor names
        assert {**DataContract.from_config(cfg["views"])[view].to_config(), "input_name": "image",
                "files": v["files"], "outputs": v["outputs"]} == v
        m = onnx.load(str(out / v["files"]["fp32"]))
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
        dims = m.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, *size]
    # every file hashed, single-file graphs (no external .data)
    files = sorted(p.name for p in out.iterdir() if p.name != "config.json")
    assert files == sorted(cfg["files"]) and not any(f.endswith(".data") for f in files)
    for name, meta in cfg["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == meta["sha256"]
    shas = [cfg["files"][cfg["views"][v]["files"]["fp32"]]["sha256"] for v in ("ground", "aerial")]
    assert cfg["fingerprint"] == bundle_fingerprint(64, shas)
    assert cfg["parity"]["ground"]["fp32"]["min_cosine"] >= 0.9999
    assert cfg["provenance"]["dataset"] == {"dataset": "test"} and "exported_at" in cfg["provenance"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_different_weights_give_different_fingerprints(tmp_path, bundle):
    _, _, cfg = bundle
    _, cfg2 = make_tiny_bundle(tmp_path / "other", seed=1)
    assert cfg2["fingerprint"] != cfg["fingerprint"]


def test_fp16_weight_storage_halves_the_file(tmp_path, bundle):
    out, model, cfg = bundle
    _, c16 = make_tiny_bundle(tmp_path / "w16", weights="fp16")
    assert c16["weights_precision"] == "fp16"
    assert c16["files"]["ground.onnx"]["bytes"] < 0.7 * cfg["files"]["ground.onnx"]["bytes"]
    assert c16["parity"]["ground"]["fp32"]["min_cosine"] >= 0.9999


def test_parity_detects_a_wrong_graph(tmp_path, bundle):
    out, model, cfg = bundle
    other = tiny_model(seed=7)
    with pytest.raises(ExportError, match="cosine"):
        parity(other, out / "ground.onnx", GROUND, threshold=0.9999, with_features=False)


def test_failed_export_leaves_previous_bundle_intact(tmp_path, monkeypatch):
    out = tmp_path / "b"
    make_tiny_bundle(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "MODEL_CARD.md").write_text("card")
    import s4g_train.export as ex

    def boom(*a, **k):
        raise ExportError("simulated parity failure")

    monkeypatch.setattr(ex, "parity", boom)
    with pytest.raises(ExportError):
        make_tiny_bundle(out, seed=3)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "MODEL_CARD.md"}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # temp folder removed
    monkeypatch.undo()
    make_tiny_bundle(out, seed=3)  # a successful re-export keeps the hand-written model card
    assert (out / "MODEL_CARD.md").read_text() == "card"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_bundle(tiny_model(), tmp_path / "x", opset=13)
    with pytest.raises(ValueError, match="weights"):
        export_bundle(tiny_model(), tmp_path / "x", weights="int4")
    wrong = DataContract.build(ground_size=GROUND, aerial_size=(32, 32), mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(ValueError, match="does not match the model"):
        export_bundle(tiny_model(), tmp_path / "x", contract=wrong)
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2


def test_main_exports_our_checkpoint_format(tmp_path, capsys):
    """The CLI loads a checkpoint in the trainer's payload format and records its provenance."""
    checkpoint = pytest.importorskip("s4g_train.checkpoint")
    model = tiny_model(seed=4)
    payload = {"format": "s4g-checkpoint", "version": 1, "model_config": model.cfg.to_dict(),
               "model": model.state_dict(), "config": {"data": {"dataset": "cvusa", "synthetic": True}},
               "epoch": 3, "metrics": {"R@1": 12.5}}
    ckpt = tmp_path / "best.pt"
    checkpoint.save_checkpoint(ckpt, payload)
    out = tmp_path / "models" / "m"
    assert main([str(ckpt), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    prov = cfg["provenance"]
    assert prov["epoch"] == 3 and prov["metrics"] == {"R@1": 12.5} and prov["dataset"]["dataset"] == "cvusa"
    assert prov["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert "s4g-export" in prov["export_command"] and "cosine" in capsys.readouterr().out
    # a run from before data.interpolation existed trained with bilinear: that is what the bundle records
    assert {cfg["views"][v]["interpolation"] for v in ("ground", "aerial")} == {"bilinear"}
    sess = ort.InferenceSession(str(out / "aerial.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, *AERIAL)
    with torch.no_grad():
        assert _cos(sess.run(None, {"image": x.numpy()})[0], model.embed(x).numpy()).min() >= 0.9999


def test_polar_model_records_the_polar_contract(tmp_path):
    model, cfg = make_tiny_bundle(tmp_path / "polar", polar=True)
    pol = cfg["views"]["aerial"]["polar"]
    assert pol["height"] == 32 and pol["width"] == 96 and len(pol["source_size"]) == 2
    assert cfg["views"]["aerial"]["input_size"] == [32, 96]
    assert os.path.isfile(tmp_path / "polar" / "aerial.onnx")
