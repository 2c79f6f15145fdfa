"""2-process DDP gives the same loss and gradients as 1 process on the same global batch: gloo on the CPU, and
NCCL with one GPU per rank where ≥ 2 GPUs are present (skipped with the reason otherwise).

Why they must be equal: every rank computes the loss on the gathered global batch; ``gather_with_grad``
all-reduces the gathered gradient in backward, so each rank holds W·∂L/∂x for its own slice, and DDP's
averaging over W ranks leaves exactly ∂L/∂θ — the single-process gradient (see ``s4g_train/dist.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)

from helpers import ddp_worker  # noqa: E402
from s4g_train.losses import LOSSES  # noqa: E402

WORKER = Path(ddp_worker.__file__).resolve()  # also run as a script, by torchrun


def _torchrun_two_ranks(tmp_path: Path, device: str) -> dict[str, np.ndarray]:
    """Run ddp_worker.py on 2 ranks (gloo on the CPU, or NCCL with one GPU per rank); rank 0's results."""
    out = tmp_path / "rank0.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even where a GPU exists
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), "--out", str(out), "--device", device]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert out.is_file(), "rank 0 wrote no result file"
    return dict(np.load(out))


def _check_equal_to_one_process(ddp: dict[str, np.ndarray], single: dict[str, np.ndarray]) -> None:
    assert int(ddp["world_size"]) == 2
    np.testing.assert_array_equal(ddp["local_ids"], np.arange(4))  # rank 0 held the first half
    assert int(single["world_size"]) == 1
    for name in LOSSES:
        per_rank = ddp[f"{name}/loss_per_rank"]
        assert per_rank.shape == (2,)
        np.testing.assert_allclose(per_rank, single[f"{name}/loss_per_rank"][0], rtol=1e-12, err_msg=name)
        keys = [k for k in single if k.startswith(f"{name}/grad/")]
        assert keys and set(keys) == {k for k in ddp if k.startswith(f"{name}/grad/")}
        for k in keys:
            np.testing.assert_allclose(ddp[k], single[k], rtol=1e-10, atol=1e-13, err_msg=k)
        # not vacuous: the encoder really receives gradient
        assert np.abs(single[f"{name}/grad/model.0.weight"]).max() > 1e-6


def test_two_gloo_ranks_equal_one_process(tmp_path):
    ddp = _torchrun_two_ranks(tmp_path, "cpu")
    _check_equal_to_one_process(ddp, ddp_worker.run(None))  # same problem, one process, whole global batch


def _nccl_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device: the NCCL variant needs 2 GPUs"
    if torch.cuda.device_count() < 2:
        return f"{torch.cuda.device_count()} CUDA device(s): the NCCL variant needs 2 GPUs (one per rank)"
    if not torch.distributed.is_nccl_available():
        return "this torch build has no NCCL"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_nccl_skip_reason() is not None, reason=str(_nccl_skip_reason()))
def test_two_nccl_ranks_equal_one_process(tmp_path):
    """The same check over NCCL, one GPU per rank (s4g-train's backend on GPUs), against one process on GPU 0."""
    ddp = _torchrun_two_ranks(tmp_path, "cuda")
    _check_equal_to_one_process(ddp, ddp_worker.run(None, "cuda"))
