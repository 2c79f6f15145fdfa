"""Losses (docs/METHOD.md §3) against plain per-sample Python loops in float64: values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from s4g_train.losses import LOSSES, make_loss


def _inputs(b=7, d=5, seed=0, scale=14.3):
    gen = torch.Generator().manual_seed(seed)
    g = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1)
    a = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1)
    g.requires_grad_(True)
    a.requires_grad_(True)
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    return g, a, s


def _dot(x, y):
    return sum(x[t] * y[t] for t in range(x.shape[0]))


def loop_ce_row(logits_row, target, eps):
    """Cross-entropy of one row with label smoothing eps (torch's definition): (1−ε)·NLL + ε·mean_j(−log p_j)."""
    m = max(float(v.detach()) for v in logits_row)
    lse = m + torch.log(sum(torch.exp(v - m) for v in logits_row))
    logp = [v - lse for v in logits_row]
    n = len(logits_row)
    return -(1 - eps) * logp[target] - eps / n * sum(logp)


def loop_infonce(g, a, s, eps=0.1, direction="both"):
    b = g.shape[0]
    sim = [[s * _dot(g[i], a[j]) for j in range(b)] for i in range(b)]
    rows = sum(loop_ce_row(sim[i], i, eps) for i in range(b)) / b
    cols = sum(loop_ce_row([sim[j][i] for j in range(b)], i, eps) for i in range(b)) / b
    return {"both": (rows + cols) / 2, "street2sat": rows, "sat2street": cols}[direction]


def loop_triplet(g, a, term, mining):
    b = g.shape[0]
    d = [[2 - 2 * _dot(g[i], a[j]) for j in range(b)] for i in range(b)]
    out = 0.0
    for dd in (d, [[d[j][i] for j in range(b)] for i in range(b)]):
        tot = 0.0
        for i in range(b):
            negs = [dd[i][j] for j in range(b) if j != i]
            if mining == "hardest":
                tot = tot + term(dd[i][i] - min(negs, key=lambda t: float(t.detach()))) / b
            else:
                tot = tot + sum(term(dd[i][i] - x) for x in negs) / (b * (b - 1))
        out = out + tot / 2
    return out


def _grads(val, g, a, s):
    gs = torch.autograd.grad(val, [g, a, s], allow_unused=True)
    return [torch.zeros_like(x) if y is None else y for x, y in zip([g, a, s], gs)]


@pytest.mark.parametrize("name, kw, ref", [
    ("infonce", {}, lambda g, a, s: loop_infonce(g, a, s, 0.1, "both")),
    ("infonce", {"label_smoothing": 0.0}, lambda g, a, s: loop_infonce(g, a, s, 0.0, "both")),
    ("street2sat", {}, lambda g, a, s: loop_infonce(g, a, s, 0.1, "street2sat")),
    ("sat2street", {"label_smoothing": 0.2}, lambda g, a, s: loop_infonce(g, a, s, 0.2, "sat2street")),
    ("triplet", {}, lambda g, a, s: loop_triplet(g, a, lambda x: torch.relu(x + 1.0), "hardest")),
    ("triplet", {"margin": 0.3, "mining": "all"},
     lambda g, a, s: loop_triplet(g, a, lambda x: torch.relu(x + 0.3), "all")),
    ("soft_triplet", {}, lambda g, a, s: loop_triplet(g, a, lambda x: torch.log1p(torch.exp(10 * x)), "all")),
    ("soft_triplet", {"alpha": 3.0, "mining": "hardest"},
     lambda g, a, s: loop_triplet(g, a, lambda x: torch.log1p(torch.exp(3 * x)), "hardest")),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_loop(name, kw, ref, seed):
    g, a, s = _inputs(seed=seed)
    loss = make_loss(name, **kw)(g, a, s)
    want = ref(g, a, s)
    assert loss.ndim == 0
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    for x, y in zip(_grads(loss, g, a, s), _grads(want, g, a, s)):
        torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-10)


def test_label_smoothing_closed_form():
    # B = 2, orthogonal-ish pairs: logits [[s, 0], [0, s]] -> p_correct = e^s/(e^s+1)
    g = torch.eye(2, dtype=torch.float64)
    a = torch.eye(2, dtype=torch.float64)
    s = torch.tensor(3.0, dtype=torch.float64)
    eps = 0.1
    lp_t = 3.0 - math.log(math.exp(3.0) + 1)
    lp_o = 0.0 - math.log(math.exp(3.0) + 1)
    want = -(1 - eps) * lp_t - eps / 2 * (lp_t + lp_o)
    assert make_loss("infonce")(g, a, s).item() == pytest.approx(want, rel=1e-12)
    assert make_loss("infonce", label_smoothing=0.0)(g, a, s).item() == pytest.approx(-lp_t, rel=1e-12)


def test_directions_differ_and_average():
    g, a, s = _inputs(b=9, seed=3)
    both = make_loss("infonce")(g, a, s)
    s2a = make_loss("street2sat")(g, a, s)
    a2s = make_loss("sat2street")(g, a, s)
    assert abs(float((s2a - a2s).detach())) > 1e-6  # asymmetric batch: the directions are distinct losses
    torch.testing.assert_close(both, (s2a + a2s) / 2)
    # street2sat: ground queries over aerial references = CE over the rows of g @ a.T
    logits = s * g @ a.t()
    torch.testing.assert_close(s2a, torch.nn.functional.cross_entropy(logits, torch.arange(9), label_smoothing=0.1))


def test_perfect_alignment_is_low_and_scale_gets_gradient():
    g, _, s = _inputs(b=6, d=16, seed=4, scale=50.0)
    loss = make_loss("infonce", label_smoothing=0.0)(g, g.detach().clone(), s)
    assert loss.item() < 0.5
    for name in LOSSES:  # every loss keeps the temperature in the graph (DDP: no unused parameters)
        g, a, s = _inputs(seed=5)
        gs = torch.autograd.grad(make_loss(name)(g, a, s), s, allow_unused=True)[0]
        assert gs is not None


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("arcface")
    with pytest.raises(ValueError, match="bad options"):
        make_loss("infonce", margin=1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        make_loss("infonce", label_smoothing=1.5)
    with pytest.raises(ValueError, match="alpha"):
        make_loss("soft_triplet", alpha=0)
    g, a, s = _inputs()
    with pytest.raises(ValueError, match="equal shapes"):
        make_loss("infonce")(g, a[:3], s)
    with pytest.raises(ValueError, match="at least 2"):
        make_loss("infonce")(g[:1], a[:1], s)
