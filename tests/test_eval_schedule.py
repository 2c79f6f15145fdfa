"""The evaluation schedule and the delivered model: a validation split carved from the training data
(whole tiles, fixed by the seed), evaluation only at the end (eval.every=0), checkpoint selection on the
validation split, and today's paper protocol (best R@1 on the test split) still available."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import read_jsonl, tiny_args, tiny_cvusa
from s4g_engine.datasets import CrossViewSplit
from s4g_engine.errors import InputError
from s4g_train.checkpoint import load_checkpoint
from s4g_train.config import build_config, selection
from s4g_train.trainer import main
from s4g_train.valsplit import VAL_SPLIT_NAME, carve_validation


def _shared_tile_split(seed: int) -> CrossViewSplit:
    """VIGOR-like: 30 tiles, 50 queries, some tiles are the positive of several queries, semi-positives."""
    rng = np.random.default_rng(seed)
    n_ref, n_q = 30, 50
    pos = np.concatenate([np.arange(n_ref), rng.integers(0, n_ref, n_q - n_ref)])
    rng.shuffle(pos)
    semi = rng.integers(-1, n_ref, (n_q, 3))
    return CrossViewSplit(name="vigor-same", root="/x", split="train", queries=[f"q{i}.jpg" for i in range(n_q)],
                          references=[f"r{j}.png" for j in range(n_ref)], query_gps=rng.normal(size=(n_q, 2)),
                          reference_gps=rng.normal(size=(n_ref, 2)), positive=pos, semi_positives=semi,
                          offsets=rng.normal(size=(n_q, 4, 2)))


def test_validation_split_holds_out_whole_tiles_deterministically() -> None:
    sp = _shared_tile_split(0)
    train, val = carve_validation(sp, 8, seed=5)
    assert len(val.queries) >= 8 and len(train.queries) + len(val.queries) == len(sp.queries)
    assert val.split == VAL_SPLIT_NAME and train.split == "train"
    assert not set(train.references) & set(val.references)  # no held-out tile is a training positive
    assert len(train.references) + len(val.references) == len(sp.references)
    for part in (train, val):  # every pair still points at its own tile, GPS and offsets travel with it
        for i, q in enumerate(part.queries):
            j = sp.queries.index(q)
            assert part.references[part.positive[i]] == sp.references[sp.positive[j]]
            np.testing.assert_array_equal(part.query_gps[i], sp.query_gps[j])
            np.testing.assert_array_equal(part.offsets[i], sp.offsets[j])
            for s_new, s_old in zip(part.semi_positives[i], sp.semi_positives[j]):
                if s_new >= 0:
                    assert part.references[s_new] == sp.references[s_old]
                else:  # missing before, or the tile is in the other part
                    assert s_old < 0 or sp.references[s_old] not in part.references
        ref_idx = [sp.references.index(r) for r in part.references]
        np.testing.assert_array_equal(part.reference_gps, sp.reference_gps[ref_idx])
    again, other = carve_validation(sp, 8, seed=5)[1], carve_validation(sp, 8, seed=6)[1]
    assert again.queries == val.queries and other.queries != val.queries
    with pytest.raises(InputError, match="all 50"):
        carve_validation(sp, 50, seed=0)


def test_selection_resolution_and_config_errors() -> None:
    def sel(*kv: str) -> str:
        return selection(build_config("synthetic", None, [tuple(x.split("=", 1)) for x in kv]))  # type: ignore[misc]

    assert sel("eval.every=2", "data.val_from_train=0") == "best-test"  # the paper's protocol, as before
    assert sel("eval.every=0", "data.val_from_train=0") == "last"
    assert sel("eval.every=2", "data.val_from_train=100") == "best-val"
    assert sel("eval.every=2", "eval.select=last") == "last"
    with pytest.raises(ValueError, match="needs a validation split"):
        sel("eval.every=2", "eval.select=best-val")
    with pytest.raises(ValueError, match="eval.every=0"):
        sel("eval.every=0", "eval.select=best-test")
    with pytest.raises(ValueError, match="never evaluated"):
        sel("eval.every=0", "data.val_from_train=100")
    with pytest.raises(ValueError, match="eval.every=-1"):
        sel("eval.every=-1")


BASE = ["--set", "train.epochs=2", "--set", "sampling.strategy=gps"]


def test_evaluate_only_at_the_end_delivers_the_last_weights(tmp_path: Path) -> None:
    data = tiny_cvusa(tmp_path / "data")
    run = tmp_path / "run"
    assert main(tiny_args(data, run, *BASE, "--set", "eval.every=0")) == 0
    recs = read_jsonl(run / "metrics.jsonl")
    assert not [r for r in recs if r["event"] == "eval"]  # no evaluation during training
    final = [r for r in recs if r["event"] == "final"]
    assert len(final) == 1 and final[0]["split"] == "test"
    assert not (run / "checkpoints" / "best.pt").exists()
    fin, last = load_checkpoint(run / "checkpoints" / "final.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert fin["metrics"]["selection"] == "last" and fin["epoch"] == 2 and fin["metrics"]["R@1"] == final[0]["R@1"]
    for k, v in last["model"].items():
        assert torch.equal(v, fin["model"][k]), k


def test_checkpoint_selected_on_the_validation_split_then_test_once(tmp_path: Path) -> None:
    data = tiny_cvusa(tmp_path / "data", n_train=32)
    run = tmp_path / "run"
    assert main(tiny_args(data, run, *BASE, "--set", "eval.every=1", "--set", "data.val_from_train=8")) == 0
    recs = read_jsonl(run / "metrics.jsonl")
    evals = [r for r in recs if r["event"] == "eval"]
    assert [r["split"] for r in evals] == [VAL_SPLIT_NAME] * 2 and all(r["queries"] == 8 for r in evals)
    final = [r for r in recs if r["event"] == "final"]
    assert len(final) == 1 and final[0]["split"] == "test" and final[0]["queries"] == 10
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["metrics"]["selected_on"] == VAL_SPLIT_NAME
    assert best["metrics"]["R@1"] == max(r["R@1"] for r in evals)
    fin = load_checkpoint(run / "checkpoints" / "final.pt")
    assert fin["metrics"]["selection"] == "best-val" and fin["epoch"] == best["epoch"]
    for k, v in best["model"].items():
        assert torch.equal(v, fin["model"][k]), k
    ep = [r for r in recs if r["event"] == "epoch"]
    assert ep[-1]["step"] == 2 * (24 // 8)  # 32 − 8 held out = 24 training pairs, batches of 8
