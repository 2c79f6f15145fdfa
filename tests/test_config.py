"""Config: presets parse, overrides of any field (typed), validation errors, YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from s4g_train.config import Config, build_config, load_yaml, preset_names, save_yaml, split_cli_overrides


def test_every_preset_builds_and_has_the_paper_values() -> None:
    names = preset_names()
    assert {"cvusa", "cvact", "vigor-same", "vigor-cross", "university", "synthetic"} <= set(names)
    for n in names:
        build_config(n)
    c = build_config("cvusa")
    assert (c.optim.lr, c.optim.weight_decay, c.train.batch_size, c.train.epochs) == (1e-3, 0.01, 128, 40)
    assert (c.sampling.k, c.sampling.K, c.sampling.dss_every, c.train.label_smoothing) == (64, 128, 4, 0.1)
    assert c.model.ground_size == (140, 768) and c.model.aerial_size == (384, 384)
    assert build_config("vigor-same").model.ground_size == (384, 768)
    assert build_config("university").train.epochs == 1
    assert build_config("cvact").sampling.gps_metric == "euclidean"


def test_overrides_are_typed_and_reach_any_field() -> None:
    rest, ov = split_cli_overrides(["--preset", "cvusa", "--set", "optim.lr=3e-4", "--train.epochs", "7",
                                    "--model.ground_size=[64, 256]", "--set", "train.time_budget_min=null",
                                    "--data.aug.flip_p", "0.25", "--set", "model.polar_aerial=true"])
    assert rest == ["--preset", "cvusa"]
    c = build_config("cvusa", overrides=ov)
    assert c.optim.lr == 3e-4 and isinstance(c.optim.lr, float)
    assert c.train.epochs == 7 and isinstance(c.train.epochs, int)
    assert c.model.ground_size == (64, 256)
    assert c.train.time_budget_min is None
    assert c.data.aug.flip_p == 0.25
    assert c.model.polar_aerial is True


@pytest.mark.parametrize("key,value,msg", [
    ("optim.lrr", "1", "unknown config field 'optim.lrr'"),
    ("nosection.x", "1", "unknown config field 'nosection'"),
    ("train.epochs", "abc", "train.epochs: expected an integer"),
    ("train.epochs", "2.5", "expected an integer"),
    ("model.ground_size", "[1, 2, 3]", "expected 2 values"),
    ("model.polar_aerial", "maybe", "expected true/false"),
    ("sampling.strategy", "hard", "expected one of"),
    ("sampling.k", "63", "must be even"),
    ("sampling.k", "200", "need 0 ≤ k ≤ K"),
    ("train.loss", "mse", "expected one of"),
    ("data.aug.flip_p", "1.5", "probability"),
    ("model.ground_size", "[140, 770]", "divisible by 4"),
    ("train.batch_size", "1", "at least 2"),
    ("model.tile_centres", "0", "model.tile_centres=0: expected an integer from 1"),
    ("model.tile_centres", "9", "from 1 .tile centre only. to 8"),
    ("model.tile_centres", "3", "cvusa has its camera at the tile centre"),
])
def test_bad_values_raise_with_a_useful_message(key: str, value: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg.replace("[", r"\[")):
        build_config("cvusa", overrides=[(key, value)])


def test_cli_override_syntax_errors() -> None:
    with pytest.raises(ValueError, match="section.field=value"):
        split_cli_overrides(["--set", "optim.lr"])
    with pytest.raises(ValueError, match="unknown preset"):
        build_config("nope")
    with pytest.raises(FileNotFoundError):
        build_config(config_file="/nonexistent/cfg.yaml")


def test_yaml_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = build_config("synthetic", overrides=[("optim.betas", "[0.8, 0.9]")])
    save_yaml(c, tmp_path / "config.yaml")
    d = load_yaml(tmp_path / "config.yaml")
    c2 = Config.from_dict(d)
    assert c2.to_dict() == c.to_dict()
    assert c2.optim.betas == (0.8, 0.9) and c2.model.aerial_size == tuple(c.model.aerial_size)
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        build_config(config_file=str(tmp_path / "bad.yaml"))
    (tmp_path / "bad2.yaml").write_text(yaml.safe_dump({"train": {"epoch": 3}}))
    with pytest.raises(ValueError, match="train.epoch"):
        build_config(config_file=str(tmp_path / "bad2.yaml"))


def test_yaml_11_words_keep_their_meaning_per_field_type():
    """`--set train.amp=off` is the word off for a text field (YAML 1.1 would read False and the field would refuse
    it); a boolean field still reads yes/no as booleans; a real boolean for a text field is a clear error."""
    c = build_config("synthetic", overrides=[("train.amp", "off"), ("train.collapse", "off"), ("train.compile", "yes")])
    assert c.train.amp == "off" and c.train.collapse == "off" and c.train.compile is True
    assert build_config("synthetic", overrides=[("train.compile", "no")]).train.compile is False
    with pytest.raises(ValueError, match="train.amp"):
        build_config("synthetic", overrides=[("train.amp", "true")])
