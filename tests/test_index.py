"""Reference index backends against a plain NumPy float64 reference; save/load; corrupt files; bad input."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from s4g_engine.errors import (
    CorruptFileError,
    FormatError,
    InputError,
    MissingFileError,
    ModelMismatchError,
    StateError,
)
from s4g_engine.index import AUTO_FP16_MIN, AUTO_IVFPQ_MIN, ReferenceIndex, choose_backend, faiss_gpus

D = 48


def _unit(rng: np.random.Generator, n: int, d: int = D) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _coords(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.c_[rng.uniform(-60, 60, n), rng.uniform(-170, 170, n)]


def _reference_topk(q: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q.astype(np.float64) @ r.astype(np.float64).T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def _filled(backend: str, n: int = 3000, seed: int = 0, **kw) -> tuple[ReferenceIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = _unit(rng, n)
    idx = ReferenceIndex(D, backend=backend, fingerprint="fp-a", **kw)
    for s in range(0, n, 700):  # several adds
        idx.add(emb[s:s + 700], _coords(rng, len(emb[s:s + 700])))
    return idx, emb


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_exact_backends_match_numpy_float64(backend):
    idx, emb = _filled(backend)
    q = _unit(np.random.default_rng(1), 40)
    scores, ids = idx.search(q, 10)
    ref_s, ref_i = _reference_topk(q, emb, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == (40, 10)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_fp16_storage_is_close_to_exact():
    idx, emb = _filled("exact-fp16")
    q = _unit(np.random.default_rng(2), 40)
    scores, ids = idx.search(q, 10)
    ref_s, ref_i = _reference_topk(q, emb, 10)
    np.testing.assert_allclose(scores, ref_s, atol=3e-3)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref_i)])
    assert recall >= 0.95
    assert idx.bytes_per_reference() == 2 * D


def test_ivfpq_recall_and_memory_on_clustered_data():
    rng = np.random.default_rng(3)
    centres = _unit(rng, 64)
    emb = centres[rng.integers(0, 64, 12000)] + 0.35 * rng.standard_normal((12000, D)).astype(np.float32) / np.sqrt(D)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    idx = ReferenceIndex(D, backend="faiss-ivfpq", nprobe=16)
    idx.add(emb, _coords(rng, len(emb)))
    noise = 0.05 * rng.standard_normal((50, D)).astype(np.float32) / np.sqrt(D)
    q = emb[rng.choice(len(emb), 50, replace=False)] + noise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, ids = idx.search(q, 10)
    _, ref_i = _reference_topk(q, emb, 10)
    top1_in_10 = np.mean([b[0] in a for a, b in zip(ids, ref_i)])  # faiss' "1-recall@10"
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref_i)])  # "10-recall@10"
    assert top1_in_10 >= 0.9 and overlap >= 0.35, (top1_in_10, overlap)
    assert idx.bytes_per_reference() < 4 * D / 2  # much smaller than float32 storage


@pytest.mark.parametrize("backend", ["exact", "exact-fp16", "faiss-flat", "faiss-ivfpq"])
def test_save_load_round_trip(tmp_path, backend):
    idx, emb = _filled(backend)
    q = _unit(np.random.default_rng(4), 7)
    s1, i1 = idx.search(q, 5)
    path = tmp_path / "gallery.npz"
    idx.save(path)
    back = ReferenceIndex.load(path, expected_fingerprint="fp-a")
    s2, i2 = back.search(q, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    assert back.backend == backend and len(back) == len(idx) and back.ids == idx.ids
    np.testing.assert_array_equal(back.coords, idx.coords)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only: readable without pickle
        assert json.loads(bytes(z["meta"]))["fingerprint"] == "fp-a"
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.npz"]  # no temp files left behind


def test_fingerprint_mismatch_is_refused(tmp_path):
    idx, _ = _filled("exact", n=50)
    idx.save(tmp_path / "i.npz")
    with pytest.raises(ModelMismatchError, match="built by model 'fp-a'.*rebuild"):
        ReferenceIndex.load(tmp_path / "i.npz", expected_fingerprint="fp-b")


def test_corrupt_truncated_and_foreign_files(tmp_path):
    idx, _ = _filled("exact", n=200)
    good = tmp_path / "i.npz"
    idx.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside the embeddings: the zip CRC catches it
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    (tmp_path / "text.npz").write_text("not an index")
    for name in ("trunc.npz", "flip.npz"):
        with pytest.raises(CorruptFileError, match="corrupt or truncated"):
            ReferenceIndex.load(tmp_path / name)
    with pytest.raises(FormatError, match="not an s4g index.*a zip"):
        ReferenceIndex.load(tmp_path / "text.npz")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:
        z.writestr("meta.npy", b"")
    with pytest.raises(CorruptFileError):
        ReferenceIndex.load(tmp_path / "other.npz")
    np.savez(tmp_path / "foreign.npz", meta=np.frombuffer(b'{"format": "x", "version": 1}', dtype=np.uint8))
    with pytest.raises(FormatError, match="not an s4g index"):
        ReferenceIndex.load(tmp_path / "foreign.npz")
    with pytest.raises(MissingFileError, match="s4g-index build"):
        ReferenceIndex.load(tmp_path / "missing.npz")


def test_bad_input_errors():
    rng = np.random.default_rng(5)
    idx = ReferenceIndex(D, backend="exact")
    with pytest.raises(InputError, match="empty"):
        idx.search(_unit(rng, 1), 1)
    with pytest.raises(ValueError, match=r"shape \(n, 48\)"):
        idx.add(_unit(rng, 3, 10), _coords(rng, 3))
    bad = _coords(rng, 3)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        idx.add(_unit(rng, 3), bad)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        idx.add(_unit(rng, 3), _coords(rng, 2))
    with pytest.raises(ValueError, match="latitude"):
        idx.add(_unit(rng, 1), [[120.0, 10.0]])
    with pytest.raises(ValueError, match="ids"):
        idx.add(_unit(rng, 2), _coords(rng, 2), ids=["a"])
    nan_emb = _unit(rng, 2)
    nan_emb[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        idx.add(nan_emb, _coords(rng, 2))
    idx.add(_unit(rng, 4), _coords(rng, 4), ids=list("abcd"))
    with pytest.raises(ValueError, match="larger than the index"):
        idx.search(_unit(rng, 2), 5)
    with pytest.raises(ValueError, match="positive"):
        idx.search(_unit(rng, 2), 0)
    with pytest.raises(ValueError, match=r"\(Q, 48\)"):
        idx.search(_unit(rng, 2, 12), 1)
    with pytest.raises(ValueError, match="backend"):
        ReferenceIndex(D, backend="annoy")
    with pytest.raises(StateError, match="empty"):
        ReferenceIndex(D).save("/tmp/never-written.npz")
    with pytest.raises(InputError, match="single string 'ab'"):
        idx.add(_unit(rng, 2), _coords(rng, 2), ids="ab")


def test_auto_backend_by_gallery_size():
    assert choose_backend(AUTO_IVFPQ_MIN) == "faiss-ivfpq"
    if faiss_gpus() == 0:
        assert choose_backend(1000) == "exact"
        assert choose_backend(AUTO_FP16_MIN) == "exact-fp16"
    idx, _ = _filled("auto", n=100)
    idx.search(_unit(np.random.default_rng(0), 1), 1)
    assert idx.backend == choose_backend(100)


def test_adding_after_search_extends_the_index():
    idx, emb = _filled("exact", n=100)
    rng = np.random.default_rng(9)
    idx.search(emb[:1], 1)
    more = _unit(rng, 10)
    idx.add(more, _coords(rng, 10), ids=[f"new{i}" for i in range(10)])
    _, i = idx.search(more[3:4], 1)
    assert i[0, 0] == 103 and idx.ids[103] == "new3"
