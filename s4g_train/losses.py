"""Training losses (docs/METHOD.md §3): symmetric InfoNCE (the paper's default), one-directional InfoNCE, triplet with
in-batch hardest negatives, soft-margin triplet.

Every loss is ``loss_fn(ground_emb, aerial_emb, scale) -> scalar``: ``ground_emb`` and ``aerial_emb`` are the
L2-normalised (B, D) embeddings of B pairs (row i of each is pair i), ``scale`` the exponentiated logit scale
(a 0-d tensor). Under DDP the loss first gathers the embeddings of every rank with gradient
(:func:`s4g_train.dist.gather_with_grad`) so it sees the **global** batch — the negatives of Sample4Geo.

The triplet losses do not use ``scale``; they add ``0·scale`` so the temperature still takes part in the
graph (DDP would otherwise report an unused parameter).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from s4g_train import dist

log = logging.getLogger(__name__)

#: losses over a softmax of the batch (they take ``label_smoothing``; a collapsed run sits at ``ln B``)
SOFTMAX_LOSSES = ("infonce", "street2sat", "sat2street")
#: every ``train.loss`` name :func:`make_loss` knows
LOSSES = (*SOFTMAX_LOSSES, "triplet", "soft_triplet")
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check(ground: torch.Tensor, aerial: torch.Tensor) -> None:
    if ground.ndim != 2 or ground.shape != aerial.shape:
        raise ValueError(f"ground_emb and aerial_emb must both be (B, D) with equal shapes, got "
                         f"{tuple(ground.shape)} and {tuple(aerial.shape)}")
    if ground.shape[0] < 2:
        raise ValueError(f"a contrastive loss needs at least 2 pairs in the (global) batch, got {ground.shape[0]}")


class _PairLoss(nn.Module):
    """Common part: optional global gather, shape checks."""

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(self, ground_emb: torch.Tensor, aerial_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.gather and dist.world_size() > 1:
            ground_emb = dist.gather_with_grad(ground_emb)
            aerial_emb = dist.gather_with_grad(aerial_emb)
        _check(ground_emb, aerial_emb)
        return self.compute(ground_emb, aerial_emb, scale)

    def compute(self, g: torch.Tensor, a: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InfoNCE(_PairLoss):
    """``logits = scale · g @ aᵀ``; ``½·CE(logits, i) + ½·CE(logitsᵀ, i)`` with label smoothing (docs/METHOD.md §3).

    ``direction``: ``both`` (symmetric, default), ``street2sat`` (ground queries against aerial references:
    rows of ``logits``) or ``sat2street`` (aerial queries: rows of ``logitsᵀ``).
    """

    def __init__(self, label_smoothing: float = 0.1, direction: str = "both", gather: bool = True) -> None:
        super().__init__(gather)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if direction not in ("both", "street2sat", "sat2street"):
            raise ValueError(f"direction must be both | street2sat | sat2street, got {direction!r}")
        self.label_smoothing = label_smoothing
        self.direction = direction

    def compute(self, g: torch.Tensor, a: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        logits = scale * (g @ a.t())
        labels = torch.arange(g.shape[0], device=g.device)
        ce = lambda x: F.cross_entropy(x, labels, label_smoothing=self.label_smoothing)  # noqa: E731
        if self.direction == "street2sat":
            return ce(logits)
        if self.direction == "sat2street":
            return ce(logits.t())
        return 0.5 * (ce(logits) + ce(logits.t()))


def _sq_dist(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(B, B) squared Euclidean distances of unit vectors, ``2 − 2·cos`` (SAFA's distance)."""
    return 2.0 - 2.0 * (g @ a.t())


class Triplet(_PairLoss):
    """Hinge triplet loss on ``d = 2 − 2·cos``: ``relu(d_pos − d_neg + margin)``, both directions averaged.

    ``mining``: ``hardest`` (the in-batch hardest negative per anchor, the paper's ablation — it collapses)
    or ``all`` (mean over all in-batch negatives).
    """

    def __init__(self, margin: float = 1.0, mining: str = "hardest", gather: bool = True) -> None:
        super().__init__(gather)
        if mining not in ("hardest", "all"):
            raise ValueError(f"mining must be hardest | all, got {mining!r}")
        self.margin, self.mining = float(margin), mining

    def _term(self, dpos: torch.Tensor, dneg: torch.Tensor) -> torch.Tensor:
        return F.relu(dpos - dneg + self.margin)

    def compute(self, g: torch.Tensor, a: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        d = _sq_dist(g, a)
        b = d.shape[0]
        pos = d.diagonal()
        eye = torch.eye(b, dtype=torch.bool, device=d.device)
        losses = []
        for dd in (d, d.t()):  # rows: ground anchors vs aerial negatives; then aerial anchors vs ground
            if self.mining == "hardest":
                neg = dd.masked_fill(eye, float("inf")).min(dim=1).values
                losses.append(self._term(pos, neg).mean())
            else:
                t = self._term(pos[:, None], dd)
                losses.append(t.masked_fill(eye, 0.0).sum() / (b * (b - 1)))
        return 0.5 * (losses[0] + losses[1]) + 0.0 * scale


class SoftTriplet(Triplet):
    """Soft-margin triplet (SAFA): ``log(1 + exp(α·(d_pos − d_neg)))`` with ``d = 2 − 2·cos``, α = 10.

    Default ``mining="all"`` as SAFA (mean over the B·(B−1) negative pairs of each direction; SAFA's code
    also sums the B diagonal terms, log 2 each, into that mean — a quirk we leave out).
    """

    def __init__(self, alpha: float = 10.0, mining: str = "all", gather: bool = True) -> None:
        super().__init__(margin=0.0, mining=mining, gather=gather)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def _term(self, dpos: torch.Tensor, dneg: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.alpha * (dpos - dneg))  # = log(1 + exp(·)), overflow-safe


def make_loss(name: str, **kw: object) -> nn.Module:
    """A loss by name: ``infonce`` (label_smoothing=0.1), ``street2sat``, ``sat2street``, ``triplet``
    (margin=1.0, mining="hardest"), ``soft_triplet`` (alpha=10, mining="all"); ``gather=False`` disables the
    DDP all-gather (local-batch loss). Returns a module called as ``loss(ground_emb, aerial_emb, scale)``."""
    try:
        if name == "infonce":
            return InfoNCE(**kw)  # type: ignore[arg-type]
        if name in ("street2sat", "sat2street"):
            return InfoNCE(direction=name, **kw)  # type: ignore[arg-type]
        if name == "triplet":
            return Triplet(**kw)  # type: ignore[arg-type]
        if name == "soft_triplet":
            return SoftTriplet(**kw)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"bad options for loss {name!r}: {exc}") from exc
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
