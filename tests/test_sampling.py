"""Batch builder (docs/METHOD.md §4), DSS mining, hardness and the batch schedule (``s4g_train.schedule``).

The builder is checked three ways: (1) equal to a plain set-based transcription of docs/METHOD.md §4 written
here (same randomness contract), (2) implementation-independent invariants on random neighbour tables, (3) hand
examples (first anchor, group substitution).
"""

from __future__ import annotations

import io
from collections import deque

import numpy as np
import pytest

from s4g_engine.errors import CorruptFileError, FormatError, StateError
from s4g_train.config import SamplingConfig
from s4g_train.sampling import (
    batch_hardness,
    build_batches,
    dss_neighbours,
    random_batches,
    representative_samples,
    semi_positive_forbidden,
)
from s4g_train.schedule import BatchSchedule


# ------------------------------------------------------------------------------------------- plain reference
def plain_build(nb, B, k, rng, groups=None, forbidden=None):
    """docs/METHOD.md §4 with Python sets; randomness as documented in build_batches."""
    n, K = nb.shape
    half, far_w = k // 2, K - k // 2
    forb = {i: set() for i in range(n)}
    if forbidden is not None:
        for i in range(n):
            for f in forbidden[i]:
                if f >= 0 and f != i:
                    forb[i].add(int(f))
                    forb[int(f)].add(i)
    perm = [int(x) for x in rng.permutation(n)]
    members = {}
    if groups is not None:
        for i in perm:
            members.setdefault(int(groups[i]), []).append(i)
    used, batches, cur = set(), [], []
    keys, key_i = np.empty((0, far_w), dtype=np.int64), 0

    def clash(c):
        if groups is not None and any(groups[x] == groups[c] for x in cur):
            return True
        return any(c in forb[x] for x in cur)

    def add(c):
        used.add(c)
        cur.append(c)
        if len(cur) == B:
            batches.append(np.array(cur))
            cur.clear()
            return True
        return False

    def anchor(a):
        nonlocal keys, key_i
        if add(a) or k == 0:
            return
        row = nb[a]
        if far_w > 0 and half > 0:
            if key_i >= len(keys):
                keys, key_i = np.argsort(rng.random((1024, far_w)), axis=1), 0
            far = row[half:][keys[key_i]]
            key_i += 1
            cand = list(row[:half]) + list(far[far >= 0][:half])
        else:
            cand = list(row[:half])
        for c in (int(x) for x in cand if x >= 0):
            if c in used:
                if groups is None or any(groups[x] == groups[c] for x in cur):
                    continue
                free = [m for m in members[int(groups[c])] if m not in used and not any(m in forb[x] for x in cur)]
                if not free:
                    continue
                c = free[0]
            elif clash(c):
                continue
            if add(c):
                return

    deferred, pos = deque(), 0
    while True:
        if deferred and not cur:
            for _ in range(len(deferred)):
                a = deferred.popleft()
                if a in used:
                    continue
                if clash(a):
                    deferred.append(a)
                    continue
                anchor(a)
        if pos < n:
            a = perm[pos]
            pos += 1
            if a in used:
                continue
            if clash(a):
                deferred.append(a)
            else:
                anchor(a)
            continue
        progress = False
        for _ in range(len(deferred)):
            a = deferred.popleft()
            if a in used:
                continue
            if clash(a):
                deferred.append(a)
                continue
            anchor(a)
            progress = True
        if not progress:
            break
    return batches


def random_table(rng, n, K, pad_frac=0.2):
    nb = np.stack([rng.choice(np.delete(np.arange(n), i), K, replace=False) for i in range(n)]).astype(np.int64)
    short = rng.random(n) < pad_frac  # some rows shorter (-1 padded at the end)
    for i in np.nonzero(short)[0]:
        nb[i, rng.integers(0, K):] = -1
    return nb


def knn_table(rng, n, K):
    pts = rng.random((n, 2))
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1)[:, :K].astype(np.int64), pts


CASES = [  # n, K, B, k, groups?, forbidden?
    (200, 16, 8, 4, False, False),
    (203, 10, 16, 10, False, False),
    (257, 12, 32, 6, True, False),
    (240, 8, 12, 8, False, True),
    (300, 16, 16, 8, True, True),
    (150, 6, 10, 0, True, True),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_plain_reference(case, seed):
    n, K, B, k, use_g, use_f = case
    rng = np.random.default_rng(100 + seed)
    nb = random_table(rng, n, K)
    groups = rng.integers(0, n // 2, n) if use_g else None
    forbidden = np.where(rng.random((n, 3)) < 0.5, rng.integers(0, n, (n, 3)), -1) if use_f else None
    got = build_batches(nb, B, k, np.random.default_rng(seed), groups=groups, forbidden=forbidden)
    want = plain_build(nb, B, k, np.random.default_rng(seed), groups, forbidden)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _check_invariants(nb, B, k, batches, anchors, groups=None, forbidden=None):
    n = nb.shape[0]
    half = k // 2
    flat = np.concatenate(batches) if batches else np.empty(0, np.int64)
    assert all(b.shape == (B,) and b.dtype == np.int64 for b in batches)
    assert len(np.unique(flat)) == flat.size, "an id appears twice in an epoch"
    forb = set()
    if forbidden is not None:
        for i in range(n):
            forb |= {(i, int(f)) for f in forbidden[i] if f >= 0 and f != i}
    seen = set()
    for b, am in zip(batches, anchors):
        assert am[0], "a batch starts with an anchor"
        if groups is not None:
            assert len(set(groups[b].tolist())) == B, "two samples of one group share a batch"
        bs = set(b.tolist())
        assert not any((x, y) in forb for x in bs for y in bs), "a forbidden pair shares a batch"
        # every neighbour segment belongs to its anchor's list (or to the group of a listed id)
        starts = list(np.nonzero(am)[0]) + [B]
        for s, e in zip(starts[:-1], starts[1:]):
            a, seg = int(b[s]), [int(x) for x in b[s + 1:e]]
            row = [int(x) for x in nb[a] if x >= 0]
            near = [int(x) for x in nb[a][:half] if x >= 0]
            listed = set(row) if groups is None else {int(g) for g in groups[row]}
            for x in seg:
                assert (x if groups is None else int(groups[x])) in listed
            assert len(seg) <= k
            if e < B and groups is None and forbidden is None:
                # a complete segment: the still-free nearest k/2 in order, then only far-range ids
                used_before = seen | set(b[:s + 1].tolist())
                free_near = [y for y in near if y not in used_before]
                assert seg[:len(free_near)] == free_near
                assert set(seg[len(free_near):]) <= {int(x) for x in nb[a][half:] if x >= 0}
        seen |= bs
    return flat


@pytest.mark.parametrize("seed", range(6))
def test_invariants_random_tables(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 400))
    K = int(rng.integers(2, 20))
    B = int(rng.integers(4, 40))
    k = int(2 * rng.integers(0, min(K, B - 1) // 2 + 1))
    nb = random_table(rng, n, K)
    batches, anchors = build_batches(nb, B, k, np.random.default_rng(seed), return_anchors=True)
    flat = _check_invariants(nb, B, k, batches, anchors)
    # full coverage without constraints: every id but the last partial batch
    assert len(batches) == n // B and flat.size == n - n % B


@pytest.mark.parametrize("seed", range(4))
def test_invariants_groups_forbidden(seed):
    rng = np.random.default_rng(50 + seed)
    n, K, B, k = 600, 16, 24, 8
    nb, _ = knn_table(rng, n, K)
    groups = rng.integers(0, 350, n)
    forbidden = np.where(rng.random((n, 4)) < 0.6, rng.integers(0, n, (n, 4)), -1)
    batches, anchors = build_batches(nb, B, k, np.random.default_rng(seed), groups=groups, forbidden=forbidden,
                                     return_anchors=True)
    flat = _check_invariants(nb, B, k, batches, anchors, groups, forbidden)
    # every unused id is consumed (no early stop): at most one partial batch plus a few clashing ids remain
    assert flat.size >= n - 2 * B


def test_first_anchor_takes_nearest_then_random_far():
    rng = np.random.default_rng(3)
    n, K, B, k = 500, 32, 64, 32
    nb, _ = knn_table(rng, n, K)
    batches, anchors = build_batches(nb, B, k, np.random.default_rng(7), return_anchors=True)
    b0 = batches[0]
    a = b0[0]
    assert a == np.random.default_rng(7).permutation(n)[0]
    np.testing.assert_array_equal(b0[1:17], nb[a, :16])  # nearest k/2, in order
    assert set(b0[17:33].tolist()) <= set(nb[a, 16:].tolist()) and len(set(b0[17:33].tolist())) == 16
    assert anchors[0][33] and not anchors[0][1:33].any()
    # k = K: all K neighbours, no random factor
    b = build_batches(nb, B, K, np.random.default_rng(7))[0]
    assert set(b[1:33].tolist()) == set(nb[a].tolist())


def test_group_substitution():
    # 40 samples; samples 0..9 are all in group 0 but only sample 0 is ever listed as a neighbour.
    n, B = 40, 4
    groups = np.concatenate([np.zeros(10, np.int64), np.arange(1, 31)])
    nb = np.full((n, 2), -1, dtype=np.int64)
    nb[:, 0] = 0
    nb[0, 0] = 15
    hits = 0
    for seed in range(20):
        batches, anchors = build_batches(nb, B, 2, np.random.default_rng(seed), groups=groups, return_anchors=True)
        for b, am in zip(batches, anchors):
            for j in range(1, B):
                if not am[j] and am[j - 1] and b[j - 1] >= 10:  # near neighbour of a non-group-0 anchor
                    assert b[j] < 10  # it can only be group 0: sample 0 or a substitute panorama of the tile
                    hits += int(b[j] != 0)
    assert hits > 20, "used neighbour 0 was never replaced by another member of its group"


def test_determinism_and_seed_dependence():
    rng = np.random.default_rng(0)
    nb = random_table(rng, 300, 12)
    a = build_batches(nb, 16, 8, np.random.default_rng(5))
    b = build_batches(nb, 16, 8, np.random.default_rng(5))
    c = build_batches(nb, 16, 8, np.random.default_rng(6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_random_batches():
    r = random_batches(103, 10, np.random.default_rng(0))
    flat = np.concatenate(r)
    assert len(r) == 10 and len(np.unique(flat)) == 100
    groups = np.arange(103) // 3
    r = random_batches(103, 10, np.random.default_rng(0), groups=groups)
    assert all(len(set(groups[b].tolist())) == 10 for b in r) and len(r) >= 9
    assert len(np.unique(np.concatenate(r))) == 10 * len(r)


@pytest.mark.parametrize("bad, match", [
    (dict(neighbours=np.zeros((10, 4), np.float32)), "integer"),
    (dict(neighbours=np.zeros(10, np.int64)), "2-D"),
    (dict(neighbours=np.full((10, 4), 10)), "outside"),
    (dict(neighbours=np.full((10, 4), -2)), "outside"),
    (dict(k=6), "exceeds the neighbour pool"),
    (dict(k=3), "even"),
    (dict(batch_size=1), "batch_size"),
    (dict(batch_size=11), "exceeds"),
    (dict(batch_size=4, k=4), "smaller than batch_size"),
    (dict(rng=0), "Generator"),
    (dict(groups=np.zeros(9, np.int64)), "groups"),
    (dict(groups=np.arange(10) % 4), "distinct groups"),
    (dict(forbidden=np.zeros((9, 2), np.int64)), "forbidden"),
    (dict(forbidden=np.full((10, 2), 99)), "outside"),
])
def test_bad_inputs(bad, match):
    kw = dict(neighbours=np.zeros((10, 4), np.int64), batch_size=5, k=2, rng=np.random.default_rng(0))
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        build_batches(kw.pop("neighbours"), kw.pop("batch_size"), kw.pop("k"), kw.pop("rng"), **kw)


def test_semi_positive_forbidden():
    rng = np.random.default_rng(1)
    n, m = 80, 30
    pos = rng.integers(0, m, n)
    semi = np.where(rng.random((n, 3)) < 0.8, rng.integers(0, m, (n, 3)), -1)
    out = semi_positive_forbidden(pos, semi)
    for i in range(n):
        want = sorted(j for j in range(n) for s in semi[i] if s >= 0 and pos[j] == s)
        assert sorted(x for x in out[i] if x >= 0) == want


def test_representative_samples():
    np.testing.assert_array_equal(representative_samples([2, 0, 2, 3], 5), [1, -1, 0, 3, -1])


def test_cvusa_size():
    """N = 35,532 (CVUSA train), K = 128, B = 128, k = 64 on a kNN-like table: every full batch is built, each
    id at most once (no timing here: speed targets belong in benchmarks, not tests)."""
    rng = np.random.default_rng(0)
    n = 35_532
    nb = (np.arange(n)[:, None] + rng.integers(1, 400, (n, 128))) % n  # local-ish neighbourhoods
    b = build_batches(nb, 128, 64, np.random.default_rng(1))
    assert len(b) == n // 128
    ids = np.concatenate(b)
    assert len(np.unique(ids)) == len(ids)


# ------------------------------------------------------------------------------------------------ DSS mining
def _core_available() -> bool:
    try:
        from s4g_engine import topk_similarity  # noqa: F401
    except ImportError:
        return False
    return True


needs_core = pytest.mark.skipif(not _core_available(), reason="s4g_engine.topk_similarity (compiled core) not built")


def plain_dss(g, a, pos, K, semi=None, rep=None):
    sim = g.astype(np.float64) @ a.astype(np.float64).T
    n, m = sim.shape
    if rep is None:
        rep = np.full(m, -1)
        for i in range(n - 1, -1, -1):
            rep[pos[i]] = i
    out = np.full((n, K), -1, dtype=np.int64)
    for i in range(n):
        bad = {int(pos[i])} | ({int(s) for s in semi[i] if s >= 0} if semi is not None else set())
        order = sorted((r for r in range(m) if r not in bad and rep[r] >= 0), key=lambda r: (-sim[i, r], r))
        ids = [int(rep[r]) for r in order[:K]]
        out[i, :len(ids)] = ids
    return out, sim


def _assert_same_lists(got, want, sim_rows):
    """Equal, except where two references' float64 scores are within float32 noise of each other."""
    for i in np.nonzero((got != want).any(axis=1))[0]:
        diff = np.nonzero(got[i] != want[i])[0]
        pytest.fail(f"row {i} differs at {diff[:5]}: {got[i][diff[:5]]} vs {want[i][diff[:5]]}") \
            if np.ptp(sim_rows[i]) > 1e-4 else None


@needs_core
@pytest.mark.parametrize("chunk", [7, 4096])
def test_dss_matches_float64_cvusa_like(chunk):
    rng = np.random.default_rng(4)
    n, d, K = 150, 24, 20
    a = rng.standard_normal((n, d)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    pos = rng.permutation(n)
    g = (a[pos] + 0.7 * rng.standard_normal((n, d))).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    got = dss_neighbours(g, a, pos, K, chunk=chunk)
    want, sim = plain_dss(g, a, pos, K)
    np.testing.assert_array_equal(got, want)
    assert not (got == np.arange(n)[:, None]).any(), "a sample lists itself"


@needs_core
def test_dss_matches_float64_vigor_like():
    rng = np.random.default_rng(5)
    n, m, d, K = 120, 90, 16, 30
    a = rng.standard_normal((m, d)).astype(np.float32)
    pos = rng.integers(0, 60, n)  # tiles 60..89 have no panorama; several panoramas per tile
    g = rng.standard_normal((n, d)).astype(np.float32)
    semi = np.where(rng.random((n, 3)) < 0.8, rng.integers(0, m, (n, 3)), -1)
    got = dss_neighbours(g, a, pos, K, semi_positives=semi)
    want, _ = plain_dss(g, a, pos, K, semi)
    np.testing.assert_array_equal(got, want)
    rep = representative_samples(pos, m)
    assert set(got[got >= 0].tolist()) <= set(rep[rep >= 0].tolist())


@needs_core
def test_dss_pads_when_too_few_references():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 8)).astype(np.float32)
    g = rng.standard_normal((5, 8)).astype(np.float32)
    got = dss_neighbours(g, a, np.arange(5), 7)
    want, _ = plain_dss(g, a, np.arange(5), 7)
    np.testing.assert_array_equal(got, want)
    assert (got[:, 4:] == -1).all()


@needs_core
def test_vigor_like_pipeline_dss_groups_semi_positives():
    """DSS lists over tiles → build_batches with tile groups and semi-positive exclusion (docs/METHOD.md §4,
    VIGOR)."""
    rng = np.random.default_rng(12)
    n_tiles, n, d = 150, 260, 16
    tiles = rng.standard_normal((n_tiles, d)).astype(np.float32)
    pos = rng.integers(0, n_tiles, n)
    semi = np.stack([rng.choice(np.delete(np.arange(n_tiles), p), 3, replace=False) for p in pos])
    ground = (tiles[pos] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    nb = dss_neighbours(ground, tiles, pos, 24, semi_positives=semi)
    forbidden = semi_positive_forbidden(pos, semi)
    batches, anchors = build_batches(nb, 16, 8, np.random.default_rng(0), groups=pos, forbidden=forbidden,
                                     return_anchors=True)
    flat = _check_invariants(nb, 16, 8, batches, anchors, pos, forbidden)
    assert flat.size >= n - 3 * 16
    for b in batches:  # no panorama meets a panorama of one of its semi-positive tiles
        tb = set(pos[b].tolist())
        assert not any(set(semi[i].tolist()) & tb for i in b)


def test_dss_bad_inputs():
    g = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="same d"):
        dss_neighbours(g, np.zeros((4, 2), np.float32), np.arange(4), 2)
    with pytest.raises(ValueError, match="one entry per ground"):
        dss_neighbours(g, g, np.arange(3), 2)
    with pytest.raises(ValueError, match="outside"):
        dss_neighbours(g, g, np.array([0, 1, 2, 9]), 2)
    with pytest.raises(ValueError, match="K must be"):
        dss_neighbours(g, g, np.arange(4), 0)


# ------------------------------------------------------------------------------------------------- hardness
def test_batch_hardness_matches_loops():
    rng = np.random.default_rng(8)
    n, d, B = 64, 8, 8
    g = rng.standard_normal((n, d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    a = rng.standard_normal((n, d))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    gps = np.column_stack([rng.uniform(40, 41, n), rng.uniform(-75, -74, n)])
    gps[3] = np.nan
    batches = random_batches(n, B, np.random.default_rng(0))
    h = batch_hardness(batches, g, a, gps)
    hard, alln, dist = [], [], []
    for b in batches:
        for i in b:
            sims = [g[i] @ a[j] for j in b if j != i]
            hard.append(max(sims))
            alln += sims
            if np.isfinite(gps[i]).all():
                ds = []
                for j in b:
                    if j != i and np.isfinite(gps[j]).all():
                        p1, p2 = np.radians(gps[i]), np.radians(gps[j])
                        x = (np.sin((p2[0] - p1[0]) / 2) ** 2
                             + np.cos(p1[0]) * np.cos(p2[0]) * np.sin((p2[1] - p1[1]) / 2) ** 2)
                        ds.append(2 * 6_371_004.0 * np.arcsin(np.sqrt(x)))
                dist.append(min(ds))
    assert h["hardness_sim"] == pytest.approx(np.mean(hard), abs=1e-5)
    assert h["hardness_sim_all"] == pytest.approx(np.mean(alln), abs=1e-5)
    assert h["hardness_gps_m"] == pytest.approx(np.mean(dist), rel=1e-6)


def test_gps_batches_are_harder_than_random():
    rng = np.random.default_rng(9)
    nb, pts = knn_table(rng, 800, 32)
    gps = np.column_stack([40 + pts[:, 0], -74 + pts[:, 1]])
    h_gps = batch_hardness(build_batches(nb, 32, 16, np.random.default_rng(0)), gps=gps)["hardness_gps_m"]
    h_rnd = batch_hardness(random_batches(800, 32, np.random.default_rng(0)), gps=gps)["hardness_gps_m"]
    assert h_gps < 0.5 * h_rnd


# -------------------------------------------------------------------------------------------- batch schedule
def make_schedule(strategy="gps+dss", n=96, B=12, seed=3, gps=None, positive=None, semi=None, **kw):
    cfg = SamplingConfig(strategy=strategy, k=4, K=8, **{"dss_every": 2, "dss_start_epoch": 2, **kw})
    return BatchSchedule(cfg, n=n, batch_size=B, steps_per_epoch=n // B - 1, seed=seed,
                         positive=np.arange(n) if positive is None else positive, semi_positives=semi, gps=gps)


def fake_embed(n, quality, positive=None, seed=0, d=16):
    """``embed(ids)`` as the trainer's: a fraction ``quality`` of the ground views equals its tile's view."""
    rng = np.random.default_rng(seed)
    positive = np.arange(n) if positive is None else positive
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    tiles = unit(rng.standard_normal((int(positive.max()) + 1, d)))
    ground = unit(rng.standard_normal((n, d)))
    good = rng.random(n) < quality
    ground[good] = tiles[positive[good]]

    def embed(ids):
        ids = np.arange(n) if ids is None else ids
        r_ids = np.unique(positive[ids])
        return ground[ids], tiles[r_ids], np.searchsorted(r_ids, positive[ids])
    return embed


def run_epochs(s, epochs, embed_for_epoch):
    """Drive a schedule like the trainer; returns per epoch (source, log fields, batches)."""
    out = []
    for e in range(1, epochs + 1):
        b = s.batches()
        for _ in range(len(b)):
            s.advance()
        src = s.source
        s.end_epoch()
        out.append((src, s.after_epoch(e, epochs, embed_for_epoch(e)), b))
    return out


@pytest.mark.skipif(not _core_available(), reason="compiled core not built")
def test_schedule_measured_start_and_refresh_cadence():
    n = 96
    gps, _ = knn_table(np.random.default_rng(0), n, 8)
    s = make_schedule(gps=gps, dss_start_r1=50.0, dss_mining_size=40)
    # the model is useless until epoch 3, then good: DSS starts after epoch 3, then every 2 epochs, not after 10
    hist = run_epochs(s, 10, lambda e: fake_embed(n, 0.0 if e < 3 else 1.0, seed=e))
    assert [h[0] for h in hist] == ["gps"] * 3 + ["dss"] * 7
    assert [e for e, h in enumerate(hist, 1) if "dss_refresh_s" in h[1]] == [3, 5, 7, 9]
    assert [e for e, h in enumerate(hist, 1) if "train_r1" in h[1]] == [2, 3]  # probed until competent
    assert hist[1][1]["train_r1"] < 20.0 and hist[2][1]["train_r1"] == 100.0 and hist[2][1]["train_r1_full"] == 100.0
    assert s.last_refresh == 9 and s.dss.shape == (n, 8)
    assert not (s.dss == np.arange(n)[:, None]).any()  # own pair never a neighbour
    # reference schedule (no measured start), dss only: random batches until the first lists
    d = make_schedule("dss", dss_every=4, dss_start_epoch=4)
    hist = run_epochs(d, 10, lambda e: fake_embed(n, 0.0, seed=e))
    assert [h[0] for h in hist] == ["random"] * 4 + ["dss"] * 6
    assert [e for e, h in enumerate(hist, 1) if "dss_refresh_s" in h[1]] == [4, 8]
    r = make_schedule("random")
    assert [h[0] for h in run_epochs(r, 3, lambda e: None)] == ["random"] * 3


def test_schedule_randomness_contract():
    """One generator seeded [seed, 7], consumed by each epoch's build in turn (the trainer's reference)."""
    n, B, seed = 96, 12, 5
    gps, _ = knn_table(np.random.default_rng(1), n, 8)
    s = make_schedule("gps", n=n, B=B, seed=seed, gps=gps)
    rng = np.random.default_rng([seed, 7])
    for _ in range(3):
        want = np.stack(build_batches(gps, B, 4, rng))[: n // B - 1]
        np.testing.assert_array_equal(s.batches(), want)
        s.end_epoch()
    r = make_schedule("random", n=n, B=B, seed=seed)
    rng = np.random.default_rng([seed, 7])
    np.testing.assert_array_equal(r.batches(), np.stack(random_batches(n, B, rng))[: n // B - 1])


@pytest.mark.skipif(not _core_available(), reason="compiled core not built")
def test_schedule_vigor_groups_and_semi_positives():
    n, m = 120, 60
    rng = np.random.default_rng(4)
    positive = np.arange(n) // 2  # two panoramas per tile
    semi = np.where(rng.random((n, 3)) < 0.7, rng.integers(0, m, (n, 3)), -1)
    semi[semi == positive[:, None]] = -1  # a tile is never its own semi-positive
    s = make_schedule("dss", n=n, B=10, positive=positive, semi=semi, dss_start_epoch=1)
    s.after_epoch(1, 3, fake_embed(n, 0.5, positive=positive))
    for i in range(n):  # listed samples: never the own tile, never a semi-positive tile
        tiles = positive[s.dss[i][s.dss[i] >= 0]]
        assert positive[i] not in tiles and not set(tiles) & set(semi[i][semi[i] >= 0])
    for b in s.batches():  # one panorama per tile per batch; no semi-positive pair in a batch
        assert len(set(positive[b])) == len(b)
        for i in b:
            assert not set(positive[b]) & set(semi[i][semi[i] >= 0])


def test_schedule_state_round_trip_and_refusals():
    torch = pytest.importorskip("torch")
    n = 96
    gps, _ = knn_table(np.random.default_rng(2), n, 8)
    s = make_schedule(gps=gps)
    s.batches()
    s.end_epoch()
    s.dss, s.dss_active, s.last_refresh = random_table(np.random.default_rng(3), n, 8), True, 1
    s.batches()
    s.advance()
    s.advance()  # mid-epoch
    buf = io.BytesIO()
    torch.save({"schedule": s.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["schedule"]

    t = make_schedule(gps=gps)
    t.load_state_dict(state)
    assert t.pos == 2 and t.mid_epoch and t.source == "dss" and t.last_refresh == 1
    np.testing.assert_array_equal(t.batches(), s.batches())
    s.end_epoch()
    t.end_epoch()
    np.testing.assert_array_equal(t.batches(), s.batches())  # the generator continues where it was

    bad = dict(state, dss=dict(state["dss"], data=b"\1" + state["dss"]["data"][1:]))
    with pytest.raises(CorruptFileError, match="crc32"):
        make_schedule(gps=gps).load_state_dict(bad)
    with pytest.raises(StateError, match="other settings.*'seed': \\(3, 4\\)"):
        make_schedule(gps=gps, seed=4).load_state_dict(state)
    with pytest.raises(StateError, match="GPS neighbour lists differ"):
        make_schedule(gps=np.roll(gps, 1, axis=0)).load_state_dict(state)
    with pytest.raises(FormatError, match="version"):
        make_schedule(gps=gps).load_state_dict(dict(state, version=1))

    # checkpoints written before this class: the trainer's tensors + the generator in train_state["rng"]
    u = make_schedule(gps=gps)
    to_t = lambda x: torch.from_numpy(np.frombuffer(x["data"], "<i8").reshape(x["shape"]).copy())  # noqa: E731
    u.load_legacy({"gps_nb": torch.from_numpy(gps), "dss_nb": to_t(state["dss"]), "dss_active": True,
                   "last_refresh": 1, "epoch_batches": to_t(state["batches"]), "batch_pos": 2}, state["rng"])
    assert u.state_dict() == state


def test_schedule_bad_config():
    with pytest.raises(ValueError, match="needs GPS neighbour lists"):
        make_schedule("gps")
    with pytest.raises(ValueError, match="expected one of"):
        make_schedule("hard")
