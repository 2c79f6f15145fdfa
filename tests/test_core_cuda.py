"""CUDA kernels against the CPU kernels (the reference): identical top-k indices and bit-identical scores
(both follow the canonical dot product), identical ranks, polar maps to float32 interpolation error.
Skipped with a reason when no GPU, no CUDA build, or neither CuPy nor torch.cuda is available."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import s4g_engine as s4g

pytestmark = pytest.mark.gpu


def _gpu_reason() -> str | None:
    try:
        from s4g_engine import _core_cuda  # type: ignore[attr-defined]
    except ImportError as e:
        return f"s4g_engine._core_cuda not built ({e})"
    return None if _core_cuda.device_count() > 0 else "no CUDA device present"


def _backends() -> list[Any]:
    reason = _gpu_reason()  # decided before importing torch/CuPy (slow imports, pointless without a GPU)
    if reason:
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    out = []
    try:
        import cupy  # noqa: F401

        out.append(pytest.param("cupy", id="cupy"))
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            out.append(pytest.param("torch", id="torch"))
    except ImportError:
        pass
    return out or [pytest.param(None, marks=pytest.mark.skip(reason="neither CuPy nor torch.cuda is available"))]


@pytest.fixture(params=_backends())
def dev(request: pytest.FixtureRequest) -> tuple[Callable[[np.ndarray], Any], Callable[[Any], np.ndarray]]:
    request.getfixturevalue("cuda_device")  # skips with the reason when no GPU / no CUDA build
    if request.param == "cupy":
        import cupy

        return cupy.asarray, cupy.asnumpy
    import torch

    return (lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()), (lambda t: t.cpu().numpy())


def test_cuda_module_reports_devices(cuda_device: int) -> None:
    info = s4g.build_info()["cuda"]
    assert info["compiled"] and info["module"] and len(info["devices"]) >= 1


@pytest.mark.parametrize("nq,n,d,k", [(1, 1, 1, 1), (5, 7, 3, 10), (70, 1000, 257, 8), (300, 5000, 64, 20),
                                      (0, 5, 4, 3)])
@pytest.mark.parametrize("half", [False, True])
def test_topk_cuda_equals_cpu(dev, nq: int, n: int, d: int, k: int, half: bool) -> None:
    to, back = dev
    rng = np.random.default_rng(nq * 1000 + n)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    r = rng.standard_normal((n, d)).astype(np.float16 if half else np.float32)
    ex = rng.integers(-1, n, (nq, 3))
    s_cpu, i_cpu = s4g.topk_similarity(q, r, k, exclude=ex)
    s_gpu, i_gpu = s4g.topk_similarity(to(q), to(r), k, exclude=ex)
    np.testing.assert_array_equal(back(i_gpu), i_cpu)
    np.testing.assert_array_equal(back(s_gpu), s_cpu)  # canonical order: bit-identical


def test_topk_cuda_ties_and_padding(dev) -> None:
    to, back = dev
    rng = np.random.default_rng(3)
    base = rng.integers(-3, 4, (4, 16)).astype(np.float32)
    r = base[[2, 0, 2, 1, 3, 2]]
    s, i = s4g.topk_similarity(to(base[[2]]), to(r), 8)
    assert list(back(i)[0, :3]) == [0, 2, 5] and (back(i)[0, 6:] == -1).all() and np.isneginf(back(s)[0, 6:]).all()


@pytest.mark.parametrize("nq,n,d", [(1, 1, 1), (50, 3000, 129), (200, 70000, 32)])
def test_positive_ranks_cuda_equals_cpu(dev, nq: int, n: int, d: int) -> None:
    to, back = dev
    rng = np.random.default_rng(n)
    q = rng.integers(-2, 3, (nq, d)).astype(np.float32)
    r = rng.integers(-2, 3, (n, d)).astype(np.float32)
    pos = rng.integers(0, n, nq)
    ig = rng.integers(-1, n, (nq, 3))
    for ignore in (None, ig):
        cpu = s4g.positive_ranks(q, r, pos, ignore=ignore)
        gpu = s4g.positive_ranks(to(q), to(r), pos, ignore=ignore)
        np.testing.assert_array_equal(back(gpu), cpu)
    x = rng.standard_normal((300, 77)).astype(np.float32)
    assert (back(s4g.positive_ranks(to(x), to(x), np.arange(300))) == 0).all()


def test_polar_cuda_matches_cpu(dev) -> None:
    to, back = dev
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    cpu = s4g.polar_transform(img, 32, 128, mean=mean, std=std)
    gpu = back(s4g.polar_transform(to(img), 32, 128, mean=mean, std=std))
    np.testing.assert_allclose(gpu, cpu, atol=2e-2)  # float32 vs float64 sampling coordinates
    p = rng.standard_normal((16, 64, 2)).astype(np.float32)
    np.testing.assert_allclose(back(s4g.inverse_polar(to(p), 40)), s4g.inverse_polar(p, 40), atol=1e-5, equal_nan=True)


def test_cuda_rejects_bad_input(dev) -> None:
    to, _ = dev
    q = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="NaN/Inf"):
        s4g.topk_similarity(to(np.full((3, 4), np.nan, np.float32)), to(q), 2)
    with pytest.raises(ValueError, match="same device|CUDA array"):
        s4g.topk_similarity(to(q), q, 2)
    with pytest.raises(ValueError, match=r"\[-1, 3\)"):
        s4g.topk_similarity(to(q), to(q), 2, exclude=np.full((3, 1), 3))
    with pytest.raises(ValueError, match="square"):
        s4g.polar_transform(to(np.zeros((8, 9, 3), np.uint8)), 4, 8)


# ---------------------------------------------------------------------------------------------------
# the filtered GPU search (cuBLAS on tensor cores → margin → canonical refinement): exact on every input
# ---------------------------------------------------------------------------------------------------
def _gpu_call(dev, fn: str, q: np.ndarray, r: np.ndarray, *rest: Any, mode: str) -> Any:
    """Call s4g_engine._core_cuda.<fn> with a mode (test-only argument); results back on the host."""
    from s4g_engine import kernels

    cu = kernels._cuda_module()  # also loads cuBLAS (the filter) when it can be found
    to, back = dev
    tq, tr = to(q), to(r)
    args = kernels._cuda_search_inputs(cu, tq, tr)
    out = getattr(cu, fn)(*args, *rest, mode)
    if isinstance(out, tuple):
        return tuple(back(kernels._wrap(tq, o)) for o in out)
    return back(kernels._wrap(tq, out))


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cublas_is_found_next_to_torch(cuda_device: int) -> None:
    """torch's CUDA wheels bring nvidia-cublas: the filter must then run (not silently the slow kernels)."""
    pytest.importorskip("torch")
    from s4g_engine import _core_cuda, _cublas

    assert _cublas.ensure(_core_cuda), f"cuBLAS not loaded; candidates tried: {_cublas.candidates()}"


@pytest.mark.parametrize("nq,n,d,k", [(1, 3000, 1025, 10), (37, 5000, 255, 12), (300, 20000, 64, 128), (20, 300, 7, 5),
                                      (9, 200, 1, 3), (4, 50, 33, 80), (64, 70000, 256, 1)])
@pytest.mark.parametrize("half", [False, True])
def test_topk_filtered_cuda_equals_canonical_and_cpu(dev, nq: int, n: int, d: int, k: int, half: bool) -> None:
    rng = np.random.default_rng(nq + n + d)
    q, r = _unit(rng, nq, d), _unit(rng, n, d).astype(np.float16 if half else np.float32)
    ex = rng.integers(-1, n, (nq, 2))
    want = _gpu_call(dev, "topk_similarity", q, r, k, ex, mode="canonical")
    got = _gpu_call(dev, "topk_similarity", q, r, k, ex, mode="exact")
    from s4g_engine import _core_cuda

    assert _core_cuda.search_stats()["path"] in ("filter", "canonical")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    s_cpu, i_cpu = s4g.topk_similarity(q, r, k, exclude=ex)
    np.testing.assert_array_equal(got[1], i_cpu)
    np.testing.assert_array_equal(got[0].view(np.uint32), s_cpu.view(np.uint32))  # CPU = CUDA, bit for bit


def _near_duplicates(rng: np.random.Generator, d: int, n_dup: int, step: float, scale: float) -> tuple:
    q = _unit(rng, 1, d)[0]
    b = 0.9 * q + 0.4 * _unit(rng, 1, d)[0]
    offs = rng.permutation(n_dup).astype(np.float64) * step
    dup = (b[None, :].astype(np.float64) + offs[:, None] * q[None, :]).astype(np.float32)
    r = np.concatenate([dup, 0.5 * _unit(rng, 300, d)])[rng.permutation(n_dup + 300)]
    return (q[None, :] * scale).astype(np.float32), (r * scale).astype(np.float32)


@pytest.mark.parametrize("half", [False, True])
def test_topk_cuda_near_duplicates_defeat_the_filter_not_the_search(dev, half: bool) -> None:
    rng = np.random.default_rng(11)
    fooled = 0
    for d in (255, 1025):
        for step in (2.0**-18, 2.0**-11):
            for scale in (1.0, 1e-3, 1e3):
                q, r = _near_duplicates(rng, d, 40, step, scale)
                if half:
                    r = r.astype(np.float16)
                for k in (5, 17):
                    want = _gpu_call(dev, "topk_similarity", q, r, k, None, mode="canonical")
                    got = _gpu_call(dev, "topk_similarity", q, r, k, None, mode="exact")
                    np.testing.assert_array_equal(got[1], want[1])
                    np.testing.assert_array_equal(got[0], want[0])
                    fooled += not np.array_equal(_gpu_call(dev, "topk_similarity", q, r, k, None, mode="filter")[1],
                                                 want[1])
    assert fooled > 0, "the raw tensor-core filter got every near-duplicate case right: the test tests nothing"


def test_topk_cuda_duplicates_fall_back(dev) -> None:
    from s4g_engine import _core_cuda

    rng = np.random.default_rng(12)
    q = _unit(rng, 3, 96)
    r = 0.3 * _unit(rng, 3000, 96)
    copies = rng.choice(3000, 1500, replace=False)
    r[copies] = q[0]
    want = _gpu_call(dev, "topk_similarity", q, r, 10, None, mode="canonical")
    got = _gpu_call(dev, "topk_similarity", q, r, 10, None, mode="exact")
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[1][0], np.sort(copies)[:10])
    stats = _core_cuda.search_stats()
    assert stats["path"] != "filter" or stats["fallback"] >= 1


@pytest.mark.parametrize("nq,n,d", [(1, 500, 1025), (40, 7000, 255), (300, 20000, 64), (9, 300, 7)])
@pytest.mark.parametrize("half", [False, True])
def test_ranks_filtered_cuda_equals_canonical_and_cpu(dev, nq: int, n: int, d: int, half: bool) -> None:
    rng = np.random.default_rng(nq * n)
    r = _unit(rng, n, d).astype(np.float16 if half else np.float32)
    pos = rng.integers(0, n, nq)
    q = _unit(rng, nq, d)
    q[: nq // 2] = 0.2 * r[pos[: nq // 2]] + 0.98 * q[: nq // 2]  # half the queries near their positive
    ig = rng.integers(-1, n, (nq, 3))
    for ignore in (None, ig):
        want = _gpu_call(dev, "positive_ranks", q, r, pos, ignore, mode="canonical")
        got = _gpu_call(dev, "positive_ranks", q, r, pos, ignore, mode="exact")
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, s4g.positive_ranks(q, r, pos, ignore=ignore))


def test_ranks_cuda_near_duplicates_of_the_positive(dev) -> None:
    rng = np.random.default_rng(13)
    fooled = 0
    for d in (255, 1025):
        for step in (2.0**-18, 2.0**-11):
            q, r = _near_duplicates(rng, d, 41, step, 1.0)
            order = np.argsort(-(r.astype(np.float64) @ q[0].astype(np.float64)), kind="stable")
            pos = np.array([order[20]])
            want = _gpu_call(dev, "positive_ranks", q, r, pos, None, mode="canonical")
            np.testing.assert_array_equal(_gpu_call(dev, "positive_ranks", q, r, pos, None, mode="exact"), want)
            fooled += int(_gpu_call(dev, "positive_ranks", q, r, pos, None, mode="filter")[0] != want[0])
    assert fooled > 0


@pytest.mark.parametrize("batch,a,h,w,c", [(5, 512, 128, 512, 3), (2, 64, 32, 100, 1), (3, 33, 17, 50, 4),
                                           (1, 40, 64, 32, 5)])
def test_polar_cuda_map_path_matches_cpu(dev, batch: int, a: int, h: int, w: int, c: int) -> None:
    to, back = dev
    rng = np.random.default_rng(a)
    img = rng.integers(0, 256, (batch, a, a, c), dtype=np.uint8)
    np.testing.assert_allclose(back(s4g.polar_transform(to(img), h, w)), s4g.polar_transform(img, h, w), atol=2e-2)
