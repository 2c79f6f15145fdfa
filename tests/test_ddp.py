"""2-process DDP (gloo, CPU) gives the same loss and gradients as 1 process on the same global batch.

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

from s4g_train.losses import LOSSES  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def test_two_gloo_ranks_equal_one_process(tmp_path):
    out = tmp_path / "rank0.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # gloo on CPU even where a GPU exists
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert out.is_file(), "rank 0 wrote no result file"
    ddp = dict(np.load(out))
    assert int(ddp["world_size"]) == 2
    np.testing.assert_array_equal(ddp["local_ids"], np.arange(4))  # rank 0 held the first half

    single = ddp_worker.run(None)  # same problem, one process, whole global batch
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
