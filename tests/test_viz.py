"""Heatmaps and s4g-viz (issue 6): the maps are proper functions of the input, the polar projection follows
docs/METHOD.md §9, the PNGs come out at the designed size, bad input fails loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from s4g_train.heatmaps import (
    BundleSource,
    TorchSource,
    channel_mean,
    normalise,
    pair_maps,
    project_panorama,
    upsample,
)
from s4g_train.model import ModelConfig, S4GModel
from s4g_train.plots import candidates_figure_size, pair_figure_size
from s4g_train.viz import explain, main, visualise_pair

torch.set_num_threads(1)
GROUND, TILE = (64, 256), (128, 128)  # multiples of ConvNeXt's stride 32 → feature maps 2×8 and 4×4


def _equivariant_model() -> S4GModel:
    """convnext_atto with 1×1 depthwise kernels: every layer is a stride-aligned patchify conv (no padding)
    or pointwise, so shifting the input by a multiple of the total stride (32) shifts the feature map by
    whole cells with no boundary effect at all — rolls of W/4 = 64 px are exactly equivariant. The stem and
    downsampling kernels are made left-right symmetric, so a horizontal flip is exactly equivariant too."""
    torch.manual_seed(0)
    m = S4GModel(ModelConfig(backbone="convnext_atto", ground_size=GROUND, aerial_size=TILE))
    m.model = timm.create_model("convnext_atto", pretrained=False, num_classes=0, kernel_sizes=1)
    with torch.no_grad():
        for name, p in m.model.named_parameters():
            if p.ndim == 4 and p.shape[-1] > 1:  # stem 4×4 and downsample 2×2 kernels
                p.copy_((p + p.flip(-1)) / 2)
            elif name.endswith("gamma"):  # timm's layer-scale init is 1e-6: make the blocks matter
                p.fill_(0.5)
    return m.eval()


@pytest.fixture(scope="module")
def model() -> S4GModel:
    return _equivariant_model()


def _rand_img(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """Smooth-ish random RGB image (low-frequency noise upsampled), uint8."""
    small = rng.integers(0, 256, size=(hw[0] // 8, hw[1] // 8, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((hw[1], hw[0]), Image.BILINEAR))


@pytest.fixture()
def pair_files(tmp_path):
    rng = np.random.default_rng(7)
    pano, tile = _rand_img(rng, GROUND), _rand_img(rng, TILE)
    q, r = tmp_path / "pano.png", tmp_path / "tile.png"  # PNG at network size: no resampling, no loss
    Image.fromarray(pano).save(q)
    Image.fromarray(tile).save(r)
    return pano, tile, q, r


def _save(tmp: Path, name: str, img: np.ndarray) -> str:
    Image.fromarray(np.ascontiguousarray(img)).save(tmp / name)
    return str(tmp / name)


# ---------------------------------------------------------------------------------------- map maths
def test_upsample_matches_torch_and_wraps():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 7))
    want = F.interpolate(torch.from_numpy(m)[None, None], size=(12, 21), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(upsample(m, (12, 21)), want.numpy(), atol=1e-12)
    # wrap = the same interpolation on a circularly padded map, cropped back (reference built with torch)
    m = rng.normal(size=(2, 8))
    padded = np.concatenate([m[:, -1:], m, m[:, :1]], axis=1)  # 10 columns, scale 4 → 40 px, crop 4 px each side
    ref = F.interpolate(torch.from_numpy(padded)[None, None], size=(8, 40), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(upsample(m, (8, 32), wrap=True), ref.numpy()[:, 4:36], atol=1e-12)
    np.testing.assert_allclose(upsample(np.roll(m, 2, axis=1), (8, 32), wrap=True),
                               np.roll(upsample(m, (8, 32), wrap=True), 8, axis=1), atol=1e-12)


def test_normalise():
    m = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(normalise(m), [[0, 0.25], [0.5, 1.0]])
    assert not normalise(np.full((2, 2), 3.0)).any()
    with pytest.raises(ValueError, match="NaN"):
        normalise(np.array([[np.nan, 1.0]]))


def test_gradcam_weights_match_finite_differences(model):
    """Grad-CAM's alpha_c = mean_hw d sim / d A_c, checked against central differences in float64."""
    rng = np.random.default_rng(1)
    g = torch.from_numpy(rng.normal(size=(1, 3, *GROUND)).astype(np.float32))
    a = torch.from_numpy(rng.normal(size=(1, 3, *TILE)).astype(np.float32))
    bb = model.model
    with torch.no_grad():
        fg, fa = bb.forward_features(g).double(), bb.forward_features(a).double()
    head = timm.create_model("convnext_atto", pretrained=False, num_classes=0, kernel_sizes=1).double()
    head.load_state_dict(bb.state_dict())

    def sim(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((F.normalize(head.forward_head(x), dim=-1) * F.normalize(head.forward_head(fa), dim=-1)).sum())

    (pm,) = pair_maps(bb, g, a, "gradcam")
    eps = 1e-6
    alpha = np.empty(fg.shape[1])
    for c in range(fg.shape[1]):
        d = torch.zeros_like(fg)
        d[:, c] = eps  # shifting channel c everywhere by eps: d sim = eps · sum_hw dsim/dA_c
        alpha[c] = (sim(fg + d) - sim(fg - d)) / (2 * eps) / (fg.shape[2] * fg.shape[3])
    want = np.maximum((alpha[:, None, None] * fg[0].numpy()).sum(axis=0), 0.0)
    np.testing.assert_allclose(pm.ground, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert pm.similarity == pytest.approx(sim(fg), abs=1e-5)
    assert np.ptp(pm.ground) > 0 and np.ptp(pm.aerial) > 0  # not constant


@pytest.mark.parametrize("mode", ["activation", "gradcam"])
def test_rolling_the_panorama_rolls_its_heatmap(tmp_path, model, pair_files, mode):
    pano, _, q, r = pair_files
    src = TorchSource(model)
    qp, (c,) = explain(src, str(q), [str(r)], mode=mode)
    shift = GROUND[1] // 4  # W/4 = 64 px = 2 feature cells: exact (see _equivariant_model)
    q2 = _save(tmp_path, "rolled.png", np.roll(pano, shift, axis=1))
    qp2, (c2,) = explain(src, q2, [str(r)], mode=mode)
    assert np.ptp(qp.heat) == pytest.approx(1.0)
    np.testing.assert_allclose(qp2.heat, np.roll(qp.heat, shift, axis=1), atol=1e-5)
    np.testing.assert_allclose(c2.heat, c.heat, atol=1e-5)  # global pooling: the tile's map does not move
    assert c2.similarity == pytest.approx(c.similarity, abs=1e-5)
    # a roll by a non-multiple of the stride is a different input: the map must actually depend on the image
    q3 = _save(tmp_path, "other.png", np.roll(pano, 17, axis=0))
    qp3, _ = explain(src, q3, [str(r)], mode=mode)
    assert np.abs(qp3.heat - qp.heat).max() > 0.05


@pytest.mark.parametrize("mode", ["activation", "gradcam"])
def test_flipping_both_views_flips_the_maps(tmp_path, model, pair_files, mode):
    pano, tile, q, r = pair_files
    src = TorchSource(model)
    qp, (c,) = explain(src, str(q), [str(r)], mode=mode)
    qf = _save(tmp_path, "pano_f.png", pano[:, ::-1])
    rf = _save(tmp_path, "tile_f.png", tile[:, ::-1])
    qpf, (cf,) = explain(src, qf, [rf], mode=mode)
    np.testing.assert_allclose(qpf.heat, qp.heat[:, ::-1], atol=1e-5)
    np.testing.assert_allclose(cf.heat, c.heat[:, ::-1], atol=1e-5)
    assert cf.similarity == pytest.approx(c.similarity, abs=1e-5)


def test_gradcam_depends_on_the_pair(tmp_path, model, pair_files):
    _, _, q, r = pair_files
    r2 = _save(tmp_path, "tile2.png", _rand_img(np.random.default_rng(99), TILE))
    src = TorchSource(model)
    qp, cands = explain(src, str(q), [str(r), r2], mode="gradcam")
    assert abs(cands[0].similarity - cands[1].similarity) > 1e-4
    act, _ = explain(src, str(q), [str(r)], mode="activation")
    assert np.abs(act.heat - qp.heat).max() > 0.05  # Grad-CAM is not the plain activation


# ---------------------------------------------------------------------------------------- projection
def _inverse_polar_ref(polar: np.ndarray, A: int) -> np.ndarray:
    """docs/METHOD.md §9 inverse in plain float64 NumPy (bilinear in (i, j), j wraps, rows outside weigh 0)."""
    H, W = polar.shape
    out = np.full((A, A), np.nan)
    for row in range(A):
        for col in range(A):
            dr, dc = row - A / 2, A / 2 - col
            rad = np.hypot(dr, dc)
            if not rad < (A / 2) * (H - 1) / H:
                continue
            i = H - 1 - rad * H / (A / 2)
            j = (np.arctan2(dc, dr) % (2 * np.pi)) * W / (2 * np.pi)
            i0, j0 = int(np.floor(i)), int(np.floor(j))
            fi, fj = i - i0, j - j0
            v = 0.0
            for a, wi in ((0, 1 - fi), (1, fi)):
                if 0 <= i0 + a < H:
                    v += wi * ((1 - fj) * polar[i0 + a, j0 % W] + fj * polar[i0 + a, (j0 + 1) % W])
            out[row, col] = v
    return out


def test_projection_follows_spec_and_is_empty_outside_the_circle():
    rng = np.random.default_rng(3)
    A, pano = 48, rng.random((16, 64))
    got = project_panorama(pano, A)
    want = _inverse_polar_ref(pano, A)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=1e-5)
    rr, cc = np.mgrid[0:A, 0:A]
    rad = np.hypot(rr - A / 2, A / 2 - cc)
    assert np.isnan(got[rad >= A / 2]).all()  # nothing outside the inscribed circle
    assert np.isfinite(got[rad < A / 2 * 0.9]).all()
    # below-horizon: only the lower half of the panorama is used
    low = project_panorama(pano, A, rows="below-horizon", horizon=0.5)
    np.testing.assert_allclose(low[np.isfinite(low)], _inverse_polar_ref(pano[8:], A)[np.isfinite(low)], atol=1e-5)


def test_projection_orientation_north_up_camera_at_centre():
    A, (H, W) = 64, (16, 64)
    north = np.zeros((H, W))
    north[:, W // 2 - 2: W // 2 + 3] = 1.0  # centre column of a north-aligned panorama = north
    p = project_panorama(north, A)
    hot = np.argwhere(np.nan_to_num(p) > 0.5)
    assert hot[:, 0].max() <= A / 2 and abs(hot[:, 1].mean() - A / 2) < 2  # above the centre, i.e. north
    near = np.zeros((H, W))
    near[-3:] = 1.0  # bottom rows = the camera
    p = project_panorama(near, A)
    hot = np.argwhere(np.nan_to_num(p) > 0.5)
    assert np.hypot(hot[:, 0] - A / 2, hot[:, 1] - A / 2).max() < A / 2 * 0.3


# ---------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_refused(tmp_path, model, pair_files):
    _, _, q, r = pair_files
    src = TorchSource(model)
    with pytest.raises(ValueError, match="swap"):
        explain(src, str(r), [str(q)])  # tile given as query, panorama as reference
    g = torch.zeros(2, 3, *GROUND)
    with pytest.raises(ValueError, match="mismatched pair batch sizes"):
        pair_maps(model.model, g, torch.zeros(3, 3, *TILE))
    with pytest.raises(ValueError, match="mode"):
        pair_maps(model.model, g, torch.zeros(2, 3, *TILE), mode="saliency")
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        channel_mean(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="horizon"):
        project_panorama(np.zeros((8, 32)), 16, rows="below-horizon", horizon=1.5)


# ---------------------------------------------------------------------------------------- files + CLI
def test_pair_png_has_the_designed_size(tmp_path, model, pair_files):
    _, _, q, r = pair_files
    out, sim = visualise_pair(TorchSource(model), str(q), str(r), str(tmp_path / "pair.png"), correct=True)
    with Image.open(out) as im:
        assert im.size == pair_figure_size(GROUND, TILE) and im.mode in ("RGB", "RGBA")
        px = np.asarray(im.convert("RGB"))
    assert px.std() > 10  # not blank
    assert -1.0 <= sim <= 1.0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> tuple[Path, S4GModel]:
    """A real-format checkpoint of a stock convnext_atto (our format, via the trainer's checkpoint module)."""
    from s4g_train.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(5)
    m = S4GModel(ModelConfig(backbone="convnext_atto", ground_size=GROUND, aerial_size=TILE)).eval()
    p = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(p, model_payload(m, {}, 1, {}))
    return p, m


def test_cli_pair_and_topk(tmp_path, ckpt, pair_files):
    p, _ = ckpt
    _, _, q, r = pair_files
    refs = tmp_path / "refs"
    refs.mkdir()
    rng = np.random.default_rng(11)
    for n in range(4):
        _save(refs, f"t{n}.png", _rand_img(rng, TILE))
    out = tmp_path / "pair.png"
    assert main(["pair", "--checkpoint", str(p), "--query", str(q), "--reference", str(r), "--out", str(out),
                 "--match", "yes", "--cmap", "viridis"]) == 0
    with Image.open(out) as im:
        assert im.size == pair_figure_size(GROUND, TILE)
    out = tmp_path / "topk.png"
    assert main(["topk", "--checkpoint", str(p), "--query", str(q), "--references", str(refs), str(r),
                 "--positive", str(r), "--k", "3", "--out", str(out), "--mode", "activation"]) == 0
    with Image.open(out) as im:
        assert im.size == candidates_figure_size(GROUND, 3)
    assert main(["topk", "--checkpoint", str(p), "--query", str(q), "--references", str(refs),
                 "--positive", str(r), "--out", str(out)]) == 2  # positive not among the references: one line


def test_cli_gallery_on_a_cvusa_layout(tmp_path, ckpt):
    from helpers.layouts import make_cvusa

    p, _ = ckpt
    root = make_cvusa(tmp_path / "cvusa", n_train=2, n_test=6, scale=8.0)
    out = tmp_path / "gallery"
    assert main(["gallery", "--checkpoint", str(p), "--dataset", "cvusa", "--root", str(root), "--split", "test",
                 "--n", "2", "--out", str(out), "--rows", "below-horizon"]) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    n_hit = round(summary["R@1"] * summary["queries"] / 100)
    assert len(summary["correct"]) == min(2, n_hit) and len(summary["false"]) == min(2, summary["queries"] - n_hit)
    html = (out / "index.html").read_text()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(summary["correct"]) + len(summary["false"]) > 0
    for png in pngs:
        assert png.name in html
        with Image.open(png) as im:
            expected = pair_figure_size(GROUND, TILE) if png.name.startswith("correct") else \
                candidates_figure_size(GROUND, 2)
            assert im.size == expected


def test_bundle_source(tmp_path, ckpt, pair_files):
    """ONNX bundle with the `features` output: activation maps equal the torch ones; without it: clear error."""
    from s4g_train.export import export_bundle

    _, m = ckpt
    _, _, q, r = pair_files
    export_bundle(m, tmp_path / "with", with_features=True)
    src = BundleSource(str(tmp_path / "with"))
    qb, (cb,) = explain(src, str(q), [str(r)], mode="activation")
    qt, (ct,) = explain(TorchSource(m), str(q), [str(r)], mode="activation")
    np.testing.assert_allclose(qb.heat, qt.heat, atol=1e-3)
    np.testing.assert_allclose(cb.heat, ct.heat, atol=1e-3)
    assert cb.similarity == pytest.approx(ct.similarity, abs=1e-4)
    with pytest.raises(ValueError, match="gradients"):
        explain(src, str(q), [str(r)], mode="gradcam")
    out = tmp_path / "b.png"
    assert main(["pair", "--bundle", str(tmp_path / "with"), "--query", str(q), "--reference", str(r),
                 "--out", str(out)]) == 0
    assert out.is_file()

    export_bundle(m, tmp_path / "without", with_features=False)
    with pytest.raises(ValueError, match="--with-features"):
        BundleSource(str(tmp_path / "without"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        BundleSource(str(tmp_path))


def test_cli_pair_with_a_published_format_checkpoint(tmp_path, ckpt, pair_files):
    """A reference Sample4Geo .pth (DataParallel prefix) goes through checkpoint.load_model → reference."""
    _, m = ckpt
    _, _, q, r = pair_files
    p = tmp_path / "weights_e40_98.6830.pth"
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, p)
    out = tmp_path / "ref.png"
    assert main(["pair", "--checkpoint", str(p), "--query", str(q), "--reference", str(r), "--out", str(out),
                 "--ground-size", *map(str, GROUND), "--aerial-size", *map(str, TILE), "--mode", "gradcam"]) == 0
    with Image.open(out) as im:
        assert im.size == pair_figure_size(GROUND, TILE)


def test_polar_aerial_model_maps_are_brought_back_onto_the_tile(tmp_path):
    """With polar_aerial (docs/METHOD.md §9 input option), the aerial map lives in polar space; it is inverse-polar
    projected onto the raw tile (north up), so it is empty outside the inscribed circle too."""
    torch.manual_seed(3)
    m = S4GModel(ModelConfig(backbone="convnext_atto", ground_size=GROUND, aerial_size=(64, 256),
                             polar_aerial=True)).eval()
    src = TorchSource(m)
    assert src.tile_size == (128, 128)
    rng = np.random.default_rng(4)
    q = _save(tmp_path, "q.png", _rand_img(rng, GROUND))
    r = _save(tmp_path, "r.png", _rand_img(rng, (128, 128)))
    qp, (c,) = explain(src, q, [r], mode="gradcam")
    A = 128
    rr, cc = np.mgrid[0:A, 0:A]
    rad = np.hypot(rr - A / 2, A / 2 - cc)
    for heat in (c.heat, c.projected):
        assert heat.shape == (A, A)
        assert np.isnan(heat[rad >= A / 2]).all() and np.isfinite(heat[rad < A / 2 * 0.9]).all()
    out, _ = visualise_pair(src, q, r, str(tmp_path / "polar.png"))
    with Image.open(out) as im:
        assert im.size == pair_figure_size(GROUND, (A, A))


def test_drone_query_is_not_projected(tmp_path, model):
    """University-1652 drone views are square photos, not panoramas: no wrap-around, no polar projection."""
    src = TorchSource(model, ground_size=TILE, aerial_size=TILE)
    rng = np.random.default_rng(6)
    q = _save(tmp_path, "drone.png", _rand_img(rng, TILE))
    r = _save(tmp_path, "sat.png", _rand_img(rng, TILE))
    qp, (c,) = explain(src, q, [r], mode="activation")
    assert not qp.panorama and c.projected is None and qp.heat.shape == TILE
    out, _ = visualise_pair(src, q, r, str(tmp_path / "drone_pair.png"))
    with Image.open(out) as im:
        assert im.size == pair_figure_size(TILE, TILE)
