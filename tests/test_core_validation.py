"""Every bad input to the core façade raises ValueError saying what was expected; build_info; imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import s4g_engine
from s4g_engine import build_info, inverse_polar, polar_transform, positive_ranks, topk_similarity

Q = np.ones((3, 4), np.float32)
R = np.ones((5, 4), np.float32)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: topk_similarity(Q[0], R, 2), "2-D.*reshape"),
        (lambda: topk_similarity(Q.astype(np.int32), R, 2), "float32"),
        (lambda: topk_similarity(Q, R.astype(np.int8), 2), "float32"),
        (lambda: topk_similarity(Q, np.ones((5, 3), np.float32), 2), "same dimension"),
        (lambda: topk_similarity(np.ones((3, 0), np.float32), np.ones((5, 0), np.float32), 2), "dimension must be"),
        (lambda: topk_similarity(Q, R, 0), "k must be >= 1"),
        (lambda: topk_similarity(Q, R, True), "k must be an int"),
        (lambda: topk_similarity(Q, R, 2.0), "k must be an int"),
        (lambda: topk_similarity(np.where(np.eye(3, 4) > 0, np.nan, Q).astype(np.float32), R, 2), "NaN/Inf"),
        (lambda: topk_similarity(Q, np.full((5, 4), np.inf, np.float32), 2), "refs contains 20 NaN/Inf"),
        (lambda: topk_similarity(Q, np.full((5, 4), np.inf, np.float16), 2), "NaN/Inf"),
        (lambda: topk_similarity(Q, R, 2, exclude=np.zeros((2, 1), np.int64)), r"\(Q, m\) with Q = 3"),
        (lambda: topk_similarity(Q, R, 2, exclude=np.full((3, 1), 5)), r"\[-1, 5\)"),
        (lambda: topk_similarity(Q, R, 2, exclude=np.full((3, 1), -2)), r"\[-1, 5\)"),
        (lambda: topk_similarity(Q, R, 2, exclude=np.full((3, 1), 0.5)), "integer ids"),
        (lambda: positive_ranks(Q, R, np.zeros(2, np.int64)), r"\(Q,\) with Q = 3"),
        (lambda: positive_ranks(Q, R, np.array([0, 1, 5])), r"\[0, 5\)"),
        (lambda: positive_ranks(Q, R, np.array([0, -1, 2])), r"\[0, 5\)"),
        (lambda: positive_ranks(Q, R, np.array([0.0, 1.0, 2.0])), "integer ids"),
        (lambda: positive_ranks(Q, R, np.zeros(3, np.int64), ignore=np.zeros((4, 2), np.int64)), "ignore"),
        (lambda: positive_ranks(Q, R, np.zeros(3, np.int64), ignore=np.full((3, 2), 7)), r"\[-1, 5\)"),
        (lambda: positive_ranks(np.full((3, 4), np.nan, np.float32), R, np.zeros(3, np.int64)), "NaN/Inf"),
        (lambda: polar_transform(np.zeros((8, 8), np.uint8), 4, 8), "grayscale"),
        (lambda: polar_transform(np.zeros((8, 9, 3), np.uint8), 4, 8), "square"),
        (lambda: polar_transform(np.zeros((2, 8, 9, 3), np.uint8), 4, 8), "square"),
        (lambda: polar_transform(np.zeros((8, 8, 3), np.int16), 4, 8), "uint8 or float32"),
        (lambda: polar_transform(np.full((8, 8, 3), np.nan, np.float32), 4, 8), "NaN/Inf"),
        (lambda: polar_transform(np.zeros((8, 8, 3), np.uint8), 0, 8), "height must be >= 1"),
        (lambda: polar_transform(np.zeros((8, 8, 3), np.uint8), 4, 8.5), "width must be an int"),
        (lambda: polar_transform(np.zeros((8, 8, 3), np.uint8), 4, 8, mean=[0.5, 0.5]), "3 per-channel"),
        (lambda: polar_transform(np.zeros((8, 8, 3), np.uint8), 4, 8, std=[1, 0, 1]), "std must be > 0"),
        (lambda: polar_transform(np.zeros((8, 8, 3), np.uint8), 4, 8, mean=[np.nan] * 3), "finite"),
        (lambda: polar_transform(np.zeros((8, 8, 0), np.uint8), 4, 8), "non-empty"),
        (lambda: inverse_polar(np.zeros((2, 4, 8, 1), np.float32), 8), r"\(Hp, Wp\)"),
        (lambda: inverse_polar(np.zeros((4, 8), np.float32), 0), "size must be >= 1"),
        (lambda: inverse_polar(np.zeros((4, 8), np.float32), (8, 9)), "square"),
        (lambda: inverse_polar(np.full((4, 8), np.inf), 8), "NaN/Inf"),
        (lambda: inverse_polar(np.zeros((0, 8), np.float32), 8), "non-empty"),
        (lambda: inverse_polar(np.zeros((4, 8), bool), 8), "real-valued"),
    ],
)
def test_bad_input_raises_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_private_bindings_check_too() -> None:
    from s4g_engine import _core

    with pytest.raises(ValueError, match="float32"):
        _core.topk_similarity(Q.astype(np.float64), R, 2)
    with pytest.raises(ValueError, match="positive"):
        _core.positive_ranks(Q, R, np.array([0, 1, 9], np.int64))
    with pytest.raises(ValueError, match="square"):
        _core.polar_transform(np.zeros((1, 4, 5, 3), np.uint8), 2, 2, np.ones(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="not available"):
        _core.set_simd_level("sse9")


def test_build_info() -> None:
    info = build_info()
    assert {"compiler", "openmp", "simd", "blas", "cuda"} <= set(info)
    assert info["simd"]["active"] in info["simd"]["compiled"]
    assert info["openmp"] is None or info["openmp"]["threads"] >= 1
    assert {"compiled", "archs", "devices"} <= set(info["cuda"])
    if info["cuda"]["compiled"]:  # the default list, or what S4G_CUDA_ARCHITECTURES asked for (e.g. 90)
        assert info["cuda"]["archs"] and all(a >= 50 for a in info["cuda"]["archs"])


def test_threads_setting_roundtrip() -> None:
    before = s4g_engine.get_num_threads()
    s4g_engine.set_num_threads(1)
    assert s4g_engine.get_num_threads() == 1
    s4g_engine.set_num_threads(before)
    assert s4g_engine.get_num_threads() == before
    with pytest.raises(ValueError):
        s4g_engine.set_num_threads(-1)


def test_import_pulls_no_torch_or_onnxruntime() -> None:
    code = (
        "import sys, numpy as np, s4g_engine as s;"
        "s.topk_similarity(np.ones((2,3),np.float32), np.ones((4,3),np.float32), 2);"
        "s.polar_transform(np.zeros((4,4,3),np.uint8), 2, 4); s.build_info();"
        "bad=[m for m in ('torch','onnxruntime','s4g_train','cv2') if m in sys.modules];"
        "assert not bad, bad;"
        "assert callable(s.__getattr__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_localiser_export() -> None:
    pytest.importorskip("onnxruntime")
    from s4g_engine.localiser import Localiser, LocaliseResult

    assert s4g_engine.Localiser is Localiser and s4g_engine.LocaliseResult is LocaliseResult
    with pytest.raises(AttributeError):
        s4g_engine.no_such_name  # noqa: B018
