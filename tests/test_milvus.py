"""The Milvus gallery backend on a real Milvus Lite file: round trip through s4g-index build / Localiser,
exact re-rank (canonical order and scores of the core), fingerprint refusal, unreachable server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 's4g[cluster]')")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 's4g[cluster]')")

from helpers.gallery import MODEL, make_gallery, make_queries  # noqa: E402
from s4g_engine.cli import index_main, localise_main  # noqa: E402
from s4g_engine.errors import ModelMismatchError, StateError  # noqa: E402
from s4g_engine.index import ReferenceIndex  # noqa: E402
from s4g_engine.localiser import Localiser  # noqa: E402
from s4g_engine.milvus_backend import MilvusIndex, MilvusUnavailableError, choose_index  # noqa: E402


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _gallery(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = _unit(rng, n, d)
    x[1::7] = x[0::7][: len(x[1::7])]  # exact duplicates: ties that must go to the lower row
    return x


def test_rerank_equals_the_exact_core_when_every_row_is_a_candidate(tmp_path: Path, rng) -> None:
    n, d, k = 400, 48, 10
    x = _gallery(rng, n, d)
    coords = np.stack([rng.uniform(-80, 80, n), rng.uniform(-170, 170, n)], 1)
    ids = [f"r{i}" for i in range(n)]
    mil = ReferenceIndex(d, backend="milvus", uri=str(tmp_path / "g.db"), fingerprint="fp-a", overfetch=64)
    assert isinstance(mil, MilvusIndex)
    mil.add(x[:150], coords[:150], ids[:150])
    mil.add(x[150:], coords[150:], ids[150:])
    mil.save()
    exact = ReferenceIndex(d, backend="exact")
    exact.add(x, coords, ids)
    q = np.concatenate([x[:5], _unit(rng, 20, d)])  # queries that tie with duplicates, and fresh ones
    s_m, i_m = mil.search(q, k)
    s_e, i_e = exact.search(q, k)
    assert np.array_equal(i_m, i_e) and s_m.tobytes() == s_e.tobytes()  # canonical order and scores, bit for bit
    ref = q.astype(np.float64) @ x.astype(np.float64).T  # float64 reference: the same ranking
    top = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    assert np.allclose(np.take_along_axis(ref, top, 1), s_m, atol=1e-5)
    c, got_ids = mil.lookup(i_m)
    assert np.array_equal(c, coords[i_m]) and got_ids == [[ids[j] for j in row] for row in i_m]


def test_overfetch_recall_and_canonical_order_on_a_larger_gallery(tmp_path: Path, rng) -> None:
    n, d, k = 3000, 32, 10
    x = _gallery(rng, n, d)
    mil = MilvusIndex.create(str(tmp_path / "g.db"), d, fingerprint="fp", index_type="HNSW")
    mil.add(x, np.zeros((n, 2)), None)
    mil.save()
    q = _unit(rng, 50, d)
    s_m, i_m = mil.search(q, k)
    exact = ReferenceIndex(d, backend="exact")
    exact.add(x, np.zeros((n, 2)))
    s_e, i_e = exact.search(q, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(i_m, i_e)])
    assert recall >= 0.9, recall
    for a, b, sa, sb in zip(i_m, i_e, s_m, s_e):
        if set(a) == set(b):  # the index proposed the true top-k: the answer is the exact one, bit for bit
            assert np.array_equal(a, b) and sa.tobytes() == sb.tobytes()
        assert np.all(np.diff(sa) <= 0)


def test_gallery_of_another_model_is_refused_and_an_unfinished_one_too(tmp_path: Path, rng) -> None:
    uri = str(tmp_path / "g.db")
    mil = MilvusIndex.create(uri, 16, fingerprint="model-A")
    mil.add(_unit(rng, 20, 16), np.zeros((20, 2)))
    with pytest.raises(StateError, match="unfinished"):
        MilvusIndex.open(uri, expected_fingerprint="model-A")
    mil.save()
    with pytest.raises(ModelMismatchError, match="model-A"):
        ReferenceIndex.load(uri, expected_fingerprint="model-B", expected_dim=16)
    with pytest.raises(ModelMismatchError, match="16-d"):
        MilvusIndex.open(uri, expected_fingerprint="model-A", expected_dim=32)
    with pytest.raises(StateError, match="already holds a gallery"):
        MilvusIndex.create(uri, 16, fingerprint="model-A")
    assert len(MilvusIndex.open(uri, expected_fingerprint="model-A", expected_dim=16)) == 20


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(MilvusUnavailableError, match="cannot open Milvus at 'http://127.0.0.1:9'"):
        MilvusIndex.open("http://127.0.0.1:9", timeout=3)


def test_index_choice_by_size() -> None:
    assert choose_index(10_000, 1024)[0] == "HNSW"
    kind, params = choose_index(5_000_000, 1024)
    assert kind == "IVF_PQ" and params["m"] == 128 and 1024 % params["m"] == 0
    assert choose_index(200_000_000, 256)[0] == "DISKANN"
    assert choose_index(10, 64, "FLAT") == ("FLAT", {})


def test_cli_build_and_localise_round_trip(tmp_path: Path, capsys) -> None:
    tiles, csv_path = make_gallery(tmp_path, 30, seed=9)
    uri, npz = str(tmp_path / "tiles.db"), tmp_path / "tiles.npz"
    common = ["--model", str(MODEL), "--images", str(tiles), "--coords", str(csv_path), "--device", "cpu",
              "--backend", "onnxruntime"]
    assert index_main(["build", *common, "--index-backend", "milvus", "--uri", uri]) == 0
    assert index_main(["build", *common, "--index-backend", "exact", "--out", str(npz)]) == 0
    queries = [str(p) for p in make_queries(tmp_path / "q", 4)]
    with Localiser.from_dir(MODEL, device="cpu", backend="onnxruntime") as loc:
        loc.load_index(npz)
        want = loc.localise(queries, k=5)
        assert loc.load_index(uri) == 30
        got = loc.localise(queries, k=5)
    assert got.ids == want.ids and np.array_equal(got.indices, want.indices)
    assert got.scores.tobytes() == want.scores.tobytes() and np.array_equal(got.coords, want.coords)
    capsys.readouterr()
    assert localise_main(["--model", str(MODEL), "--device", "cpu", "--index", uri, "--json", "--k", "3",
                          *queries[:1]]) == 0
    assert f'"id": "{want.ids[0][0]}"' in capsys.readouterr().out
