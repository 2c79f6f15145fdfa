"""Metrics (docs/METHOD.md §7) against plain full-matrix NumPy float64 references, with deliberate exact ties."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from s4g_engine.metrics import (
    average_precision,
    localisation_errors,
    metre_errors,
    ranks_to_metrics,
    retrieval_metrics,
    university_metrics,
)

R_EARTH = 6_371_004.0


def tied_embeddings(rng, q, n, d=8, dup_frac=0.3):
    """Small-integer embeddings (every dot product is exact in float32) with duplicated references, so
    many queries have references scoring *exactly* as their positive."""
    ref = rng.integers(-2, 3, (n, d)).astype(np.float32)
    dup = rng.random(n) < dup_frac
    ref[dup] = ref[rng.integers(0, n, dup.sum())]
    pos = rng.integers(0, n, q)
    qry = (ref[pos] + rng.integers(-1, 2, (q, d))).astype(np.float32)
    return qry, ref, pos


def plain_ranks(qry, ref, pos, ignore=None):
    sim = qry.astype(np.float64) @ ref.astype(np.float64).T
    out = []
    for i in range(len(qry)):
        higher = sim[i] > sim[i, pos[i]]
        if ignore is not None:
            for j in ignore[i]:
                if j >= 0:
                    higher[j] = False
        out.append(int(higher.sum()))
    return np.array(out), sim


@pytest.mark.parametrize("seed, q, n", [(0, 300, 250), (1, 80, 1000), (2, 50, 40)])
def test_retrieval_metrics_vs_full_matrix(seed, q, n):
    rng = np.random.default_rng(seed)
    qry, ref, pos = tied_embeddings(rng, q, n)
    ranks, sim = plain_ranks(qry, ref, pos)
    ties = sum(int((sim[i] == sim[i, pos[i]]).sum()) - 1 for i in range(q))
    assert ties > 0, "the test must contain exact ties"
    m = retrieval_metrics(qry, ref, pos)
    for k in (1, 5, 10):
        assert m[f"R@{k}"] == pytest.approx(100.0 * np.mean(ranks < k), abs=1e-12)
    assert m["R@1%"] == pytest.approx(100.0 * np.mean(ranks < n // 100), abs=1e-12)
    assert "hit_rate" not in m
    if n < 100:  # reference behaviour: threshold n // 100 = 0 → R@1% is 0
        assert m["R@1%"] == 0.0


def test_ties_favour_the_query():
    ref = np.array([[1, 0], [1, 0], [0, 1]], np.float32)  # refs 0 and 1 are identical
    qry = np.array([[1, 0], [1, 0]], np.float32)
    m = retrieval_metrics(qry, ref, np.array([0, 1]))
    assert m["R@1"] == 100.0  # strictly greater counts: the duplicate does not push the positive down


def test_hit_rate_masks_semi_positives():
    rng = np.random.default_rng(3)
    q, n = 200, 300
    qry, ref, pos = tied_embeddings(rng, q, n)
    semi = np.where(rng.random((q, 3)) < 0.8, rng.integers(0, n, (q, 3)), -1)
    semi[semi == pos[:, None]] = -1
    # make the mask matter: for 40 queries a semi-positive scores strictly above the positive
    for i in range(40):
        ref_i = semi[i, 0] if semi[i, 0] >= 0 else (pos[i] + 1) % n
        semi[i, 0] = ref_i
    ranks, sim = plain_ranks(qry, ref, pos)
    hit_ranks, _ = plain_ranks(qry, ref, pos, semi)
    m = retrieval_metrics(qry, ref, pos, semi)
    assert m["hit_rate"] == pytest.approx(100.0 * np.mean(hit_ranks < 1), abs=1e-12)
    assert m["R@1"] == pytest.approx(100.0 * np.mean(ranks < 1), abs=1e-12)  # R@k ignore the mask
    assert m["hit_rate"] >= m["R@1"]
    # hand case: only a semi-positive beats the positive → a hit, not an R@1
    r2 = np.array([[0.5, 0], [1, 0], [0, 1]], np.float32)
    m2 = retrieval_metrics(np.array([[1, 0]], np.float32), r2, np.array([0]), np.array([[1, -1, -1]]))
    assert m2["R@1"] == 0.0 and m2["hit_rate"] == 100.0


def test_ranks_to_metrics():
    m = ranks_to_metrics(np.array([0, 1, 4, 5, 9, 10, 99, 200]), 10_000)  # 1% threshold: rank < 100
    assert m == {"R@1": 12.5, "R@5": 37.5, "R@10": 62.5, "R@1%": 87.5}
    assert ranks_to_metrics(np.array([0, 0]), 99)["R@1%"] == 0.0  # ⌊99/100⌋ = 0, as the reference
    with pytest.raises(ValueError, match="1-D integer"):
        ranks_to_metrics(np.array([0.5]), 10)
    with pytest.raises(ValueError, match="n_refs"):
        ranks_to_metrics(np.array([0]), 0)
    with pytest.raises(ValueError, match="no queries"):
        ranks_to_metrics(np.array([], np.int64), 10)


def test_bad_inputs_reach_the_core_checks():
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((3, 4), np.float32), np.zeros((5, 3), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="semi_positives"):
        retrieval_metrics(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), np.arange(3), np.zeros((2, 3)))


def test_metre_errors():
    rng = np.random.default_rng(4)
    true = np.column_stack([rng.uniform(-60, 60, 500), rng.uniform(-180, 180, 500)])
    pred = true + rng.normal(0, 3e-4, true.shape)
    m = metre_errors(pred, true)
    errs = []
    for (la1, lo1), (la2, lo2) in zip(pred, true):
        p1, p2 = math.radians(la1), math.radians(la2)
        h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lo2 - lo1) / 2) ** 2
        errs.append(2 * R_EARTH * math.asin(math.sqrt(h)))
    errs = np.array(errs)
    assert m["median_m"] == pytest.approx(np.median(errs), rel=1e-9)
    assert m["mean_m"] == pytest.approx(np.mean(errs), rel=1e-9)
    for t in (10, 25, 50):
        assert m[f"acc@{t}m"] == pytest.approx(100 * np.mean(errs <= t))
    one_deg = metre_errors(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]]))["mean_m"]
    assert one_deg == pytest.approx(R_EARTH * math.pi / 180, rel=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        metre_errors(np.array([[np.nan, 0.0]]), np.array([[0.0, 0.0]]))
    with pytest.raises(ValueError, match="latitude first"):
        metre_errors(np.array([[0.0, 120.0]]), np.array([[120.0, 0.0]]))


def test_localisation_errors_use_top1_tile():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((50, 8)).astype(np.float32)
    qry = (ref[rng.integers(0, 50, 30)] + 0.8 * rng.standard_normal((30, 8))).astype(np.float32)
    ref_ll = np.column_stack([rng.uniform(41.8, 41.9, 50), rng.uniform(-87.7, -87.6, 50)])
    true_ll = ref_ll[rng.integers(0, 50, 30)] + rng.normal(0, 1e-4, (30, 2))
    top1 = np.argmax(qry.astype(np.float64) @ ref.astype(np.float64).T, axis=1)
    assert localisation_errors(qry, ref, ref_ll, true_ll) == pytest.approx(metre_errors(ref_ll[top1], true_ll))
    with pytest.raises(ValueError, match="ref_latlon"):
        localisation_errors(qry, ref, ref_ll[:10], true_ll)


# -------------------------------------------------------------------------- University-1652 AP (reference code)
def ref_compute_map(index, good_index, junk_index):
    """University-1652's compute_mAP, transcribed (NumPy instead of torch)."""
    ap = 0.0
    cmc = np.zeros(len(index), dtype=np.int64)
    if good_index.size == 0:
        cmc[0] = -1
        return ap, cmc
    mask = np.isin(index, junk_index, invert=True)
    index = index[mask]
    ngood = len(good_index)
    rows_good = np.argwhere(np.isin(index, good_index)).flatten()
    cmc[rows_good[0]:] = 1
    for i in range(ngood):
        d_recall = 1.0 / ngood
        precision = (i + 1) * 1.0 / (rows_good[i] + 1)
        old_precision = i * 1.0 / rows_good[i] if rows_good[i] != 0 else 1.0
        ap = ap + d_recall * (old_precision + precision) / 2
    return ap, cmc


def ref_university(qf, ql, gf, gl):
    cmc = np.zeros(len(gl), dtype=np.float64)
    ap = 0.0
    for i in range(len(ql)):
        score = gf.astype(np.float64) @ qf[i].astype(np.float64)
        index = np.argsort(score)[::-1]
        ap_tmp, cmc_tmp = ref_compute_map(index, np.argwhere(gl == ql[i]), np.argwhere(gl == -1))
        if cmc_tmp[0] == -1:
            continue
        cmc += cmc_tmp
        ap += ap_tmp
    cmc /= len(ql)
    return {"R@1": 100 * cmc[0], "R@5": 100 * cmc[4], "R@10": 100 * cmc[9],
            "R@1%": 100 * cmc[round(len(gl) * 0.01)], "AP": 100 * ap / len(ql)}


@pytest.mark.parametrize("seed, junk", [(0, False), (1, True)])
def test_average_precision_vs_reference(seed, junk):
    rng = np.random.default_rng(seed)
    n_cls, d = 60, 16
    centres = rng.standard_normal((n_cls, d))
    gl = np.repeat(np.arange(n_cls), rng.integers(1, 6, n_cls))
    gf = (centres[gl] + 1.2 * rng.standard_normal((len(gl), d))).astype(np.float32)
    ql = rng.integers(0, n_cls + 5, 120)  # classes >= n_cls have no match: count as 0 (reference)
    qf = (np.vstack([centres, rng.standard_normal((5, d))])[ql]
          + 1.2 * rng.standard_normal((120, d))).astype(np.float32)
    if junk:
        gl = gl.copy()
        gl[rng.random(len(gl)) < 0.1] = -1
    want = ref_university(qf, ql, gf, gl)
    got = university_metrics(qf, gf, ql, gl, max_block_bytes=4 * len(gl) * 7)  # several query blocks
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-4), key
    assert 0 < got["AP"] < 100 and 0 < got["R@1"] < 100
    assert average_precision(qf, gf, ql, gl) == pytest.approx(want["AP"], abs=1e-4)


def test_average_precision_ties_rank_true_matches_first():
    gf = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32)  # three items tie
    got = university_metrics(np.array([[1, 0]], np.float32), gf, np.array([7]), np.array([3, 7, 3, 7]))
    # true matches (items 1, 3) rank at positions 0 (tie won) and 3: AP = ½(1+1)/2 + ½(1/3 + 2/4)/2
    assert got["AP"] == pytest.approx(100 * (0.5 * 1.0 + 0.5 * (1 / 3 + 2 / 4) / 2))
    assert got["R@1"] == 100.0


def test_engine_metrics_do_not_import_torch():
    code = ("import sys, numpy as np\n"
            "from s4g_engine.metrics import retrieval_metrics, average_precision\n"
            "e = np.eye(4, dtype=np.float32)\n"
            "retrieval_metrics(e, e, np.arange(4), np.full((4, 3), -1))\n"
            "average_precision(e, e, np.arange(4), np.arange(4))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    # generous timeout: in an editable install the first import may rebuild the compiled core
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
