"""s4g-eval and evaluate_split: metrics equal a plain full-matrix NumPy computation on the same embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s4g_engine.datasets import load_split
from s4g_train.checkpoint import load_model, model_payload, save_checkpoint
from s4g_train.config import build_config
from s4g_train.evaluate import evaluate_split, format_table, main, subset_split
from s4g_train.model import ModelConfig, S4GModel
from trainer_util import tiny_cvusa


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
