"""Figures: overlays, figure pixel sizes, the gallery page, training curves from metrics.jsonl."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from s4g_train.plots import (
    CURVES_SIZE,
    CandidatePanel,
    QueryPanel,
    candidates_figure_size,
    overlay,
    pair_figure_size,
    read_metrics,
    render_candidates,
    render_curves,
    render_pair,
    write_gallery_html,
)
from s4g_train.viz import main


def test_overlay_blends_and_leaves_nan_untouched():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    heat = rng.random((20, 30))
    heat[:5] = np.nan
    out = overlay(img, heat, cmap="viridis", alpha=0.4)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out[:5], img[:5])  # no value → the image as it was
    cm = matplotlib.colormaps["viridis"](heat[5:])[..., :3] * 255
    want = np.rint(0.6 * img[5:].astype(float) + 0.4 * cm)
    assert np.abs(out[5:].astype(float) - want).max() <= 1
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), img)


def test_overlay_rejects_bad_input():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="does not match the image"):
        overlay(img, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="perceptual"):
        overlay(img, np.zeros((8, 8)), cmap="jet")
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay(img.astype(np.float32), np.zeros((8, 8)))


def _smooth(rng, hw, channels=3):
    """Blocky random image (cheap to PNG-encode, unlike white noise)."""
    small = rng.integers(0, 256, ((hw[0] + 9) // 10, (hw[1] + 9) // 10, channels), dtype=np.uint8)
    return np.kron(small, np.ones((10, 10, 1), np.uint8))[: hw[0], : hw[1]]


def _panels(rng, ghw=(70, 384), a=150, n=3):
    q = QueryPanel(_smooth(rng, ghw), _smooth(rng, ghw, 1)[..., 0] / 255.0, "q.jpg")
    circle = np.hypot(*np.mgrid[0:a, 0:a] - a / 2) < a / 2
    cands = [CandidatePanel(_smooth(rng, (a, a)), _smooth(rng, (a, a), 1)[..., 0] / 255.0,
                            np.where(circle, rng.random((a, a)), np.nan), float(rng.random()), f"#{k + 1}",
                            [True, False, None][k % 3], f"t{k}.jpg") for k in range(n)]
    return q, cands


@pytest.mark.parametrize("ghw", [(70, 384), (128, 256)])
def test_figure_pixel_sizes(tmp_path, ghw):
    rng = np.random.default_rng(1)
    q, cands = _panels(rng, ghw)
    p = render_pair(q, cands[0], tmp_path / "p.png")
    with Image.open(p) as im:
        assert im.size == pair_figure_size(ghw, (150, 150))
    for n in (1, 4):
        p = render_candidates(q, (cands * 3)[:n], tmp_path / f"c{n}.png")
        with Image.open(p) as im:
            assert im.size == candidates_figure_size(ghw, n)
            assert im.size[0] >= 1200
    with pytest.raises(ValueError, match="at least one"):
        render_candidates(q, [], tmp_path / "none.png")
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temp files behind


def test_gallery_html_escapes_and_links(tmp_path):
    p = write_gallery_html(tmp_path, {"false predictions": [{"png": "false_000001.png", "caption": "a<b"}],
                                      "correct predictions": []}, "t & t")
    text = p.read_text()
    assert "false_000001.png" in text and "a&lt;b" in text and "t &amp; t" in text and "none" in text


def _metrics(path):
    rows = []
    for e in range(1, 6):
        rows.append({"event": "epoch", "epoch": e, "step": 10 * e, "loss": 4.0 / e, "logit_scale": 14.3 + 5 * e,
                     "lr": 1e-3, "hardness_sim": 0.2 + 0.1 * e, "hardness_gps_m": 300.0 / e, "sampling": "gps",
                     "time_s": 12.0})
        if e % 2 == 0:
            rows.append({"event": "eval", "epoch": e, "split": "val", "R@1": 10.0 * e, "R@5": 15.0 * e,
                         "R@10": 20.0, "R@1%": 50.0})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return rows


def test_curves_png_from_synthetic_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = _metrics(run / "metrics.jsonl")
    assert read_metrics(run) == rows  # a run folder is accepted; blank lines are skipped
    out = tmp_path / "curves.png"
    assert main(["curves", str(run / "metrics.jsonl"), "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == CURVES_SIZE
        px = np.asarray(im.convert("RGB")).astype(int)
    # line colours of the default cycle (C0 blue) must be present: something was plotted
    assert (np.abs(px - np.array([31, 119, 180])).sum(axis=2) < 30).sum() > 200


def test_curves_errors_name_the_line(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"event": "epoch", "epoch": 1, "loss": 1.0}\n{broken\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(m)
    m.write_text('{"epoch": 1}\n')
    with pytest.raises(ValueError, match="'event'"):
        read_metrics(m)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "nope.jsonl")
    m.write_text('{"event": "other"}\n')
    with pytest.raises(ValueError, match="no 'epoch' or 'eval'"):
        render_curves(m, tmp_path / "x.png")
