"""TensorRT path. The engine build and run tests skip where TensorRT is absent (always on our CI machines:
TensorRT cannot be installed there); the clear-error behaviour without TensorRT is tested everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from s4g_engine.encoders import tensorrt_available

REASON = "TensorRT is not installed (cannot be installed in this workplace)"
needs_trt = pytest.mark.skipif(not tensorrt_available(), reason=REASON)


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed: the missing-TensorRT errors do not apply")
def test_clear_errors_without_tensorrt(tmp_path):
    pytest.importorskip("torch")
    from helpers.torch_bundle import make_tiny_bundle
    from s4g_engine import Localiser
    from s4g_train.export import main
    from s4g_train.tensorrt_build import NOT_INSTALLED, require_tensorrt

    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        require_tensorrt()
    assert NOT_INSTALLED == REASON
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    assert main([str(ckpt), "--out", str(tmp_path / "o"), "--tensorrt"]) == 2  # refuses before any work
    make_tiny_bundle(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no TensorRT engine"):
        Localiser.from_dir(tmp_path / "b", backend="tensorrt")


@needs_trt
@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(tmp_path):
    pytest.importorskip("torch")
    from helpers.torch_bundle import make_tiny_bundle
    from s4g_engine import Localiser

    make_tiny_bundle(tmp_path / "b", tensorrt={"max_batch": 8})
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(11)]  # > max_batch: split
    trt_loc = Localiser.from_dir(tmp_path / "b", backend="tensorrt")
    ort_loc = Localiser.from_dir(tmp_path / "b", backend="onnxruntime", device="cpu")
    a, b = trt_loc.embed_aerial(imgs), ort_loc.embed_aerial(imgs)
    assert ((a * b).sum(1) >= 0.999).all()  # fp16 engine vs fp32 reference
