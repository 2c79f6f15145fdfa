"""polar_transform / inverse_polar against plain NumPy float64 references of docs/METHOD.md §9."""

from __future__ import annotations

import numpy as np
import pytest

from s4g_engine import _core, get_num_threads, inverse_polar, polar_transform, set_num_threads

# uint8 with C ≤ 4 takes the AVX2 gather path unless the level is "generic" (the scalar path).
POLAR_LEVELS = [lv for lv in ("avx2", "generic") if lv in _core.available_simd_levels().split(",")]


@pytest.fixture(params=POLAR_LEVELS)
def polar_level(request: pytest.FixtureRequest):
    _core.set_simd_level(request.param)
    yield request.param
    _core.set_simd_level("auto")


def polar_ref(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """docs/METHOD.md §9 written out in float64: (A, A, C) → (h, w, C), bilinear, zero outside."""
    a = img.shape[0]
    x = img.astype(np.float64)
    i = np.arange(h, dtype=np.float64)[:, None]
    j = np.arange(w, dtype=np.float64)[None, :]
    r = (a / 2) * (h - 1 - i) / h
    th = 2 * np.pi * j / w
    row = a / 2 + r * np.cos(th)
    col = a / 2 - r * np.sin(th)
    r0, c0 = np.floor(row), np.floor(col)
    fr, fc = row - r0, col - c0
    out = np.zeros((h, w, img.shape[2]))
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr, cc = (r0 + dr).astype(np.int64), (c0 + dc).astype(np.int64)
            ok = (rr >= 0) & (rr < a) & (cc >= 0) & (cc < a)
            v = x[np.clip(rr, 0, a - 1), np.clip(cc, 0, a - 1)]
            out += np.where(ok, wr * wc, 0.0)[..., None] * v
    return out


def inverse_ref(p: np.ndarray, a: int, fill: float) -> np.ndarray:
    """docs/METHOD.md §9 inverse in float64: (H, W, C) → (a, a, C)."""
    h, w, c = p.shape
    row, col = np.meshgrid(np.arange(a, dtype=np.float64), np.arange(a, dtype=np.float64), indexing="ij")
    dr, dc = row - a / 2, a / 2 - col
    r = np.sqrt(dr**2 + dc**2)
    th = np.mod(np.arctan2(dc, dr), 2 * np.pi)
    i = h - 1 - r * h / (a / 2)
    j = np.mod(th * w / (2 * np.pi), w)
    inside = r < (a / 2) * (h - 1) / h
    i0, j0 = np.floor(i), np.floor(j)
    fi, fj = i - i0, j - j0
    out = np.zeros((a, a, c))
    for di, wi in ((0, 1 - fi), (1, fi)):
        for dj, wj in ((0, 1 - fj), (1, fj)):
            ii = (i0 + di).astype(np.int64)
            jj = np.mod(j0 + dj, w).astype(np.int64)
            ok = (ii >= 0) & (ii < h)
            out += np.where(ok, wi * wj, 0.0)[..., None] * p[np.clip(ii, 0, h - 1), jj]
    out[~inside] = fill
    return out


@pytest.mark.parametrize("a,h,w,c", [(1, 1, 1, 1), (1, 3, 5, 3), (2, 2, 4, 3), (7, 5, 9, 1), (32, 16, 64, 3),
                                     (33, 17, 50, 4), (64, 32, 128, 2), (40, 64, 32, 5)])
def test_polar_uint8_matches_reference(rng: np.random.Generator, polar_level: str, a: int, h: int, w: int,
                                       c: int) -> None:
    img = rng.integers(0, 256, (a, a, c), dtype=np.uint8)
    out = polar_transform(img, h, w)
    assert out.shape == (h, w, c) and out.dtype == np.float32
    np.testing.assert_allclose(out, polar_ref(img, h, w), atol=2e-3, rtol=1e-5)


@pytest.mark.parametrize("batch,threads", [(1, 2), (3, 2), (5, 1), (2, 3)])
@pytest.mark.parametrize("c", [1, 3, 4])
def test_polar_uint8_batches_and_threads(rng: np.random.Generator, polar_level: str, batch: int, threads: int,
                                         c: int) -> None:
    """Whole images per thread (with the next image prefetched) and images split across threads."""
    img = rng.integers(0, 256, (batch, 96, 96, c), dtype=np.uint8)
    before = get_num_threads()
    set_num_threads(threads)
    try:
        out = polar_transform(img, 40, 130, mean=[0.4] * c, std=[0.25] * c)
    finally:
        set_num_threads(before)
    for b in range(batch):
        np.testing.assert_allclose(out[b], (polar_ref(img[b], 40, 130) / 255 - 0.4) / 0.25, atol=1e-4)


def test_polar_batch_float_and_normalisation(rng: np.random.Generator) -> None:
    imgs = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    out = polar_transform(imgs, 12, 40, mean=mean, std=std)
    assert out.shape == (3, 12, 40, 3)
    for b in range(3):
        ref = (polar_ref(imgs[b], 12, 40) / 255 - mean) / std
        np.testing.assert_allclose(out[b], ref, atol=2e-4)
    f = rng.random((2, 24, 24, 3)).astype(np.float32)
    outf = polar_transform(f, 12, 40, mean=mean, std=std)
    for b in range(2):
        np.testing.assert_allclose(outf[b], (polar_ref(f[b], 12, 40) - mean) / std, atol=2e-5)
    # float16/float64 inputs are converted; non-contiguous inputs are copied
    np.testing.assert_allclose(polar_transform(f[0].astype(np.float64), 12, 40), polar_ref(f[0], 12, 40), atol=1e-5)
    big = rng.integers(0, 256, (24, 48, 6), dtype=np.uint8)
    view = big[:, ::2, ::2]
    np.testing.assert_allclose(polar_transform(view, 9, 21), polar_ref(np.ascontiguousarray(view), 9, 21), atol=2e-3)
    # empty batch
    assert polar_transform(np.zeros((0, 8, 8, 3), np.uint8), 4, 8).shape == (0, 4, 8, 3)


def test_polar_quadrant_convention() -> None:
    """South at column 0, west at W/4, north at W/2, east at 3W/4 (docs/METHOD.md §9)."""
    a, h, w = 64, 16, 64
    row, col = np.meshgrid(np.arange(a) - a / 2 + 0.5, np.arange(a) - a / 2 + 0.5, indexing="ij")
    img = np.zeros((a, a, 3), np.uint8)
    south, north = row > np.abs(col), -row > np.abs(col)
    west, east = -col > np.abs(row), col > np.abs(row)
    colours = {"south": (255, 0, 0), "west": (0, 255, 0), "north": (0, 0, 255), "east": (255, 255, 0)}
    for mask, name in ((south, "south"), (west, "west"), (north, "north"), (east, "east")):
        img[mask] = colours[name]
    out = polar_transform(img, h, w)
    for name, j in (("south", 0), ("west", w // 4), ("north", w // 2), ("east", 3 * w // 4)):
        np.testing.assert_allclose(out[: h // 2, j], np.tile(colours[name], (h // 2, 1)), atol=1e-3, err_msg=name)


def test_polar_matches_cv2_remap(rng: np.random.Generator) -> None:
    """The same convention through cv2.remap (x = column, y = row) — the easy porting error of docs/METHOD.md §9."""
    cv2 = pytest.importorskip("cv2")
    a, h, w = 96, 32, 128
    yy, xx = np.mgrid[0:a, 0:a].astype(np.float64)
    img = (127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint8)[..., None].repeat(3, 2)
    i = np.arange(h)[:, None]
    j = np.arange(w)[None, :]
    r = (a / 2) * (h - 1 - i) / h
    map_y = (a / 2 + r * np.cos(2 * np.pi * j / w)).astype(np.float32)
    map_x = (a / 2 - r * np.sin(2 * np.pi * j / w)).astype(np.float32)
    ref = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    assert np.abs(polar_transform(img, h, w) - ref.astype(np.float32)).max() <= 2.0


@pytest.mark.parametrize("hp,wp,c,a", [(1, 1, 1, 1), (4, 8, 1, 5), (16, 64, 3, 32), (9, 31, 2, 20), (32, 16, 1, 64)])
def test_inverse_polar_matches_reference(rng: np.random.Generator, hp: int, wp: int, c: int, a: int) -> None:
    p = rng.standard_normal((hp, wp, c)).astype(np.float32)
    out = inverse_polar(p, a, fill=-7.0)
    assert out.shape == (a, a, c) and out.dtype == np.float32
    np.testing.assert_allclose(out, inverse_ref(p.astype(np.float64), a, -7.0), atol=1e-5)
    out2 = inverse_polar(p[..., 0].astype(np.float64), (a, a))  # 2-D map, default NaN fill
    ref2 = inverse_ref(p[..., :1].astype(np.float64), a, np.nan)[..., 0]
    assert out2.shape == (a, a)
    np.testing.assert_array_equal(np.isnan(out2), np.isnan(ref2))
    np.testing.assert_allclose(out2[~np.isnan(ref2)], ref2[~np.isnan(ref2)], atol=1e-5)


def test_inverse_of_forward_is_identity_inside_circle() -> None:
    a, h, w = 128, 128, 512
    yy, xx = np.mgrid[0:a, 0:a].astype(np.float64)
    img = (0.5 + 0.25 * np.sin(xx / 11.0) + 0.2 * np.cos(yy / 7.0 + xx / 23.0)).astype(np.float32)[..., None]
    back = inverse_polar(polar_transform(img, h, w), a)
    r = np.hypot(yy - a / 2, xx - a / 2)
    inside = r < 0.95 * (a / 2) * (h - 1) / h
    assert not np.isnan(back[inside]).any()
    err = np.abs(back[..., 0] - img[..., 0])[inside]
    assert err.max() < 0.02 and err.mean() < 2e-3  # interpolation error only (range ≈ 0.9)
    assert np.isnan(back[r > a / 2]).all()


def test_polar_cache_reused() -> None:
    from s4g_engine import _core

    img = np.zeros((1, 10, 10, 1), np.uint8)
    polar_transform(img, 3, 7)
    n = _core.polar_cache_size()
    polar_transform(img, 3, 7)
    assert _core.polar_cache_size() == n >= 1
