"""s4g-eval and evaluate_split: metrics equal a plain full-matrix NumPy computation on the same embeddings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import tiny_cvusa
from s4g_engine.datasets import load_split
from s4g_train.checkpoint import load_model, model_payload, save_checkpoint
from s4g_train.config import build_config
from s4g_train.evaluate import evaluate_split, format_table, main, subset_split
from s4g_train.model import ModelConfig, S4GModel


def plain_metrics(q: np.ndarray, r: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    s = q.astype(np.float64) @ r.astype(np.float64).T
    rank = (s > s[np.arange(len(q)), pos][:, None]).sum(1)
    one = max(1, len(r) // 100) if len(r) >= 100 else len(r) // 100
    return {"R@1": 100 * np.mean(rank < 1), "R@5": 100 * np.mean(rank < 5), "R@10": 100 * np.mean(rank < 10),
            "R@1%": 100 * np.mean(rank < one)}


def test_evaluate_split_with_plain_embedding_functions(tmp_path: Path) -> None:
    data = tiny_cvusa(tmp_path / "data", n_train=4, n_test=30)
    split = load_split("cvusa", str(data), "test")
    rng = np.random.default_rng(0)
    table = {p: v for p, v in zip(split.queries + split.references,
                                  rng.standard_normal((60, 16)).astype(np.float32))}
    fn = lambda paths: np.stack([table[p] / np.linalg.norm(table[p]) for p in paths])  # noqa: E731
    res, q, r = evaluate_split(fn, fn, split)
    ref = plain_metrics(q, r, split.positive)
    for k, v in ref.items():
        assert res[k] == pytest.approx(v), k
    res5, q5, _ = evaluate_split(fn, fn, split, max_queries=5)
    assert q5.shape == (5, 16) and res5["queries"] == 5 and res5["references"] == 30
    assert subset_split(split, 5).positive.tolist() == split.positive[:5].tolist()
    assert "| R@1 |" in format_table({"x": res}).replace("| model | R@1 |", "| R@1 |")


def test_s4g_eval_on_a_checkpoint(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tiny_cvusa(tmp_path / "data", n_train=4, n_test=12)
    cfg = build_config("cvusa", overrides=[("data.root", str(data)), ("model.backbone", "test_convnext"),
                                           ("model.ground_size", "[32, 128]"), ("model.aerial_size", "[32, 32]")])
    torch.manual_seed(0)
    model = S4GModel(cfg.model)
    ck = tmp_path / "best.pt"
    save_checkpoint(ck, model_payload(model, cfg.to_dict(), 3, {"R@1": 1.0}))
    emb = tmp_path / "emb"
    assert main([str(ck), "--save-embeddings", str(emb), "--out", str(tmp_path / "m.json"), "--amp", "off"]) == 0
    out = json.loads((tmp_path / "m.json").read_text())
    assert out["dataset"] == "cvusa" and out["split"] == "test" and out["epoch"] == 3
    q, r, pos = (np.load(emb / f) for f in ("query_emb.npy", "ref_emb.npy", "positive.npy"))
    assert q.shape == (12, model.embed_dim) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-4)
    for k, v in plain_metrics(q, r, pos).items():
        assert out["metrics"][k] == pytest.approx(v)
    # the embeddings are those of the model: embed one query by hand
    from s4g_train.data import ViewDataset, checkpoint_contract
    loaded, info = load_model(ck)
    spec = checkpoint_contract(loaded, info.get("config")).ground
    x, _ = ViewDataset([load_split("cvusa", str(data), "test").queries[0]], spec)[0]
    with torch.no_grad():
        e = loaded.embed(x[None]).numpy()[0]
    assert np.allclose(e, q[0], atol=1e-4)
    assert "| model | R@1 | R@5 | R@10 | R@1% |" in capsys.readouterr().out


def test_load_model_errors(tmp_path: Path) -> None:
    cfg = ModelConfig(backbone="test_convnext", ground_size=(32, 128), aerial_size=(32, 32))
    ck = tmp_path / "m.pt"
    save_checkpoint(ck, model_payload(S4GModel(cfg), {}, 0, {}))
    with pytest.raises(ValueError, match="holds backbone"):
        load_model(ck, backbone="convnext_atto")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "none.pt")


# ---------------------------------------------------------------------------------------------- VIGOR
R_EARTH = 6_371_004.0


def test_vigor_metre_error_hand_computed() -> None:
    """Two queries at the equator, tiles 64 m apart: the errors are plain Pythagoras at this scale."""
    from s4g_engine.metrics import localisation_errors, vigor_true_latlon

    deg = lambda m: math.degrees(m / R_EARTH)  # noqa: E731  (metres along the equator / a meridian → degrees)
    tiles = np.array([[0.0, 0.0], [0.0, deg(64.0)]])  # tile A at (0°, 0°), tile B 64 m east of it
    positive = np.array([0, 0])  # both panoramas belong to tile A
    # VIGOR pixel offsets (d0, d1) at 0.5 m/px: d0 = -100 px → 50 m north; (-60, -40) px → 30 m north, 20 m east
    mpp = 0.5
    delta = np.array([[[-100.0, 0.0]], [[-60.0, -40.0]]])
    offsets = -delta * mpp  # the reader's convention: north = -d0·m/px, east = -d1·m/px
    truth = vigor_true_latlon(tiles, positive, offsets)
    np.testing.assert_allclose(truth, [[deg(50.0), 0.0], [deg(30.0), deg(20.0)]], rtol=1e-9, atol=1e-15)
    # query 0 retrieves tile A (error = its 50 m offset), query 1 retrieves tile B: √(30² + 44²) = 53.2541… m
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    r = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    m = localisation_errors(q, r, tiles, truth)
    e1 = math.sqrt(30.0 ** 2 + 44.0 ** 2)
    assert m["mean_m"] == pytest.approx((50.0 + e1) / 2, rel=1e-7)
    assert m["median_m"] == pytest.approx((50.0 + e1) / 2, rel=1e-7)
    assert (m["acc@10m"], m["acc@25m"], m["acc@50m"]) == (0.0, 0.0, 50.0)
    # away from the equator an east offset is shorter in longitude: compare with the spherical law of cosines
    chicago = np.array([[41.88, -87.63]])
    t = vigor_true_latlon(chicago, np.array([0]), np.array([[[0.0, 100.0]]]))[0]  # 100 m due east
    p1, p2, dl = math.radians(41.88), math.radians(t[0]), math.radians(t[1] + 87.63)
    d = R_EARTH * math.acos(math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl))
    assert t[0] == 41.88 and d == pytest.approx(100.0, abs=1e-3)  # law of cosines loses ~1e-4 m at this scale
    with pytest.raises(ValueError, match="offsets must be"):
        vigor_true_latlon(tiles, positive, offsets[:, 0])
    with pytest.raises(ValueError, match="positive must be"):
        vigor_true_latlon(tiles, np.array([0, 2]), offsets)


def plain_vigor(q: np.ndarray, r: np.ndarray, split) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Full-matrix float64 reference: R@k, hit rate, metre error of the top-1 tile against the pano's name GPS."""
    from s4g_engine.geo import haversine_m

    s = q.astype(np.float64) @ r.astype(np.float64).T
    out = plain_metrics(q, r, split.positive)
    pos_s = s[np.arange(len(q)), split.positive][:, None]
    above = s > pos_s
    above[np.arange(len(q))[:, None], split.semi_positives] = False  # semi-positives are not counted
    out["hit_rate"] = 100 * np.mean(above.sum(1) < 1)
    top = np.argmax(s, axis=1)  # ties → lower index, as the core
    err = haversine_m(split.reference_gps[top, 0], split.reference_gps[top, 1], split.query_gps[:, 0],
                      split.query_gps[:, 1])
    out.update({"metre_median_m": np.median(err), "metre_mean_m": np.mean(err),
                **{f"metre_acc@{t}m": 100 * np.mean(err <= t) for t in (10, 25, 50)}})
    return out


@pytest.mark.parametrize("variant", ["vigor-same", "vigor-cross"])
def test_s4g_eval_on_vigor_layout(tmp_path: Path, capsys, variant: str) -> None:  # type: ignore[no-untyped-def]
    """Real-VIGOR layout (no meta.json: 0.114 m/px): R@k, hit rate and metre errors of s4g-eval equal the
    full-matrix reference, for same-area and cross-area, and the printed table shows them."""
    from helpers.layouts import make_vigor

    data = make_vigor(tmp_path / "VIGOR", grid=4, panos_per_city=6)
    cfg = build_config("vigor-same", overrides=[("data.root", str(data)), ("model.backbone", "test_convnext"),
                                                ("model.ground_size", "[32, 64]"), ("model.aerial_size", "[32, 32]")])
    torch.manual_seed(1)
    ck = tmp_path / "best.pt"
    save_checkpoint(ck, model_payload(S4GModel(cfg.model), cfg.to_dict(), 1, {}))
    emb, out = tmp_path / "emb", tmp_path / "m.json"
    assert main([str(ck), "--dataset", variant, "--save-embeddings", str(emb), "--out", str(out), "--amp", "off"]) == 0
    res = json.loads(out.read_text())["metrics"]
    split = load_split(variant, str(data), "test")
    q, r = np.load(emb / "query_emb.npy"), np.load(emb / "ref_emb.npy")
    assert np.load(emb / "semi_positives.npy").shape == (len(q), 3)
    ref = plain_vigor(q, r, split)
    for k, v in ref.items():  # truth from the label (tile + offset) = the pano name's GPS to within 1 cm
        assert res[k] == pytest.approx(v, abs=0.01 if k.endswith("_m") else 1e-9), k
    assert res["metre_median_m"] > 0 and res["hit_rate"] >= res["R@1"]
    text = capsys.readouterr().out
    assert "| hit rate | median m | mean m | ≤10 m % | ≤25 m % | ≤50 m % |" in text
    assert f"{res['metre_median_m']:.2f}" in text
