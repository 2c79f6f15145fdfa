"""The data contract: training and serving preprocess an image into the same input tensor, bit for bit.

One implementation (``s4g_engine.preprocess``) serves ``s4g_train.data``'s datasets and the Localiser; the
contract a run trains with is what ``s4g-export`` writes into ``config.json`` and what the Localiser reads
back. Here: identical tensors for the same files (both views, raw and polar aerial, non-square sources, grey /
RGBA / EXIF-rotated files, both interpolations), the config.json round trip, bundles from before the
contract gained fields, the ``data.interpolation`` config field and the float64 reference of the
normalisation.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("s4g_engine._core", reason="the compiled core provides polar_transform")

from s4g_engine import Localiser  # noqa: E402
from s4g_engine.errors import FormatError  # noqa: E402
from s4g_engine.preprocess import INTERPOLATIONS, DataContract, ViewSpec, polar_source_size  # noqa: E402
from s4g_train.checkpoint import save_checkpoint  # noqa: E402
from s4g_train.config import AugConfig, Config, build_config, preset_names  # noqa: E402
from s4g_train.data import PairedTrainDataset, ViewDataset, checkpoint_contract, data_contract, to_tensor  # noqa: E402
from s4g_train.export import export_bundle  # noqa: E402
from s4g_train.export import main as export_main
from s4g_train.model import ModelConfig, S4GModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GROUND, AERIAL, POLAR = (32, 96), (48, 48), (32, 96)
NO_AUG = AugConfig(flip_p=0.0, rotate_p=0.0, photometric=False)


def run_config(polar: bool, interpolation: str) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(backbone="test_convnext", ground_size=GROUND, aerial_size=POLAR if polar else AERIAL,
                            polar_aerial=polar)
    cfg.data.interpolation = interpolation
    return cfg


def images(tmp: Path) -> tuple[list[str], list[str]]:
    """Ground and aerial files of awkward kinds: non-square, grey, RGBA, PNG, large JPEG, EXIF-rotated."""
    rng = np.random.default_rng(7)

    def smooth(h: int, w: int) -> np.ndarray:
        y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        base = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * x - 2 * y), np.sin(9 * y)], -1) * 100 + 128
        return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)

    tmp.mkdir(parents=True, exist_ok=True)
    q, r = [], []
    for i, (h, w, kind) in enumerate([(70, 150, "jpg"), (400, 1400, "jpg"), (45, 97, "png"), (90, 300, "grey"),
                                      (80, 240, "exif")]):
        p = tmp / f"q{i}.{'png' if kind == 'png' else 'jpg'}"
        img = Image.fromarray(smooth(h, w))
        if kind == "grey":
            img = img.convert("L")
        exif = Image.Exif()
        if kind == "exif":
            exif[0x0112] = 6  # stored sideways, to be turned 90° clockwise when shown
        img.save(p, quality=92, exif=exif.tobytes()) if p.suffix == ".jpg" else img.save(p)
        q.append(str(p))
    for i, (h, w, kind) in enumerate([(90, 110, "jpg"), (300, 300, "png"), (47, 61, "rgba"), (1000, 800, "jpg"),
                                      (64, 64, "jpg")]):
        p = tmp / f"r{i}.{'jpg' if kind == 'jpg' else 'png'}"
        a = smooth(h, w)
        img = Image.fromarray(np.dstack([a, rng.integers(0, 256, (h, w), dtype=np.uint8)])) if kind == "rgba" \
            else Image.fromarray(a)
        img.save(p, quality=90) if kind == "jpg" else img.save(p)
        r.append(str(p))
    return q, r


def export_checkpoint_bundle(tmp: Path, cfg: Config, seed: int) -> Path:
    """A checkpoint of a model trained (here: initialised) with ``cfg`` → s4g-export's default bundle."""
    torch.manual_seed(seed)
    model = S4GModel(cfg.model)
    payload = {"format": "s4g-checkpoint", "version": 1, "model_config": cfg.model.to_dict(),
               "model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1, "metrics": {}}
    ck = tmp / "best.pt"
    save_checkpoint(ck, payload)
    assert export_main([str(ck), "--out", str(tmp / "bundle")]) == 0
    return tmp / "bundle"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """polar → (bundle folder, the run's Config): the polar one through the s4g-export CLI with bicubic, the
    raw one through export_bundle with the run's contract and bilinear."""
    tmp = tmp_path_factory.mktemp("contract")
    polar_cfg = run_config(True, "bicubic")
    raw_cfg = run_config(False, "bilinear")
    torch.manual_seed(1)
    raw_model = S4GModel(raw_cfg.model).eval()
    export_bundle(raw_model, tmp / "raw", contract=data_contract(raw_cfg, raw_model))
    return {True: (export_checkpoint_bundle(tmp / "polar", polar_cfg, 2), polar_cfg), False: (tmp / "raw", raw_cfg)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return images(tmp_path_factory.mktemp("images"))


def serving_inputs(bundle: Path, interpolation: str, q: list[str], r: list[str]) -> dict[str, np.ndarray]:
    """What the Localiser's encoders receive for ``q`` (ground) and ``r`` (aerial), with the bundle's
    contract set to ``interpolation``."""
    config = json.loads((bundle / "config.json").read_text())
    for v in ("ground", "aerial"):
        config["views"][v]["interpolation"] = interpolation
    seen: dict[str, list[np.ndarray]] = {"ground": [], "aerial": []}
    with Localiser(bundle, config, device="cpu", batch_size=2, decode_threads=2) as loc:
        for view, enc in list(loc.encoders.items()):
            def record(x: np.ndarray, enc=enc, view=view) -> np.ndarray:
                seen[view].append(np.array(x, copy=True))
                return enc(x)

            loc.encoders[view] = record  # type: ignore[assignment]
        loc.embed_ground(q)
        loc.embed_aerial(r)
    return {v: np.concatenate(xs) for v, xs in seen.items()}


@pytest.mark.parametrize("polar", [False, True], ids=["raw-aerial", "polar-aerial"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_training_and_serving_give_identical_input_tensors(bundles, files, polar, interpolation):
    bundle, cfg = bundles[polar]
    cfg = copy.deepcopy(cfg)
    cfg.data.interpolation = interpolation
    q, r = files
    contract = data_contract(cfg, S4GModel(cfg.model))
    served = serving_inputs(bundle, interpolation, q, r)
    assert served["ground"].shape == (len(q), 3, *GROUND)
    assert served["aerial"].shape == (len(r), 3, *(POLAR if polar else AERIAL))
    # training pairs (augmentation off), cached and not; evaluation / mining datasets
    for cache in (False, True):
        pairs = PairedTrainDataset(q, r, np.arange(len(q)), contract=contract, aug=NO_AUG, seed=0, cache=cache)
        for i in range(len(q)):
            g, a, _ = pairs[(0, i)]
            assert np.array_equal(g.numpy(), served["ground"][i]), (cache, i)
            assert np.array_equal(a.numpy(), served["aerial"][i]), (cache, i)
    for view, paths in (("ground", q), ("aerial", r)):
        ds = ViewDataset(paths, contract[view])
        got = np.stack([ds[i][0].numpy() for i in range(len(paths))])
        assert got.dtype == np.float32 and np.array_equal(got, served[view]), view


def test_the_bundle_records_the_training_contract(bundles):
    for polar, (bundle, cfg) in bundles.items():
        expected = data_contract(cfg, S4GModel(cfg.model))
        with Localiser.from_dir(bundle, device="cpu") as loc:
            assert loc.contract == expected
            assert loc.specs["aerial"] is loc.contract.aerial
        assert expected.aerial.polar is polar
        assert expected.ground.interpolation == ("bicubic" if polar else "bilinear")  # s4g-export's default
    assert bundles[True][1].data.interpolation == "bicubic"


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
@pytest.mark.parametrize("polar,draft", [(False, True), (True, False)])
def test_contract_round_trips_through_config_json(interpolation, polar, draft):
    c = DataContract.build(ground_size=(40, 130), aerial_size=(24, 80) if polar else (50, 50),
                           mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], interpolation=interpolation,
                           polar_aerial=polar, jpeg_draft=draft)
    text = json.dumps({"views": {v: {**d, "files": {"fp32": f"{v}.onnx"}} for v, d in c.to_config().items()}})
    back = DataContract.from_config(json.loads(text)["views"])
    assert back == c and back.to_config() == c.to_config()
    assert back.aerial.stage_size == (polar_source_size((24, 80)) if polar else (50, 50))


def test_old_bundles_without_the_newer_fields_still_load():
    shipped = json.loads((ROOT / "models" / "s4g-synthetic" / "config.json").read_text())
    # a bundle written before jpeg_draft existed: the shipped views without it
    views = {v: {k: x for k, x in d.items() if k != "jpeg_draft"} for v, d in shipped["views"].items()}
    c = DataContract.from_config(views)
    assert c.aerial.polar and c.aerial.polar_source_size == (64, 64) and c.aerial.input_size == (32, 128)
    assert c.ground.interpolation == "bilinear" and c.ground.jpeg_draft  # what that run trained with
    # the contract its training config gives today is the one the old bundle implies
    train = shipped["provenance"]["train_config"]
    model = S4GModel(ModelConfig.from_dict(train["model"]))
    assert checkpoint_contract(model, train) == c
    # the oldest form: no interpolation, channel order, layout or polar source size
    old = {"input_size": [32, 128], "mean": [0.5] * 3, "std": [0.25] * 3, "polar": {"height": 32, "width": 128}}
    spec = ViewSpec.from_config("aerial", old)
    assert spec.polar_source_size == (64, 64) and spec.interpolation == "bilinear" and spec.jpeg_draft


@pytest.mark.parametrize("change,match", [
    ({"interpolation": "cubic"}, "interpolation"),
    ({"channel_order": "BGR"}, "channel_order"),
    ({"layout": "NHWC"}, "layout"),
    ({"std": [0.2, 0.0, 0.2]}, "std"),
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"input_size": [32]}, "input_size"),
    ({"polar": {"height": 16, "width": 128}}, "polar"),
    ({"polar": {"source_size": [64, 48]}}, "square"),
])
def test_bad_contracts_are_refused_with_the_field_named(change, match):
    good = {"input_size": [32, 128], "mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(FormatError, match=match):
        ViewSpec.from_config("ground", {**good, **change})
    with pytest.raises(FormatError, match="input_size"):
        ViewSpec.from_config("ground", {"mean": [0.5] * 3, "std": [0.25] * 3})
    with pytest.raises(FormatError, match="'ground' and 'aerial'"):
        DataContract.from_config({"ground": good})


def test_interpolation_field_default_keeps_every_preset_bilinear():
    """Every run before ``data.interpolation`` existed resized with bilinear: the default must stay that."""
    for name in preset_names():
        cfg = build_config(preset=name)
        assert cfg.data.interpolation == "bilinear", name
    model = S4GModel(ModelConfig(backbone="test_convnext", ground_size=GROUND, aerial_size=AERIAL))
    cfg = run_config(False, "backbone")
    assert data_contract(cfg, model).ground.interpolation == model.data_config()["interpolation"]
    with pytest.raises(ValueError, match="data.interpolation"):
        build_config(overrides=[("data.interpolation", "cubic")])


def test_checkpoint_contract_follows_the_training_config():
    model = S4GModel(ModelConfig(backbone="test_convnext", ground_size=GROUND, aerial_size=AERIAL))
    dc = model.data_config()
    assert checkpoint_contract(model, None).ground.interpolation == "bilinear"  # reference checkpoints
    assert checkpoint_contract(model, {"data": {"draft": True}}).ground.interpolation == "bilinear"  # old runs
    c = checkpoint_contract(model, {"data": {"interpolation": "bicubic", "draft": False}})
    assert c.ground.interpolation == c.aerial.interpolation == "bicubic" and not c.aerial.jpeg_draft
    assert list(c.ground.mean) == pytest.approx(dc["mean"]) and list(c.aerial.std) == pytest.approx(dc["std"])
    assert checkpoint_contract(model, {"data": {"interpolation": "bicubic"}},
                               interpolation="nearest").ground.interpolation == "nearest"
    assert checkpoint_contract(model, {"data": {"interpolation": "backbone"}}).ground.interpolation == \
        dc["interpolation"]


def test_normalisation_matches_a_float64_reference(rng):
    """The table-driven float32 normalisation (batch and single image) against plain float64 arithmetic."""
    mean, std = rng.uniform(0.2, 0.6, 3), rng.uniform(0.1, 0.4, 3)
    spec = ViewSpec("ground", (13, 29), mean, std)
    imgs = rng.integers(0, 256, (3, 13, 29, 3), dtype=np.uint8)
    ref = ((imgs / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    got = spec.normalise_batch(imgs)
    assert got.dtype == np.float32 and got.shape == (3, 3, 13, 29)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    assert all(np.array_equal(spec.normalise(imgs[i]), got[i]) for i in range(3))
    assert np.array_equal(to_tensor(imgs[0], mean, std).numpy(), got[0])
    with pytest.raises(ValueError, match=r"\(B, 13, 29, 3\)"):
        spec.normalise_batch(imgs[:, :12])


def test_exif_orientation_is_applied_before_the_resize(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 256, (40, 100, 3), dtype=np.uint8)  # as stored: 100 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif.tobytes())  # PNG: lossless
    spec = ViewSpec("ground", (100, 40), [0.5] * 3, [0.25] * 3)
    shown = np.rot90(stored, -1)  # orientation 6: turn 90° clockwise to show it upright
    assert np.array_equal(spec.load(tmp_path / "turned.png"), shown)
