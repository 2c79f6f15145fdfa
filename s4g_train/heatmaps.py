"""Activation heatmaps of both views and their polar projection onto the aerial tile (docs/METHOD.md §9, §10).

Two kinds of map, both from the backbone's last feature map ``A`` of shape ``(C, h, w)``:

* ``activation``: the channel mean ``mean_c A_c`` — where the network responds, independent of the pair;
* ``gradcam``: Grad-CAM w.r.t. the pair's cosine similarity ``s = <e_g, e_a>`` (``e`` = L2-normalised pooled
  embedding): ``relu(sum_c alpha_c A_c)`` with ``alpha_c = mean_hw ds/dA_c`` — the regions that make *this*
  pair similar. Only the head (pooling + norm) is differentiated, so it costs one cheap backward pass.

Maps are min-max normalised to [0, 1] and upsampled bilinearly to the image the network saw; panoramas (and
polar aerial inputs) wrap around horizontally, so their upsampling wraps too (a 360° image has no left or
right border), which also makes the maps exactly equivariant to horizontal rolls by multiples of the stride.

Projection (:func:`project_panorama`): a north-aligned panorama whose centre column faces north is, column by
column, the same angular layout as the SAFA polar transform of the tile (column 0 = south, W/4 west, W/2
north, 3W/4 east). Its rows are read as polar rows, row 0 = far field (the tile's edge) and the bottom row =
the camera (the tile's centre), and ``s4g_engine.inverse_polar`` maps them back onto the tile. ``rows="full"``
uses the whole panorama as SAFA and Sample4Geo's supplementary do (the CVUSA/CVACT crops are mostly ground);
``rows="below-horizon"`` uses only the rows from the horizon (``horizon`` = fraction of the height, 0.5 for a
full equirectangular panorama) down to the bottom, i.e. only what is on the ground. Both are linear in the
radius (as the polar transform is), not a metric ground-plane projection. Outside the inscribed circle
the projection is NaN (no value), so overlays leave the tile untouched there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from s4g_engine.preprocess import DataContract

log = logging.getLogger(__name__)

from s4g_train.vizopts import MODES, ROWS  # noqa: E402,F401  (torch-free home of the CLI's choices)

Mode = Literal["activation", "gradcam"]


@dataclass(frozen=True)
class PairMaps:
    """Raw (un-normalised) maps of one query/reference pair at feature resolution.

    ``ground``: ``(h_g, w_g)``, ``aerial``: ``(h_a, w_a)`` float64; ``similarity``: cosine similarity of the
    pair's embeddings; ``mode``: which map.
    """

    ground: np.ndarray
    aerial: np.ndarray
    similarity: float
    mode: str


# ---------------------------------------------------------------------------------------------- map maths
def channel_mean(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(C, h, w)`` feature map → ``(h, w)`` float64 channel mean."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else \
        np.asarray(features, dtype=np.float64)
    if f.ndim != 3:
        raise ValueError(f"expected one feature map (C, h, w), got shape {f.shape}; heatmaps need a convolutional "
                         "backbone whose forward_features returns NCHW maps (e.g. ConvNeXt)")
    return f.mean(axis=0)


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (float64). A constant map becomes all zeros (and is logged)."""
    m = np.asarray(m, dtype=np.float64)
    if not np.isfinite(m).all():
        raise ValueError("heatmap contains NaN/inf values: the model produced non-finite features")
    lo, hi = float(m.min()), float(m.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        log.warning("heatmap is constant (%.4g): nothing to show", hi)
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def upsample(m: np.ndarray, size: tuple[int, int], *, wrap: bool = False) -> np.ndarray:
    """Bilinear resize of ``(h, w)`` to ``size = (H, W)`` (half-pixel centres, as ``align_corners=False``).

    Hand-written (not ``F.interpolate``/``cv2.resize``) because panoramas need ``wrap=True``: columns wrap
    around (column -1 is column w-1) instead of clamping at the borders. Rows always clamp.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map (h, w), got shape {m.shape}")
    h, w = m.shape
    H, W = int(size[0]), int(size[1])
    if H < 1 or W < 1:
        raise ValueError(f"target size must be positive, got {size}")

    def axis(n_out: int, n_in: int, circular: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        if not circular:
            x = np.clip(x, 0.0, n_in - 1)  # edge clamping == align_corners=False border behaviour
        x0 = np.floor(x)
        frac = x - x0
        i0 = x0.astype(np.int64)
        if circular:
            return i0 % n_in, (i0 + 1) % n_in, frac
        return i0, np.minimum(i0 + 1, n_in - 1), frac

    r0, r1, fr = axis(H, h, False)
    c0, c1, fc = axis(W, w, wrap)
    top = m[r0][:, c0] * (1 - fc) + m[r0][:, c1] * fc
    bottom = m[r1][:, c0] * (1 - fc) + m[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def project_panorama(pano_map: np.ndarray, tile_size: int, *, rows: str = "full", horizon: float = 0.5) -> np.ndarray:
    """Project a north-aligned panorama's ``(H, W)`` map onto an ``A×A`` tile (``A = tile_size``).

    Returns float64 ``(A, A)``; NaN outside the inscribed circle (where the polar image has no value). See
    the module docstring for the row conventions (``rows`` = ``"full"`` or ``"below-horizon"``).
    """
    from s4g_engine import inverse_polar  # docs/METHOD.md §9 inverse, the compiled core

    m = np.asarray(pano_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D panorama map (H, W), got shape {m.shape}")
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {ROWS}, got {rows!r}")
    if rows == "below-horizon":
        if not 0.0 <= horizon < 1.0:
            raise ValueError(f"horizon must be a fraction of the panorama height in [0, 1), got {horizon}")
        start = int(round(horizon * m.shape[0]))
        if m.shape[0] - start < 2:
            raise ValueError(f"horizon {horizon} leaves fewer than 2 rows of a {m.shape[0]}-row panorama")
        m = m[start:]
    out = inverse_polar(np.ascontiguousarray(m, dtype=np.float32), int(tile_size), fill=np.nan)
    out = np.asarray(out, dtype=np.float64)
    if out.shape != (tile_size, tile_size):
        raise RuntimeError(f"inverse_polar returned shape {out.shape}, expected {(tile_size, tile_size)}")
    return out


# ------------------------------------------------------------------------------------------ torch models
def _features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    f = backbone.forward_features(x)
    if f.ndim != 4:
        raise ValueError(f"backbone.forward_features returned shape {tuple(f.shape)}; heatmaps need an NCHW feature "
                         "map (convolutional backbones such as ConvNeXt)")
    return f


def _head(backbone: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """Last feature map → L2-normalised embedding, through timm's ``forward_head`` (pool + norm)."""
    return F.normalize(backbone.forward_head(f).float(), dim=-1)


def _check_inputs(ground: torch.Tensor, aerial: torch.Tensor) -> None:
    for name, t in (("ground", ground), ("aerial", aerial)):
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"{name} batch must be (B, 3, H, W), got shape {tuple(t.shape)}")
    if ground.shape[0] != aerial.shape[0] and ground.shape[0] != 1:
        raise ValueError(f"mismatched pair batch sizes: {ground.shape[0]} ground vs {aerial.shape[0]} aerial images; "
                         "pass one ground image per aerial image, or one ground image for all")


@torch.no_grad()
def _no_grad_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _features(backbone, x)


def pair_maps(backbone: nn.Module, ground: torch.Tensor, aerial: torch.Tensor, mode: str = "gradcam") -> list[PairMaps]:
    """Maps for pairs ``(ground[i], aerial[i])`` (or one ground image against every aerial image).

    ``backbone``: a timm-style module with ``forward_features`` (→ ``(B, C, h, w)``) and ``forward_head``
    (→ pooled ``(B, D)``), e.g. ``S4GModel.model``. ``ground``: ``(B or 1, 3, Hg, Wg)``, ``aerial``:
    ``(B, 3, Ha, Wa)``, already normalised. Returns one :class:`PairMaps` per pair.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_inputs(ground, aerial)
    was_training = backbone.training
    backbone.eval()
    try:
        fg = _no_grad_features(backbone, ground)
        fa = _no_grad_features(backbone, aerial)
        n = aerial.shape[0]
        if fg.shape[0] == 1 and n > 1:
            fg = fg.expand(n, -1, -1, -1)
        # Grad-CAM: differentiate only the head, per pair (each row's head is independent of the others).
        fg = fg.detach().float().clone().requires_grad_(mode == "gradcam")
        fa = fa.detach().float().clone().requires_grad_(mode == "gradcam")
        with torch.enable_grad() if mode == "gradcam" else torch.no_grad():
            sim = (_head(backbone, fg) * _head(backbone, fa)).sum(dim=-1)  # (n,)
            if mode == "gradcam":
                gg, ga = torch.autograd.grad(sim.sum(), (fg, fa))
    finally:
        backbone.train(was_training)
    out: list[PairMaps] = []
    for i in range(n):
        if mode == "activation":
            mg, ma = channel_mean(fg[i]), channel_mean(fa[i])
        else:
            mg = _gradcam(fg[i].detach(), gg[i])
            ma = _gradcam(fa[i].detach(), ga[i])
        out.append(PairMaps(ground=mg, aerial=ma, similarity=float(sim[i].detach()), mode=mode))
    return out


def _gradcam(feat: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """relu(sum_c alpha_c A_c), alpha_c = spatial mean of d sim / d A_c; ``(C, h, w)`` → ``(h, w)`` float64."""
    f = feat.detach().cpu().double()
    alpha = grad.detach().cpu().double().mean(dim=(1, 2))
    return torch.relu((alpha[:, None, None] * f).sum(dim=0)).numpy()


# ------------------------------------------------------------------------------------------------ sources
def check_view_shape(image_hw: tuple[int, int], expected_hw: tuple[int, int], view: str, what: str) -> None:
    """Refuse a ground image where a tile is expected and vice versa (the usual swapped-arguments mistake);
    warn about other aspect-ratio differences (the image is resized to the network size anyway)."""
    a_img = image_hw[1] / max(image_hw[0], 1)
    a_exp = expected_hw[1] / max(expected_hw[0], 1)
    if (a_img >= 1.5) != (a_exp >= 1.5):
        raise ValueError(
            f"{view} image {what} is {image_hw[0]}×{image_hw[1]} (H×W, aspect {a_img:.2f}) but the model's {view} view "
            f"is {expected_hw[0]}×{expected_hw[1]} (aspect {a_exp:.2f}): a panorama and a square tile do not "
            "match — did you swap the query (street view) and the reference (aerial tile)?"
        )
    if abs(a_img / a_exp - 1) > 0.1:
        log.warning("%s image %s has aspect %.2f, the model's input %.2f: it will be stretched",
                    view, what, a_img, a_exp)


class TorchSource:
    """Heatmaps from a torch :class:`~s4g_train.model.S4GModel` (both map modes).

    Images are decoded, resized and normalised as the model was trained and is evaluated: with the data contract
    (:class:`s4g_engine.preprocess.DataContract`: interpolation, JPEG draft, mean/std) given as ``contract``, else
    the one of the checkpoint's training config ``train_config`` (:func:`s4g_train.data.checkpoint_contract`;
    without one, e.g. a reference checkpoint, the defaults). ``ground_size`` / ``aerial_size`` override the
    input sizes (reference checkpoints do not store them).
    """

    modes = MODES

    def __init__(self, model: nn.Module, *, ground_size: tuple[int, int] | None = None,
                 aerial_size: tuple[int, int] | None = None, batch_size: int = 16,
                 device: str | torch.device = "cpu", contract: DataContract | None = None,
                 train_config: Mapping[str, Any] | None = None) -> None:
        from s4g_train.data import checkpoint_contract, polar_source_size

        self.device = torch.device(device)
        self.model = model.float().eval().to(self.device)
        contract = contract or checkpoint_contract(model, train_config)
        self.contract = contract
        self.ground_size = tuple(int(v) for v in (ground_size or contract.ground.input_size))
        self.aerial_size = tuple(int(v) for v in (aerial_size or contract.aerial.input_size))
        self.polar = bool(contract.aerial.polar)
        self.tile_size = polar_source_size(self.aerial_size) if self.polar else self.aerial_size
        self.batch_size = int(batch_size)
        self.name = f"checkpoint ({model.cfg.backbone})"

    def _decode(self, path: str, size: tuple[int, int], view: str, expected: tuple[int, int]) -> np.ndarray:
        from PIL import Image

        from s4g_train.data import load_image

        if not Path(path).is_file():
            raise FileNotFoundError(f"{view} image {str(path)!r} does not exist")
        with Image.open(path) as im:  # only the header: check the shape before the full decode
            check_view_shape((im.height, im.width), expected, view, repr(str(path)))
        spec = self.contract[view]  # the resize filter and JPEG draft decoding of training and s4g-eval
        return load_image(str(path), size, draft=spec.jpeg_draft, interpolation=spec.interpolation)

    def load_ground(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """→ (uint8 ``(Hg, Wg, 3)`` as fed, float32 ``(3, Hg, Wg)`` network input)."""
        from s4g_train.data import to_tensor

        img = self._decode(path, self.ground_size, "ground", self.ground_size)
        g = self.contract.ground
        return img, to_tensor(img, g.mean, g.std).numpy()

    def load_aerial(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """→ (uint8 tile ``(A, A, 3)`` north up, float32 network input (polar ``(3, Ha, Wa)`` if polar))."""
        from s4g_train.data import polar_tensor, to_tensor

        img = self._decode(path, self.tile_size, "aerial", self.tile_size)
        a = self.contract.aerial
        x = polar_tensor(img, self.aerial_size, a.mean, a.std) if self.polar else to_tensor(img, a.mean, a.std)
        return img, x.numpy()

    @torch.no_grad()
    def embed(self, xs: np.ndarray, view: str = "aerial") -> np.ndarray:
        """float32 ``(B, 3, H, W)`` → L2-normalised float32 ``(B, D)`` (one shared encoder: ``view`` unused)."""
        outs = [self.model.embed(torch.from_numpy(xs[i:i + self.batch_size]).to(self.device)).cpu().numpy()
                for i in range(0, len(xs), self.batch_size)]
        return np.concatenate(outs).astype(np.float32)

    def maps(self, gx: np.ndarray, ax: np.ndarray, mode: str) -> list[PairMaps]:
        return pair_maps(self.model.model, torch.from_numpy(gx).to(self.device), torch.from_numpy(ax).to(self.device),
                         mode)


class BundleSource:
    """Heatmaps (channel-mean activation only) from an exported bundle ``models/<name>/`` through ONNX Runtime.

    Needs the optional ``features`` output (``s4g-export --with-features``); preprocessing comes from the
    bundle's ``config.json`` (``s4g_engine.preprocess.ViewSpec``), exactly as the serving engine does.
    """

    modes = ("activation",)

    def __init__(self, bundle: str, *, threads: int | None = None) -> None:
        import json

        import onnxruntime as ort

        from s4g_engine.preprocess import ViewSpec

        root = Path(bundle)
        cfg_path = root / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{str(root)!r} is not an exported bundle: {cfg_path} is missing "
                                    "(make one with s4g-export --with-features)")
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        views = cfg.get("views")
        if not isinstance(views, dict) or not {"ground", "aerial"} <= set(views):
            raise ValueError(f"{cfg_path}: expected 'views' with 'ground' and 'aerial' entries, got "
                             f"{sorted(views) if isinstance(views, dict) else type(views).__name__}; "
                             "re-export the bundle")
        self.specs = {v: ViewSpec.from_config(v, views[v]) for v in ("ground", "aerial")}
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        self.sessions = {}
        for v in ("ground", "aerial"):
            path = root / str((views[v].get("files") or {}).get("fp32", f"{v}.onnx"))
            if not path.is_file():
                raise FileNotFoundError(f"bundle {str(root)!r} lacks {path.name}; re-export it with s4g-export")
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            outs = [o.name for o in sess.get_outputs()]
            if "features" not in outs:
                raise ValueError(f"{path} has no 'features' output (outputs: {outs}): heatmaps need the last feature "
                                 "map. Re-export the bundle with `s4g-export ... --with-features`, or use --checkpoint")
            if "embedding" not in outs:
                raise ValueError(f"{path} has no 'embedding' output (outputs: {outs}); re-export with s4g-export")
            self.sessions[v] = (sess, sess.get_inputs()[0].name)
        g, a = self.specs["ground"], self.specs["aerial"]
        self.ground_size, self.aerial_size, self.polar = g.input_size, a.input_size, a.polar
        self.tile_size = a.polar_source_size if a.polar else a.input_size
        self.name = f"bundle {root.name} ({cfg.get('backbone', '?')})"

    def _load(self, path: str, view: str) -> tuple[np.ndarray, np.ndarray]:
        from s4g_engine.preprocess import resize_uint8, to_uint8_rgb

        spec = self.specs[view]
        rgb = to_uint8_rgb(path)
        shown = self.tile_size if view == "aerial" else spec.input_size
        check_view_shape(rgb.shape[:2], shown, view, repr(str(path)))  # type: ignore[arg-type]
        return resize_uint8(rgb, shown, spec.interpolation), spec.prepare(rgb)  # type: ignore[arg-type]

    def load_ground(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._load(path, "ground")

    def load_aerial(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._load(path, "aerial")

    def _run(self, xs: np.ndarray, view: str) -> tuple[np.ndarray, np.ndarray]:
        sess, name = self.sessions[view]
        emb, feat = sess.run(["embedding", "features"], {name: np.ascontiguousarray(xs, dtype=np.float32)})
        emb = np.asarray(emb, dtype=np.float64)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True), np.asarray(feat)

    def embed(self, xs: np.ndarray, view: str = "aerial") -> np.ndarray:
        return np.concatenate([self._run(xs[i:i + 16], view)[0] for i in range(0, len(xs), 16)]).astype(np.float32)

    def maps(self, gx: np.ndarray, ax: np.ndarray, mode: str) -> list[PairMaps]:
        if mode != "activation":
            raise ValueError(f"heatmap mode {mode!r} needs gradients, which an ONNX bundle cannot give: use "
                             "--mode activation with --bundle, or --checkpoint for gradient-weighted maps")
        _check_inputs(torch.from_numpy(gx), torch.from_numpy(ax))
        eg, fg = self._run(gx, "ground")
        ea, fa = self._run(ax, "aerial")
        if len(eg) == 1:
            eg, fg = np.repeat(eg, len(ea), 0), np.repeat(fg, len(ea), 0)
        return [PairMaps(ground=channel_mean(fg[i]), aerial=channel_mean(fa[i]),
                         similarity=float(eg[i] @ ea[i]), mode=mode) for i in range(len(ea))]
