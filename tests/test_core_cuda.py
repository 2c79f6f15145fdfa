"""CUDA kernels against the CPU kernels (the reference): identical top-k indices and bit-identical scores
(both follow the canonical dot product), identical ranks, polar maps to float32 interpolation error.
Skipped with a reason when no GPU, no CUDA build, or neither CuPy nor torch.cuda is available."""

from __future__ import annotations

from typing import Any, Callable

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


@pytest.mark.parametrize("nq,n,d,k", [(1, 1, 1, 1), (5, 7, 3, 10), (70, 1000, 257, 8), (300, 5000, 64, 20), (0, 5, 4, 3)])
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
