"""Embedding shards and tile lists (no Ray needed): Parquet tile list = CSV tile list, a shard round-trips
bit for bit and is verified by its sha256, shard plans follow the batch boundaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 's4g[cluster]')")

from helpers.gallery import make_gallery  # noqa: E402
from s4g_engine.errors import CorruptFileError, InputError, MissingFileError  # noqa: E402
from s4g_engine.shards import Manifest, plan_shards, read_shard, read_tile_list, write_shard  # noqa: E402


def test_parquet_tile_list_reads_like_the_csv(tmp_path: Path) -> None:
    import csv

    import pyarrow.parquet as pq

    tiles, csv_path = make_gallery(tmp_path, 7, seed=1)
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    table = pa.table({"image": [r["image"] for r in rows], "latitude": [float(r["lat"]) for r in rows],
                      "lon": [float(r["lon"]) for r in rows], "id": [r["id"] for r in rows]})
    pq.write_table(table, tmp_path / "tiles.parquet")
    a = read_tile_list(csv_path, tiles)
    b = read_tile_list(tmp_path / "tiles.parquet", tiles)
    assert a[0] == b[0] and a[2] == b[2] and np.array_equal(a[1], b[1])
    pq.write_table(pa.table({"image": ["missing.png"], "lat": [1.0], "lon": [2.0]}), tmp_path / "bad.parquet")
    with pytest.raises(MissingFileError, match="missing.png"):
        read_tile_list(tmp_path / "bad.parquet", tiles)


def test_shard_round_trip_is_bit_exact_and_verified(tmp_path: Path, rng) -> None:
    v = rng.standard_normal((9, 33)).astype(np.float32)
    c = np.stack([rng.uniform(-90, 90, 9), rng.uniform(-180, 180, 9)], 1)
    ids = [f"tile/{i}.jpg" for i in range(9)]
    entry = {**write_shard(tmp_path, 3, v, c, ids), "start": 24, "stop": 33}
    got_v, got_c, got_ids = read_shard(tmp_path, entry, 33)
    assert got_v.tobytes() == v.tobytes() and np.array_equal(got_c, c) and got_ids == ids
    man = Manifest.open(tmp_path, {"embed_dim": 33})
    man.record(entry)
    assert man.finished([(0, 8), (8, 16), (16, 24), (24, 33)]) == {3}
    (tmp_path / entry["file"]).write_bytes(b"x" + (tmp_path / entry["file"]).read_bytes()[1:])
    with pytest.raises(CorruptFileError, match="sha256"):
        read_shard(tmp_path, entry, 33)
    assert Manifest.read(tmp_path).finished([(0, 8), (8, 16), (16, 24), (24, 33)]) == set()


def test_shard_plans_follow_batch_boundaries() -> None:
    assert plan_shards(10, 4, 2) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(InputError, match="multiple of the batch size"):
        plan_shards(10, 6, 4)
