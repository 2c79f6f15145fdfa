"""Import of published Sample4Geo checkpoints (issue 7 item 1): strict, loud, shape-inferred."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from s4g_train.reference import (
    PAPER_BACKBONE,
    infer_backbone,
    is_reference_state_dict,
    load_reference,
    load_reference_model,
)

torch.set_num_threads(1)


class ReferenceTimmModel(nn.Module):
    """The reference code's model class, re-typed here: timm backbone under ``model``, scalar ``logit_scale``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.model = timm.create_model(name, pretrained=False, num_classes=0)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@pytest.fixture(scope="module")
def source() -> ReferenceTimmModel:
    torch.manual_seed(0)
    m = ReferenceTimmModel("convnext_atto").eval()
    with torch.no_grad():  # not the init value, so a silently skipped logit_scale would be caught
        m.logit_scale.fill_(3.21)
    return m


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g)


def _assert_same_model(loaded: nn.Module, src: ReferenceTimmModel, x: torch.Tensor) -> None:
    with torch.no_grad():
        want = F.normalize(src(x), dim=-1)
        got = loaded.embed(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert loaded.logit_scale.item() == pytest.approx(src.logit_scale.item())


@pytest.mark.parametrize("data_parallel", [False, True], ids=["plain", "module-prefix"])
def test_reference_file_loads_strictly_and_matches_source(tmp_path, source, images, data_parallel):
    wrapped = nn.DataParallel(source) if data_parallel else source  # DataParallel on CPU just wraps
    sd = wrapped.state_dict()
    assert all(k.startswith("module.") for k in sd) == data_parallel
    path = tmp_path / "weights_e40_98.6830.pth"
    torch.save(sd, path)  # exactly what the reference trainer does
    assert is_reference_state_dict(torch.load(path, weights_only=True))

    model, info = load_reference(path, ground_size=(32, 128), aerial_size=(64, 64))
    assert info["backbone"] == "convnext_atto" and info["backbone_inferred"]
    assert info["prefix_stripped"] == data_parallel
    assert info["missing"] == info["unexpected"] == info["mismatched"] == []
    assert info["loaded_fraction"] == 1.0
    assert model.cfg.ground_size == (32, 128) and not model.training
    _assert_same_model(model, source, images)


def test_wrapped_state_dict_and_safetensors(tmp_path, source, images):
    sd = source.state_dict()
    model = load_reference_model({"state_dict": sd, "epoch": 40, "note": "x"})
    _assert_same_model(model, source, images)
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    _assert_same_model(load_reference_model(p), source, images)


def test_rejects_what_is_not_a_reference_checkpoint(source):
    sd = source.state_dict()
    ours = {"format": "s4g-checkpoint", "version": 1, "model": sd}
    assert not is_reference_state_dict(ours)
    with pytest.raises(ValueError, match="s4g checkpoint"):
        load_reference_model(ours)
    no_scale = {k: v for k, v in sd.items() if k != "logit_scale"}
    assert not is_reference_state_dict(no_scale)
    with pytest.raises(ValueError, match="logit_scale"):
        load_reference_model(no_scale)
    mixed = {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(sd.items())}
    assert not is_reference_state_dict(mixed)
    with pytest.raises(ValueError, match="mixes keys"):
        load_reference_model(mixed)
    # a wrapper with a stray tensor beside the state_dict is not silently accepted
    assert not is_reference_state_dict({"state_dict": sd, "ema": torch.zeros(3)})
    with pytest.raises(ValueError, match="not a reference Sample4Geo checkpoint"):
        load_reference_model([1, 2, 3])  # type: ignore[arg-type]


def test_wrong_architecture_names_the_shapes(source):
    with pytest.raises(ValueError) as err:
        load_reference_model(source.state_dict(), backbone="convnext_femto")
    msg = str(err.value)
    assert "model.stem.0.weight: checkpoint (40, 3, 4, 4) vs model (48, 3, 4, 4)" in msg
    assert "--backbone" in msg and "--allow-partial" in msg
    assert "match timm backbone 'convnext_atto' exactly" in msg
    # a partial load cannot rescue it: almost nothing would come from the checkpoint
    with pytest.raises(ValueError, match="mostly random"):
        load_reference_model(source.state_dict(), backbone="convnext_femto", allow_partial=True)


def test_missing_and_unexpected_keys_listed_and_partial_load(source, images):
    sd = dict(source.state_dict())
    dropped = "model.stages.2.blocks.5.mlp.fc2.bias"
    del sd[dropped]
    sd["model.extra_head.weight"] = torch.ones(4)
    with pytest.raises(ValueError) as err:
        load_reference_model(sd, backbone="convnext_atto")
    msg = str(err.value)
    assert f"missing from the checkpoint (1):\n    {dropped}" in msg
    assert "unexpected in the checkpoint (1):\n    model.extra_head.weight" in msg

    model, info = load_reference(sd, backbone="convnext_atto", allow_partial=True)
    assert info["missing"] == [dropped] and info["unexpected"] == ["model.extra_head.weight"]
    assert 0.99 < info["loaded_fraction"] < 1.0
    own = model.state_dict()
    for k, v in sd.items():
        if k in own:
            assert torch.equal(own[k], v), k


def test_truncated_and_missing_files(tmp_path, source):
    good = tmp_path / "good.pth"
    torch.save(source.state_dict(), good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_reference_model(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reference_model(tmp_path / "nope.pth")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="safetensors"):
        load_reference_model(bad_st)


class _Evil:
    pass


def test_pickled_objects_are_refused(tmp_path, source):
    p = tmp_path / "pickled.pth"
    torch.save({"state_dict": source.state_dict(), "args": _Evil()}, p)
    with pytest.raises(ValueError, match="weights_only"):
        load_reference_model(p)


def test_non_convnext_needs_an_explicit_backbone(images):
    torch.manual_seed(2)
    src = ReferenceTimmModel("resnet10t").eval()
    sd = src.state_dict()
    assert infer_backbone(sd) is None
    with pytest.raises(ValueError, match="--backbone"):
        load_reference_model(sd)
    _assert_same_model(load_reference_model(sd, backbone="resnet10t"), src, images)


@pytest.mark.parametrize("name", [
    "convnext_atto", "convnext_atto_ols", "convnext_atto_rms", "convnext_nano", "convnext_tiny",
    "convnext_tiny_hnf", "convnext_small", "convnext_base", "convnext_large_mlp", "convnextv2_atto",
])
def test_infer_backbone_from_shapes(name):
    with torch.device("meta"):  # shapes only, no memory: infer_backbone never reads values
        backbone = timm.create_model(name, pretrained=False, num_classes=0)
    sd = {f"module.model.{k}": v for k, v in backbone.state_dict().items()}
    sd["module.logit_scale"] = torch.zeros((), device="meta")
    want = PAPER_BACKBONE if name == "convnext_base" else name
    assert infer_backbone(sd) == want


def test_unknown_convnext_variant_is_not_guessed():
    with torch.device("meta"):
        backbone = timm.create_model("convnext_atto", pretrained=False, num_classes=0, kernel_sizes=5)
    sd = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    sd["logit_scale"] = torch.zeros((), device="meta")
    assert infer_backbone(sd) is None  # same depths/widths as atto, but the 5x5 kernels match no timm name


def test_checkpoint_load_model_dispatches_reference_files(tmp_path, source, images):
    """s4g-train/s4g-eval/s4g-export/s4g-viz all load through s4g_train.checkpoint.load_model."""
    from s4g_train.checkpoint import load_model

    p = tmp_path / "weights_e40_0.7786.pth"
    torch.save(nn.DataParallel(source).state_dict(), p)
    model, info = load_model(p)
    assert info["format"] != "s4g-checkpoint"
    _assert_same_model(model, source, images)
    with pytest.raises(ValueError, match="convnext_femto"):
        load_model(p, backbone="convnext_femto")
