"""Published (reference-format) Sample4Geo checkpoints through the CLIs: input sizes for s4g-eval / s4g-export,
and fine-tuning from a checkpoint with ``s4g-train --init``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from helpers.layouts import make_cvusa
from helpers.training import tiny_args, tiny_cvusa

torch.set_num_threads(1)


class ReferenceTimmModel(nn.Module):
    """The reference code's model class: timm backbone under ``model``, scalar ``logit_scale``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.model = timm.create_model(name, pretrained=False, num_classes=0)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))


@pytest.fixture(scope="module")
def ref_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A reference-format file (``module.`` prefix, as saved from DataParallel) of a seeded convnext_atto."""
    torch.manual_seed(0)
    m = ReferenceTimmModel("convnext_atto").eval()
    with torch.no_grad():
        m.logit_scale.fill_(3.21)  # not the init value
    p = tmp_path_factory.mktemp("ref") / "weights_e40_98.6830.pth"
    torch.save(nn.DataParallel(m).state_dict(), p)
    return p, {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def cvusa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cvusa(tmp_path_factory.mktemp("cvusa"), n_train=2, n_test=3, scale=8.0)


def test_load_model_sizes(ref_ckpt, tmp_path):
    from s4g_train.checkpoint import load_model, model_payload, save_checkpoint

    path, _ = ref_ckpt
    model, info = load_model(path, dataset="cvusa")
    assert model.cfg.ground_size == (140, 768) and model.cfg.aerial_size == (384, 384)
    assert info["input_sizes_from"] == "paper:cvusa"
    model, info = load_model(path, dataset="cvusa", ground_size=(32, 128))
    assert model.cfg.ground_size == (32, 128) and model.cfg.aerial_size == (384, 384)
    assert info["input_sizes_from"] == "given+paper:cvusa"
    model, info = load_model(path, ground_size=[32, 128], aerial_size=[48, 48])
    assert (model.cfg.ground_size, model.cfg.aerial_size, info["input_sizes_from"]) == ((32, 128), (48, 48), "given")
    with pytest.raises(ValueError, match="no paper input sizes"):
        load_model(path, dataset="cvusaa")
    with pytest.raises(ValueError, match="two positive ints"):
        load_model(path, ground_size=(32,))
    # our checkpoints store their sizes: a different request is refused, the same one is fine
    ours = tmp_path / "best.pt"
    save_checkpoint(ours, model_payload(model, {}, 1, {}))
    m2, info2 = load_model(ours, ground_size=(32, 128), dataset="cvusa")
    assert m2.cfg.ground_size == (32, 128) and info2["input_sizes_from"] == "checkpoint"
    with pytest.raises(ValueError, match=r"trained with ground_size \[32, 128\], but \[140, 768\]"):
        load_model(ours, ground_size=(140, 768))


def test_eval_uses_paper_sizes_and_explicit_override(ref_ckpt, cvusa, tmp_path, capsys):
    from s4g_train.evaluate import main

    path, _ = ref_ckpt
    out = tmp_path / "m.json"
    base = [str(path), "--dataset", "cvusa", "--root", str(cvusa), "--device", "cpu", "--amp", "off",
            "--batch-size", "4", "--out", str(out)]
    assert main(base) == 0
    res = json.loads(out.read_text())
    assert res["ground_size"] == [140, 768] and res["aerial_size"] == [384, 384]
    assert res["input_sizes_from"] == "paper:cvusa" and res["backbone"] == "convnext_atto"
    assert set(res["metrics"]) >= {"R@1", "R@5", "R@10", "R@1%"}
    assert main(base + ["--ground-size", "32", "128", "--aerial-size", "48", "48"]) == 0
    res = json.loads(out.read_text())
    assert (res["ground_size"], res["aerial_size"], res["input_sizes_from"]) == ([32, 128], [48, 48], "given")
    assert main(base + ["--backbone", "convnext_femto"]) == 2  # wrong architecture: strict load refuses
    assert "convnext_femto" in capsys.readouterr().err


def test_export_records_sizes_in_config_json(ref_ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    from s4g_train.export import main

    path, _ = ref_ckpt
    out = tmp_path / "paper"
    assert main([str(path), "--out", str(out), "--dataset", "cvusa", "--aerial-size", "64", "64"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["views"]["ground"]["input_size"] == [140, 768]
    assert cfg["views"]["aerial"]["input_size"] == [64, 64]
    assert cfg["provenance"]["input_sizes_from"] == "given+paper:cvusa"
    assert cfg["backbone"] == "convnext_atto" and cfg["provenance"]["checkpoint_format"] == "sample4geo-reference"
    out2 = tmp_path / "explicit"
    assert main([str(path), "--out", str(out2), "--dataset", "cvusa", "--ground-size", "32", "128",
                 "--aerial-size", "32", "32"]) == 0
    cfg = json.loads((out2 / "config.json").read_text())
    assert cfg["views"]["ground"]["input_size"] == [32, 128] and cfg["views"]["aerial"]["input_size"] == [32, 32]
    assert main([str(path), "--out", str(tmp_path / "bad"), "--dataset", "nope"]) == 2


def _capture_first_step(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Replace Trainer.fit with a probe that records the weights and training state the first step would see."""
    import s4g_train.trainer as trainer_mod

    seen: dict = {}

    def fit(self) -> bool:  # noqa: ANN001
        seen["state"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        seen["step"], seen["epoch"] = self.step, self.epoch
        seen["opt_state"] = len(self.train_step.opt.state)
        seen["lr"] = self.train_step.opt.param_groups[0]["lr"]
        return False  # "stopped": no final evaluation

    monkeypatch.setattr(trainer_mod.Trainer, "fit", fit)
    return seen


def test_train_init_loads_reference_weights(ref_ckpt, tmp_path, monkeypatch):
    from s4g_train.trainer import main

    path, want = ref_ckpt
    data = tiny_cvusa(tmp_path / "data", n_train=8, n_test=4)
    seen = _capture_first_step(monkeypatch)
    rc = main(tiny_args(data, tmp_path / "run", "--set", "model.backbone=convnext_atto", "--init", str(path)))
    assert rc == 0
    got = seen["state"]
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    assert seen["step"] == 0 and seen["epoch"] == 0 and seen["opt_state"] == 0  # fresh optimiser, not a resume
    import yaml

    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["train"]["init"] == str(path)

    # an init checkpoint of another architecture is refused by name, unless --allow-partial
    seen.clear()
    # s4g-train reports it as one line + exit code 2 (s4g_engine.console); --debug raises it
    with pytest.raises(ValueError, match="does not fit the configured model"):
        main(tiny_args(data, tmp_path / "run2", "--set", "model.backbone=convnext_femto", "--init", str(path),
                       "--debug"))
    assert main(tiny_args(data, tmp_path / "run2b", "--set", "model.backbone=convnext_femto", "--init",
                          str(path))) == 2
    assert "state" not in seen
    assert main(tiny_args(data, tmp_path / "run3", "--init", str(path), "--resume", str(tmp_path / "run"))) == 2


def test_train_init_from_our_checkpoint_and_partial(tmp_path, monkeypatch):
    from s4g_train.checkpoint import model_payload, save_checkpoint
    from s4g_train.model import ModelConfig, S4GModel
    from s4g_train.trainer import main

    torch.manual_seed(3)
    src = S4GModel(ModelConfig(backbone="test_convnext", pretrained_file=None, ground_size=(32, 128),
                               aerial_size=(32, 32)))
    with torch.no_grad():
        src.logit_scale.fill_(2.5)
    ours = tmp_path / "best.pt"
    save_checkpoint(ours, model_payload(src, {}, 7, {}))
    data = tiny_cvusa(tmp_path / "data", n_train=8, n_test=4)
    seen = _capture_first_step(monkeypatch)
    # different input size than the checkpoint's: fine for fine-tuning (weights do not depend on it)
    assert main(tiny_args(data, tmp_path / "run", "--set", "model.ground_size=[32,64]", "--init", str(ours))) == 0
    for k, v in src.state_dict().items():
        torch.testing.assert_close(seen["state"][k], v, rtol=0, atol=0, msg=k)

    # a checkpoint missing a tensor: strict init refuses, --allow-partial copies the rest and keeps the init value
    sd = {k: v for k, v in src.state_dict().items() if k != "logit_scale"}
    payload = model_payload(src, {}, 7, {})
    payload["model"] = sd
    partial = tmp_path / "partial.pt"
    save_checkpoint(partial, payload)
    with pytest.raises(ValueError, match="logit_scale"):
        main(tiny_args(data, tmp_path / "run2", "--init", str(partial), "--debug"))
    assert main(tiny_args(data, tmp_path / "run2b", "--init", str(partial))) == 2
    seen.clear()
    assert main(tiny_args(data, tmp_path / "run3", "--init", str(partial), "--allow-partial")) == 0
    assert seen["state"]["logit_scale"].item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    for k, v in sd.items():
        torch.testing.assert_close(seen["state"][k], v, rtol=0, atol=0, msg=k)
