"""topk_similarity / positive_ranks against plain NumPy float64 references, every SIMD level.

The ``simd`` fixture also turns off the size heuristic that sends small problems to the canonical scan,
so these small inputs run through the filter → certificate → canonical refinement (and its fallback).
Bit-exactness against the canonical kernel and the adversarial cases are in test_core_search_exact.py."""

from __future__ import annotations

import numpy as np
import pytest

from s4g_engine import _core, get_num_threads, positive_ranks, set_num_threads, topk_similarity

LEVELS = _core.available_simd_levels().split(",")


@pytest.fixture(params=LEVELS)
def simd(request: pytest.FixtureRequest):
    _core.set_simd_level(request.param)
    _core._set_search_tuning(canonical_ratio=0)  # small inputs too: filter + certificate, not the scan
    yield request.param
    _core._set_search_tuning(small_batch=3, canonical_ratio=10)
    _core.set_simd_level("auto")


@pytest.fixture
def threads():
    """Run with 3 threads so reference splits and the merge path are exercised on small inputs."""
    before = get_num_threads()
    set_num_threads(3)
    yield 3
    set_num_threads(before)


def ref_topk(q: np.ndarray, r: np.ndarray, k: int, exclude: np.ndarray | None = None):
    """float64 scores; order = score desc, index asc; excluded ids dropped; padding (-inf, -1)."""
    s = q.astype(np.float64) @ r.astype(np.float64).T
    nq, n = s.shape
    out_s = np.full((nq, k), -np.inf)
    out_i = np.full((nq, k), -1, np.int64)
    for a in range(nq):
        keep = np.ones(n, bool)
        if exclude is not None:
            ids = exclude[a][exclude[a] >= 0]
            keep[ids] = False
        idx = np.nonzero(keep)[0]
        order = idx[np.lexsort((idx, -s[a, idx]))][:k]
        out_s[a, : len(order)] = s[a, order]
        out_i[a, : len(order)] = order
    return out_s, out_i


def ref_ranks(q, r, pos, ignore=None):
    s = q.astype(np.float64) @ r.astype(np.float64).T
    p = s[np.arange(len(pos)), pos]
    above = s > p[:, None]
    if ignore is not None:
        for a in range(len(pos)):
            ids = ignore[a][ignore[a] >= 0]
            above[a, ids] = False
    return above.sum(1)


def int_data(rng, n, d, lo=-3, hi=4):
    """Small integers: float32 dot products are exact, so ties are real ties and comparisons are exact."""
    return rng.integers(lo, hi, (n, d)).astype(np.float32)


SHAPES = [(1, 1, 1, 1), (1, 1, 1, 3), (5, 7, 3, 7), (5, 7, 3, 10), (33, 50, 17, 5), (70, 200, 255, 8),
          (40, 130, 256, 1), (3, 300, 257, 20), (17, 90, 600, 4), (0, 10, 8, 3), (2, 0, 4, 2)]


@pytest.mark.parametrize("nq,n,d,k", SHAPES)
def test_topk_exact_on_integer_data(rng, simd, nq, n, d, k) -> None:
    q, r = int_data(rng, nq, d), int_data(rng, n, d)
    s, i = topk_similarity(q, r, k)
    rs, ri = ref_topk(q, r, k)
    assert s.shape == (nq, k) and i.shape == (nq, k) and s.dtype == np.float32 and i.dtype == np.int64
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs.astype(np.float32))


@pytest.mark.parametrize("nq,n,d,k", [(9, 1000, 64, 10), (64, 500, 300, 16), (1, 9000, 33, 7), (3, 20000, 20, 50)])
def test_topk_random_normal_close_to_float64(rng, simd, threads, nq, n, d, k) -> None:
    q = rng.standard_normal((nq, d)).astype(np.float32)
    r = rng.standard_normal((n, d)).astype(np.float32)
    s, i = topk_similarity(q, r, k)
    rs, ri = ref_topk(q, r, k)
    tol = 1e-5 * np.sqrt(d) * 4
    np.testing.assert_allclose(s, rs, atol=tol)
    # indices agree wherever the float64 scores are separated by more than the float32 error
    gap = np.abs(np.diff(np.concatenate([rs, rs[:, -1:] - 1], 1), axis=1)) > tol
    sep = gap & np.concatenate([np.ones((nq, 1), bool), gap[:, :-1]], 1)
    np.testing.assert_array_equal(i[sep], ri[sep])


def test_topk_ties_go_to_lower_index(rng, simd, threads) -> None:
    base = int_data(rng, 4, 40)
    r = np.concatenate([base[[2, 0, 2, 1, 3, 2, 0]], int_data(rng, 6000, 40) * 0.0], 0)  # many exact ties
    q = base[[2, 0]] * 3
    s, i = topk_similarity(q, r, 5)
    rs, ri = ref_topk(q, r, 5)
    np.testing.assert_array_equal(i, ri)
    assert list(i[0, :3]) == [0, 2, 5]


def test_topk_float16_refs(rng, simd) -> None:
    q = int_data(rng, 20, 70)
    r16 = int_data(rng, 300, 70).astype(np.float16)
    s, i = topk_similarity(q, r16, 9)
    rs, ri = ref_topk(q, r16.astype(np.float32), 9)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs.astype(np.float32))
    qn = rng.standard_normal((5, 64)).astype(np.float32)
    rn = rng.standard_normal((400, 64)).astype(np.float16)
    s, _ = topk_similarity(qn, rn, 3)
    np.testing.assert_allclose(s, ref_topk(qn, rn.astype(np.float64), 3)[0], atol=1e-4)


def test_topk_k_larger_than_n_pads(rng, simd) -> None:
    q, r = int_data(rng, 3, 5), int_data(rng, 4, 5)
    s, i = topk_similarity(q, r, 6)
    assert (i[:, 4:] == -1).all() and np.isneginf(s[:, 4:]).all()
    assert sorted(i[0, :4]) == [0, 1, 2, 3]


@pytest.mark.parametrize("nq,n,m", [(6, 50, 3), (40, 300, 8), (2, 9000, 5), (4, 5, 6)])
def test_topk_exclude(rng, simd, threads, nq, n, m) -> None:
    q, r = int_data(rng, nq, 16), int_data(rng, n, 16)
    ex = rng.integers(-1, n, (nq, m))
    ex[:, 0] = ex[:, -1]  # duplicates are fine
    k = min(10, n)
    s, i = topk_similarity(q, r, k, exclude=ex)
    rs, ri = ref_topk(q, r, k, ex)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs.astype(np.float32))
    for a in range(nq):
        assert not set(i[a][i[a] >= 0]) & set(ex[a][ex[a] >= 0])
    # 1-D exclude: one id per query
    s1, i1 = topk_similarity(q, r, k, exclude=ex[:, 1])
    np.testing.assert_array_equal(i1, ref_topk(q, r, k, ex[:, 1:2])[1])


def test_topk_non_contiguous_inputs(rng, simd) -> None:
    q = rng.standard_normal((30, 64)).astype(np.float32)
    wide = rng.standard_normal((500, 140)).astype(np.float32)
    r_rows = wide[:, 10:74]  # strided rows, contiguous within a row: used in place
    r_step = wide[::2, :64]
    q_f = np.asfortranarray(q)
    for qq, rr in ((q_f, r_rows), (q, r_step), (q[:, ::-1].copy()[:, ::-1], wide[:, :128:2][:, :64])):
        s, i = topk_similarity(qq, rr, 5)
        rs, ri = ref_topk(np.asarray(qq), np.asarray(rr), 5)
        np.testing.assert_allclose(s, rs, atol=1e-4)
        np.testing.assert_array_equal(i, ri)


@pytest.mark.parametrize("nq,n,d", [(1, 1, 1), (7, 30, 5), (50, 400, 129), (3, 9000, 16), (0, 5, 3), (65, 70, 300)])
def test_positive_ranks_exact(rng, simd, threads, nq, n, d) -> None:
    q, r = int_data(rng, nq, d, -2, 3), int_data(rng, n, d, -2, 3)  # many ties
    pos = rng.integers(0, n, nq)
    out = positive_ranks(q, r, pos)
    assert out.dtype == np.int64 and out.shape == (nq,)
    np.testing.assert_array_equal(out, ref_ranks(q, r, pos))


def test_positive_ranks_random_normal_and_self(rng, simd) -> None:
    """Embeddings against themselves: the positive's own score never counts (bit-identical scores)."""
    x = rng.standard_normal((300, 513)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = positive_ranks(x, x, np.arange(300))
    np.testing.assert_array_equal(out, np.zeros(300, np.int64))
    q = rng.standard_normal((40, 513)).astype(np.float32)
    pos = rng.integers(0, 300, 40)
    ref = q.astype(np.float64) @ x.astype(np.float64).T
    p = ref[np.arange(40), pos][:, None]
    lo, hi = (ref > p + 1e-4).sum(1), (ref > p - 1e-4).sum(1)
    got = positive_ranks(q, x, pos)
    assert ((lo <= got) & (got <= hi)).all()
    got16 = positive_ranks(q, x.astype(np.float16), pos)
    assert np.abs(got16 - got).max() <= 3


def test_positive_ranks_ignore(rng, simd, threads) -> None:
    nq, n = 30, 5000
    q, r = int_data(rng, nq, 12, -2, 3), int_data(rng, n, 12, -2, 3)
    pos = rng.integers(0, n, nq)
    ig = rng.integers(-1, n, (nq, 4))
    ig[:, 0] = pos  # the positive itself in the ignore list changes nothing
    ig[:, 1] = ig[:, 2]  # duplicates are counted once
    np.testing.assert_array_equal(positive_ranks(q, r, pos, ignore=ig), ref_ranks(q, r, pos, ig))
    # the top scorer of each query ignored → the rank drops by one when it was above the positive
    s = q.astype(np.float64) @ r.astype(np.float64).T
    best = np.argmax(s, 1)[:, None]
    np.testing.assert_array_equal(positive_ranks(q, r, pos, ignore=best), ref_ranks(q, r, pos, best))
    rh = r.astype(np.float16)
    np.testing.assert_array_equal(positive_ranks(q, rh, pos, ignore=ig), ref_ranks(q, r, pos, ig))


def test_ranks_agree_with_topk(rng) -> None:
    """rank < k  ⇔  the positive is among the top-k (same canonical scores, ties → lower index aside)."""
    q = rng.standard_normal((80, 96)).astype(np.float32)
    r = rng.standard_normal((2000, 96)).astype(np.float32)
    pos = rng.integers(0, 2000, 80)
    rank = positive_ranks(q, r, pos)
    s, i = topk_similarity(q, r, 20)
    for a in range(80):
        hit = np.nonzero(i[a] == pos[a])[0]
        if rank[a] < 20:
            assert hit.size and hit[0] == rank[a]
        else:
            assert hit.size == 0
