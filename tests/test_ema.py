"""EMA of the weights (s4g_train.ema): the update against a float64 reference on fresh random weights, its
state round trip, and a training run with ``train.ema_decay`` that resumes bit-identically and delivers the
EMA weights (evaluation, best.pt, final.pt) while last.pt keeps the raw ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import assert_same_state, read_jsonl, tiny_args, tiny_cvusa
from s4g_engine.errors import StateError
from s4g_train.checkpoint import load_checkpoint
from s4g_train.config import build_config
from s4g_train.ema import WeightEMA, restore_ema, warmup_decay
from s4g_train.trainer import main


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(5, 3)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("stat", torch.zeros(3))


def _randomise(m: Tiny, g: torch.Generator, step: int) -> None:
    with torch.no_grad():
        for t in (m.lin.weight, m.lin.bias, m.stat):
            t.copy_(torch.randn(t.shape, generator=g) * 3.0)
        m.count.fill_(step)


def test_warmup_decay_formula() -> None:
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 10) == pytest.approx(11 / 20)
    assert warmup_decay(0.9, 10**6) == 0.9  # capped by the configured decay
    assert all(warmup_decay(0.99, n) <= warmup_decay(0.99, n + 1) for n in range(500))


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_update_matches_a_float64_reference(decay: float) -> None:
    g = torch.Generator().manual_seed(int(decay * 1000))
    model = Tiny()
    _randomise(model, g, 0)
    ema = WeightEMA(model, decay)
    ref = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for n in range(60):
        _randomise(model, g, n + 1)
        d_used = ema.update(model)
        d = min(decay, (1.0 + n) / (10.0 + n))
        assert d_used == pytest.approx(d, abs=0.0)
        now = model.state_dict()
        ref = {k: d * v + (1.0 - d) * now[k].double() for k, v in ref.items()}
    got = ema.module.state_dict()
    for k, v in ref.items():
        np.testing.assert_allclose(got[k].double().numpy(), v.numpy(), rtol=1e-5, atol=1e-5, err_msg=k)
    assert int(got["count"]) == 60  # integer buffers are copied, not averaged
    assert ema.updates == 60
    # the average differs from the last weights (it is not a copy) and has no gradients
    assert not torch.allclose(got["lin.weight"], model.lin.weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_round_trip_continues_identically() -> None:
    g = torch.Generator().manual_seed(3)
    model = Tiny()
    a = WeightEMA(model, 0.95)
    for n in range(7):
        _randomise(model, g, n)
        a.update(model)
    b = WeightEMA(Tiny(), 0.95)
    b.load_state_dict(a.state_dict())
    for n in range(5):
        _randomise(model, g, 10 + n)
        assert a.update(model) == b.update(model)
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k]), k
    with pytest.raises(StateError, match="ema_decay"):
        WeightEMA(Tiny(), 0.9).load_state_dict(a.state_dict())
    with pytest.raises(StateError, match="no EMA"):
        restore_ema(a, None, "last.pt")
    with pytest.raises(StateError, match="an EMA"):
        restore_ema(None, a.state_dict(), "last.pt")


def test_bad_decay_is_refused() -> None:
    with pytest.raises(ValueError, match="train.ema_decay"):
        build_config("synthetic", None, [("train.ema_decay", "1.0")])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        WeightEMA(Tiny(), 0.0)


EMA = ["--set", "train.ema_decay=0.9", "--set", "train.epochs=3", "--set", "eval.every=1",
       "--set", "sampling.dss_start_epoch=1", "--set", "sampling.dss_every=1"]


def test_training_with_ema_resumes_bit_identically_and_delivers_the_ema(tmp_path: Path) -> None:
    data = tiny_cvusa(tmp_path / "data")
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(tiny_args(data, full, *EMA)) == 0
    assert main(tiny_args(data, split, *EMA, "--set", "train.stop_after_epochs=1")) == 0
    assert main(["--resume", str(split), "--set", "train.stop_after_epochs=null"]) == 0
    assert_same_state(full / "checkpoints" / "last.pt", split / "checkpoints" / "last.pt")
    last_a = load_checkpoint(full / "checkpoints" / "last.pt")
    last_b = load_checkpoint(split / "checkpoints" / "last.pt")
    ema_a, ema_b = last_a["train_state"]["ema"], last_b["train_state"]["ema"]
    assert ema_a["updates"] == ema_b["updates"] == last_a["train_state"]["step"] == 9
    for k, v in ema_a["weights"].items():
        assert torch.equal(v, ema_b["weights"][k]), k
    # last.pt: raw weights (≠ EMA); final.pt: the EMA weights of the best epoch, same in both runs
    assert any(not torch.equal(v, ema_a["weights"][k]) for k, v in last_a["model"].items())
    fa, fb = (load_checkpoint(r / "checkpoints" / "final.pt") for r in (full, split))
    assert fa["metrics"]["ema"] is True and fa["metrics"]["selection"] == "best-test"
    for k, v in fa["model"].items():
        assert torch.equal(v, fb["model"][k]), k
    best = load_checkpoint(full / "checkpoints" / "best.pt")
    if best["epoch"] == 3:  # the last epoch was best: best.pt holds the EMA as it was at the end
        for k, v in best["model"].items():
            assert torch.equal(v, ema_a["weights"][k]), k
    final_rec = [r for r in read_jsonl(full / "metrics.jsonl") if r["event"] == "final"]
    assert len(final_rec) == 1 and final_rec[0]["R@1"] == fa["metrics"]["R@1"]
    # switching the EMA off on resume is refused with the reason
    assert main(["--resume", str(split), "--set", "train.ema_decay=null"]) == 2
