"""The filter → certificate → canonical refinement search is exact: identical ids and bit-identical scores
to the canonical kernel (``mode="canonical"``), on every SIMD level, both filter paths (packed tiles and
the small-batch dot product), float32 and float16 references — on fresh random data and on adversarial
inputs built so that the raw filter (``mode="filter"``, test-only, NOT exact) gets them wrong.

Each adversarial test asserts both halves: the certified result equals the canonical one, and the filter
alone differs from it on at least one of the cases (so the test can fail if the refinement were skipped).
"""

from __future__ import annotations

import numpy as np
import pytest

from s4g_engine import _core, get_num_threads, set_num_threads

LEVELS = _core.available_simd_levels().split(",")
PATHS = {"tiles": 0, "dot": 10**9}  # small_batch: 0 → packed tiles always, huge → dot product always


@pytest.fixture(params=LEVELS)
def simd(request: pytest.FixtureRequest):
    _core.set_simd_level(request.param)
    yield request.param
    _core._set_search_tuning(small_batch=3, canonical_ratio=10)
    _core.set_simd_level("auto")


@pytest.fixture(params=list(PATHS))
def path(request: pytest.FixtureRequest, simd: str):
    """Force one filter path; canonical_ratio=0: never the canonical scan by the size heuristic."""
    _core._set_search_tuning(small_batch=PATHS[request.param], canonical_ratio=0)
    return request.param


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def topk(q, r, k, mode, exclude=None):
    return _core._topk_similarity(q, r, k, exclude, mode)


def assert_same_topk(got, want) -> None:
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0].view(np.uint32), want[0].view(np.uint32))  # bit-identical


def differs(got, want) -> bool:
    return not np.array_equal(got[1], want[1])


# ---------------------------------------------------------------------------------------------------
# fresh random inputs
# ---------------------------------------------------------------------------------------------------
SHAPES = [(1, 500, 1025, 10), (5, 700, 1023, 7), (37, 600, 255, 12), (20, 300, 7, 5), (9, 200, 1, 3),
          (3, 64, 257, 64), (4, 50, 33, 80), (2, 1, 5, 4)]


@pytest.mark.parametrize("nq,n,d,k", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_topk_random_equals_canonical_and_float64(rng, path, nq, n, d, k, dtype) -> None:
    q, r = unit(rng, nq, d), unit(rng, n, d).astype(dtype)
    want = topk(q, r, k, "canonical")
    got = topk(q, r, k, "exact")
    assert_same_topk(got, want)
    # and the canonical scores are float32 roundings of the float64 products (error ≤ γ_d·‖q‖‖r‖)
    ref = q.astype(np.float64) @ r.astype(np.float64).T
    valid = got[1] >= 0
    exact64 = np.take_along_axis(ref, np.where(valid, got[1], 0), 1)
    assert np.all(np.abs(np.where(valid, got[0] - exact64, 0)) <= 2 * d * 2**-24)
    assert (valid.sum(1) == min(k, n)).all() and np.isneginf(got[0][~valid]).all()
    # and each reported score is the scalar canonical dot product of its pair, bit for bit
    qi, ri = np.nonzero(valid)[0], got[1][valid]
    np.testing.assert_array_equal(_core._pair_scores(q, r, qi, ri).view(np.uint32), got[0][valid].view(np.uint32))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_topk_random_exclude(rng, path, dtype) -> None:
    q, r = unit(rng, 30, 130), unit(rng, 900, 130).astype(dtype)
    want0 = topk(q, r, 6, "canonical")
    ex = np.concatenate([want0[1][:, :3], rng.integers(-1, 900, (30, 4))], 1)  # the best three are excluded
    want = topk(q, r, 6, "canonical", ex)
    assert_same_topk(topk(q, r, 6, "exact", ex), want)
    assert not any(np.isin(want0[1][a, :3], want[1][a]).any() for a in range(30))


# ---------------------------------------------------------------------------------------------------
# adversarial inputs
# ---------------------------------------------------------------------------------------------------
def near_duplicate_refs(rng, d: int, n_dup: int, step: float, scale: float, n_bg: int = 300):
    """One query and references whose top group are near-duplicates of one vector, their scores stepping
    by ≈ `step` (relative), in shuffled index order, among random background references."""
    q = unit(rng, 1, d)[0]
    b = 0.9 * q + 0.4 * unit(rng, 1, d)[0]
    offs = rng.permutation(n_dup).astype(np.float64) * step
    dup = (b[None, :].astype(np.float64) + offs[:, None] * q[None, :]).astype(np.float32)
    bg = 0.5 * unit(rng, n_bg, d)
    r = np.concatenate([dup, bg])[rng.permutation(n_dup + n_bg)]
    return (q[None, :] * scale).astype(np.float32), (r * scale).astype(np.float32)


CASES = [(d, step, scale) for d in (255, 1025) for step in (2.0**-18, 2.0**-24) for scale in (1.0, 1e-3, 1e3)]


@pytest.fixture
def one_thread():
    """Many tiny calls: one thread avoids OpenMP start-up waits on a busy machine (splits are tested above)."""
    before = get_num_threads()
    set_num_threads(1)
    yield
    set_num_threads(before)


def test_topk_near_duplicates_defeat_the_filter_not_the_search(rng, path, one_thread) -> None:
    fooled = 0
    for d, step, scale in CASES:
        q, r = near_duplicate_refs(rng, d, 40, step, scale)
        for k in (5, 17):
            want = topk(q, r, k, "canonical")
            assert_same_topk(topk(q, r, k, "exact"), want)
            fooled += differs(topk(q, r, k, "filter"), want)
    assert fooled > 0, "the raw filter got every near-duplicate case right: the test no longer tests anything"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_topk_exact_duplicates_fall_back_to_the_canonical_scan(rng, path, dtype) -> None:
    """More tied copies of the best reference than candidates kept per reference range, even on the
    retry with 4× the extra candidates: the certificate must fail twice, the canonical re-scan decides,
    ties go to the lowest indices."""
    d, n = 96, 1500
    q = unit(rng, 3, d)
    r = 0.3 * unit(rng, n, d)
    copies = rng.choice(n, 700, replace=False)
    r[copies] = q[0]  # query 0's best reference, 700 times
    r = r.astype(dtype)
    want = topk(q, r, 10, "canonical")
    got = topk(q, r, 10, "exact")
    stats = _core._search_stats()
    assert_same_topk(got, want)
    np.testing.assert_array_equal(got[1][0], np.sort(copies)[:10])
    assert stats["retried"] >= stats["fallback"] >= 1


@pytest.mark.parametrize("scale", [1e-19, 3e-13, 1e13])
def test_topk_extreme_scales(rng, path, scale) -> None:
    """Products in the subnormal range (flushed to zero by vdpbf16ps) and huge scores: still exact."""
    q, r = unit(rng, 4, 300) * np.float32(scale), unit(rng, 400, 300) * np.float32(scale)
    assert_same_topk(topk(q, r, 9, "exact"), topk(q, r, 9, "canonical"))


def test_filter_paths_are_chosen(rng, path) -> None:
    q, r = unit(rng, 12, 64), unit(rng, 300, 64)
    topk(q, r, 4, "exact")
    assert _core._search_stats()["path"] == ("dot" if path == "dot" else "filter")
    _core._set_search_tuning(canonical_ratio=10)
    topk(q, r, 4, "exact")
    assert _core._search_stats()["path"] == "canonical"  # (4 + 32)·10 ≥ 300: the scan is cheaper


# ---------------------------------------------------------------------------------------------------
# positive_ranks
# ---------------------------------------------------------------------------------------------------
def ranks(q, r, pos, mode, ignore=None):
    return _core._positive_ranks(q, r, np.asarray(pos, np.int64), ignore, mode)


@pytest.mark.parametrize("nq,n,d", [(1, 500, 1025), (40, 700, 1023), (33, 400, 255), (9, 300, 7), (5, 200, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ranks_random_equal_canonical(rng, simd, nq, n, d, dtype) -> None:
    q, r = unit(rng, nq, d), unit(rng, n, d).astype(dtype)
    pos = rng.integers(0, n, nq)
    ig = rng.integers(-1, n, (nq, 5))
    np.testing.assert_array_equal(ranks(q, r, pos, "exact"), ranks(q, r, pos, "canonical"))
    np.testing.assert_array_equal(ranks(q, r, pos, "exact", ig), ranks(q, r, pos, "canonical", ig))
    if d > 1:
        s = q.astype(np.float64) @ r.astype(np.float64).T
        p = s[np.arange(nq), pos][:, None]
        lo, hi = (s > p + 2 * d * 2**-24).sum(1), (s > p - 2 * d * 2**-24).sum(1)
        got = ranks(q, r, pos, "exact")
        assert ((lo <= got) & (got <= hi)).all()


def test_ranks_near_duplicates_of_the_positive(rng, simd, one_thread) -> None:
    """Near-copies of the positive scoring a few ulps (or 2⁻¹⁸) above and below it: the raw filter
    miscounts them, the certified count equals the canonical one."""
    fooled = 0
    for d, step, scale in CASES:
        q, r = near_duplicate_refs(rng, d, 41, step, scale)
        order = np.argsort(-(r.astype(np.float64) @ q[0].astype(np.float64)), kind="stable")
        pos = np.array([order[20]])  # the middle of the near-duplicate group
        want = ranks(q, r, pos, "canonical")
        np.testing.assert_array_equal(ranks(q, r, pos, "exact"), want)
        fooled += int(ranks(q, r, pos, "filter")[0] != want[0])
    assert fooled > 0, "the raw filter ranked every near-duplicate case right: the test no longer tests anything"


@pytest.mark.parametrize("scale", [1e-19, 1.0, 1e13])
def test_ranks_duplicates_and_scales(rng, simd, scale) -> None:
    d, n = 64, 300
    q = unit(rng, 6, d) * np.float32(scale)
    r = unit(rng, n, d) * np.float32(scale)
    r[rng.choice(n, 30, replace=False)] = r[7]  # 31 tied copies, one of them the positive
    pos = np.full(6, 7)
    np.testing.assert_array_equal(ranks(q, r, pos, "exact"), ranks(q, r, pos, "canonical"))
    x = unit(rng, 200, 1025)
    np.testing.assert_array_equal(ranks(x, x, np.arange(200), "exact"), np.zeros(200, np.int64))


def test_simd_level_from_environment() -> None:
    """S4G_SIMD picks the level at start-up (the other sessions' AVX2-only machines run that path)."""
    import subprocess
    import sys

    code = "from s4g_engine import _core; print(_core.simd_level())"
    for level in ("avx2", "generic"):
        if level not in LEVELS:
            continue
        out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "S4G_SIMD": level},
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == level
