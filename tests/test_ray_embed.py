"""Distributed gallery build on a real local Ray (num_cpus=2): bit-identical to the single-process build,
resumable after a killed job, refuses a shard folder of another job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 's4g[cluster]')")
pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 's4g[cluster]')")

from helpers.gallery import MODEL, make_gallery  # noqa: E402
from s4g_engine.cli import index_main  # noqa: E402
from s4g_engine.errors import CorruptFileError, StateError  # noqa: E402
from s4g_engine.index import ReferenceIndex  # noqa: E402
from s4g_engine.shards import Manifest  # noqa: E402

N_TILES = 53  # not a multiple of the shard size: the last shard is short
#: Options shared by both builds; the encoder runtime is pinned (``auto`` calibrates per machine and batch size).
SINGLE = ["--batch-size", "4", "--index-backend", "exact", "--device", "cpu", "--backend", "onnxruntime"]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("gallery")
    tiles, csv_path = make_gallery(root, N_TILES, seed=5)
    ref = root / "single.npz"
    assert index_main(["build", "--model", str(MODEL), "--images", str(tiles), "--coords", str(csv_path),
                       "--out", str(ref), *SINGLE]) == 0
    return tiles, csv_path, ref


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    yield ray
    ray.shutdown()


def _args(tiles: Path, csv_path: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--model", str(MODEL), "--images", str(tiles), "--coords", str(csv_path), "--out", str(out),
            *SINGLE, "--ray", "--shard-size", "8", "--ray-actors", "2", *extra]


def _assert_same(a_path: Path, b_path: Path) -> None:
    a, b = ReferenceIndex.load(a_path), ReferenceIndex.load(b_path)
    assert a.fingerprint == b.fingerprint and len(a) == len(b) == N_TILES
    assert a._emb.dtype == b._emb.dtype == np.float32
    assert a._emb.tobytes() == b._emb.tobytes()  # bit-identical vectors
    assert np.array_equal(a.coords, b.coords) and list(a.ids) == list(b.ids)


@pytest.fixture(scope="module")
def ray_build(gallery, local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiles, csv_path, _ = gallery
    out = tmp_path_factory.mktemp("ray") / "ray.npz"
    assert index_main(_args(tiles, csv_path, out)) == 0
    return out


def test_ray_build_is_bit_identical_to_single_process(gallery, ray_build: Path) -> None:
    _assert_same(gallery[2], ray_build)
    man = Manifest.read(Path(f"{ray_build}.shards"))
    assert sorted(man.shards) == list(range(7)) and sum(e["rows"] for e in man.shards.values()) == N_TILES


def test_resume_recomputes_only_damaged_or_missing_shards(gallery, ray_build: Path, tmp_path: Path) -> None:
    tiles, csv_path, ref = gallery
    out = tmp_path / "ray.npz"
    shards = Path(f"{out}.shards")
    shutil.copytree(f"{ray_build}.shards", shards)
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet")}
    (shards / "shard-000002.parquet").write_bytes(b"damaged")
    (shards / "shard-000005.parquet").unlink()
    with pytest.raises(CorruptFileError, match="sha256"):
        list(Manifest.read(shards).iter_shards(7))
    assert index_main(_args(tiles, csv_path, out)) == 0
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet")}
    changed = sorted(n for n in after if before.get(n) != after[n])
    assert changed == ["shard-000002.parquet", "shard-000005.parquet"]  # the others were skipped
    _assert_same(ref, out)


def test_a_shard_folder_of_another_job_is_refused(gallery, ray_build: Path, tmp_path: Path, capsys) -> None:
    tiles, csv_path, _ = gallery
    out = tmp_path / "other.npz"
    args = _args(tiles, csv_path, out, "--shards", f"{ray_build}.shards")
    assert index_main(args[:-6] + ["--shard-size", "12", "--ray-actors", "2", "--shards", f"{ray_build}.shards"]) == 2
    assert "belongs to another build (differs in shard_size)" in capsys.readouterr().err
    with pytest.raises(StateError, match="another build"):
        Manifest.open(f"{ray_build}.shards", {"other": 1})
    assert not out.exists()


def test_killed_job_resumes_and_skips_finished_shards(gallery, local_ray, tmp_path: Path) -> None:
    """A real kill -9 of a running build, a driver joined to the running cluster with --address (the
    production path), then the same command again."""
    tiles, csv_path, ref = gallery
    out = tmp_path / "ray.npz"
    shards = Path(f"{out}.shards")
    cmd = [sys.executable, "-c",
           "import sys; from s4g_engine.cli import index_main; sys.exit(index_main(sys.argv[1:]))"]
    args = _args(tiles, csv_path, out)[:-2] + ["--ray-actors", "1", "--shard-size", "4"]
    address = local_ray.get_runtime_context().gcs_address
    proc = subprocess.Popen(cmd + args + ["--address", address], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    killed_after = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            man = shards / "manifest.json"
            if man.is_file():
                done = json.loads(man.read_text())["shards"]
                if len(done) >= 1:
                    killed_after = len(done)
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if killed_after is None:
        pytest.fail("the build finished (or failed) before a shard was recorded; could not kill it mid-run")
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet")}
    recorded = {e["file"] for e in json.loads((shards / "manifest.json").read_text())["shards"]}
    assert 1 <= len(recorded) < 14
    # Restart with the same arguments.
    assert index_main(args) == 0
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet")}
    assert all(after[n] == finished[n] for n in recorded)  # finished shards were not recomputed
    _assert_same(ref, out)
