"""Distributed helpers for ``torchrun`` (DDP): process-group setup/teardown, the global-batch gather with
gradient, and the split of a constructed global batch across ranks.

Gradient bookkeeping (why :func:`gather_with_grad` all-reduces in backward)
----------------------------------------------------------------------------
Every rank computes the *same* loss ``L`` on the gathered global batch. The forward output holds this rank's
own tensor in its slice (so gradient flows into the local encoder pass); in backward the incoming gradient of
the gathered tensor is summed over ranks and the local slice returned, i.e. rank ``r`` receives
``Σ_ranks ∂L/∂x_r = W·∂L/∂x_r``. DDP then *averages* parameter gradients over the W ranks:
``(1/W)·Σ_r W·∂L/∂θ|_r = ∂L/∂θ`` — exactly the single-process gradient on the whole global batch, for the
encoder and for the logit scale alike (the scale's gradient ``∂L/∂s`` is already complete on every rank).
open_clip's default (local tensor in place, no reduction in backward) would give ``∂L/∂θ / W`` for the
encoder but the full ``∂L/∂s`` for the scale; the all-reduce keeps both equal to the 1-process values.
``tests/test_ddp.py`` checks this with 2 gloo processes.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``distributed`` is False for a plain single-process run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    distributed: bool


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from exc


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0,
                     use_cuda: bool | None = None) -> DistInfo:
    """Set up the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``). Without it (or with ``WORLD_SIZE=1``) nothing is initialised.
    This is the one place that reads that environment: everything else takes the returned :class:`DistInfo`.

    ``use_cuda`` (default: whether CUDA is available) picks the device: ``cuda:LOCAL_RANK`` (made current)
    or ``cpu``. Backend: ``nccl`` with CUDA, else ``gloo`` (override with ``backend``).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank_ = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() if use_cuda is None else bool(use_cuda)
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible; "
                             "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if world <= 1:
        return DistInfo(0, 1, 0, device, None, False)
    if not 0 <= rank_ < world:
        raise ValueError(f"RANK={rank_} outside [0, WORLD_SIZE={world})")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank_, world_size=world,
                                 timeout=datetime.timedelta(seconds=timeout_s))
    log.info("distributed: rank %d/%d (local %d) on %s via %s", rank_, world, local, device, backend)
    return DistInfo(rank_, world, local, device, backend, True)


def init_for_device(device: str) -> DistInfo:
    """The process group of a run configured with ``train.device=device``: gloo when it is ``cpu`` (even on a
    GPU machine), else on CUDA where it is available (:func:`init_distributed`)."""
    return init_distributed(use_cuda=device != "cpu" and torch.cuda.is_available())


def cleanup() -> None:
    """Tear the process group down: a barrier first — with gloo a rank may otherwise abort at exit while
    another still talks to it."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose output keeps the local tensor in its slice; backward = all-reduce(sum), local slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        w, r = tdist.get_world_size(), tdist.get_rank()
        parts = [torch.empty_like(x) for _ in range(w)]
        tdist.all_gather(parts, x.contiguous())
        parts[r] = x  # the local values, exactly (all_gather returned a copy)
        ctx.rank, ctx.n = r, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) per rank → (W·b, ...) in rank order, differentiable (see the module docstring for why the
    backward all-reduces). Every rank must pass the same local batch size. Identity without a process group."""
    if world_size() == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    tdist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    if len({int(s.item()) for s in sizes}) != 1:
        raise ValueError(f"gather_with_grad needs equal local batch sizes on every rank, got "
                         f"{[int(s.item()) for s in sizes]}; split the global batch with split_global_batch")
    return _GatherWithGrad.apply(x)


def split_global_batch(ids: np.ndarray, rank_: int, world: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (so the gathered order equals the global order)."""
    ids = np.asarray(ids)
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank_}, world={world}")
    if ids.ndim != 1 or ids.shape[0] % world:
        raise ValueError(f"a global batch of {ids.shape} ids cannot be split evenly over {world} ranks; use a "
                         f"batch size divisible by the number of processes")
    per = ids.shape[0] // world
    return ids[rank_ * per:(rank_ + 1) * per]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s Python object on every rank (e.g. a DSS table mined on rank 0). Identity when alone."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
