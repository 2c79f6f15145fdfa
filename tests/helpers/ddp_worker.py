"""Worker for tests/test_ddp.py: one DDP training step on a fixed global batch (launched by torchrun).

Every rank builds the same tiny encoder and the same global batch of B pairs, takes its contiguous share
(``split_global_batch``), embeds it, and computes each loss on the *gathered* global batch (the loss gathers
with gradient). After ``backward`` DDP has averaged the gradients over ranks; rank 0 writes the losses and
gradients to ``--out`` (atomically) for comparison with one process on the whole batch. Without torchrun the
same code runs single-process (the gather is the identity). ``--device cuda`` puts rank r on ``cuda:r`` and
talks NCCL (the backend s4g-train uses on GPUs); the default is the CPU with gloo.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository (when run as a script)

from s4g_train import dist  # noqa: E402
from s4g_train.losses import LOSSES, make_loss  # noqa: E402

GLOBAL_B, D_IN, D_EMB = 8, 12, 6


class TinyEncoder(nn.Module):
    """One encoder shared by both views + a learnable logit scale (the S4GModel shape, in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(D_IN, 16), nn.GELU(), nn.Linear(16, D_EMB))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float64))

    def forward(self, g: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = nn.functional.normalize
        return f(self.model(g), dim=-1), f(self.model(a), dim=-1), self.logit_scale.exp()


def make_problem() -> tuple[TinyEncoder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyEncoder().double()
    gen = torch.Generator().manual_seed(1)
    ground = torch.randn(GLOBAL_B, D_IN, generator=gen, dtype=torch.float64)
    aerial = ground + 0.5 * torch.randn(GLOBAL_B, D_IN, generator=gen, dtype=torch.float64)
    return model, ground, aerial


def step(model: nn.Module, params: list[tuple[str, nn.Parameter]], ground: torch.Tensor, aerial: torch.Tensor,
         name: str) -> tuple[float, dict[str, np.ndarray]]:
    for _, p in params:
        p.grad = None
    ge, ae, scale = model(ground, aerial)
    loss = make_loss(name)(ge, ae, scale)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().cpu().numpy().copy() for n, p in params}


def run(out: Path | None, device: str = "cpu") -> dict[str, np.ndarray]:
    info = dist.init_distributed(use_cuda=device == "cuda")  # cuda: cuda:LOCAL_RANK and NCCL
    dev = info.device
    model, ground, aerial = make_problem()
    model, ground, aerial = model.to(dev), ground.to(dev), aerial.to(dev)
    params = list(model.named_parameters())
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    ids = dist.split_global_batch(np.arange(GLOBAL_B), info.rank, info.world_size)
    idx = torch.from_numpy(ids).to(dev)
    result: dict[str, np.ndarray] = {"world_size": np.array(info.world_size), "local_ids": ids}
    for name in LOSSES:
        loss, grads = step(net, params, ground[idx], aerial[idx], name)
        losses = torch.tensor([loss], dtype=torch.float64, device=dev)  # NCCL gathers device tensors
        if info.distributed:  # every rank must see the same (global-batch) loss
            parts = [torch.zeros_like(losses) for _ in range(info.world_size)]
            torch.distributed.all_gather(parts, losses)
            losses = torch.cat(parts)
        result[f"{name}/loss_per_rank"] = losses.cpu().numpy()
        for n, g in grads.items():
            result[f"{name}/grad/{n}"] = g
    if out is not None and dist.is_main():
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(tmp, **result)
        os.replace(tmp, out)
    dist.cleanup()
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    run(args.out, args.device)
