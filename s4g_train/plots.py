"""Figures (matplotlib, Agg backend, files only): heatmap overlays for pairs and top-k lists, gallery pages,
training curves from ``metrics.jsonl``.

Every figure has a fixed pixel size that depends only on the number of panels and the images' aspect
ratios (:func:`pair_figure_size`, :func:`candidates_figure_size`); files are written atomically.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from s4g_engine.errors import FormatError, InputError, MissingFileError  # noqa: E402
from s4g_engine.fileio import atomic_write_text, atomic_write_with  # noqa: E402
from s4g_train.vizopts import CMAPS  # noqa: E402,F401

log = logging.getLogger(__name__)

DPI = 100
_GOOD, _BAD, _NEUTRAL = "#1a9850", "#d73027", "#404040"
_M, _TITLE, _LABEL = 10, 64, 26  # margin, title band, panel-label band (pixels)


@dataclass(frozen=True)
class QueryPanel:
    """The query (ground view) as fed to the network: ``image`` uint8 ``(H, W, 3)``, ``heat`` ``(H, W)`` in
    [0, 1]; ``name``: shown in the title."""

    image: np.ndarray
    heat: np.ndarray
    name: str
    panorama: bool = True  # a north-aligned 360° panorama (False: a drone/ground photo, no projection)


@dataclass(frozen=True)
class CandidatePanel:
    """One aerial tile: ``image`` uint8 ``(A, A, 3)``, its own ``heat`` ``(A, A)`` and the query's heatmap
    ``projected`` onto it ``(A, A)`` (both in [0, 1], NaN = no value); ``similarity`` = cosine similarity with
    the query; ``label`` e.g. ``"#1"`` or ``"ground truth"``; ``correct``: True/False/None (unknown)."""

    image: np.ndarray
    heat: np.ndarray
    projected: np.ndarray | None
    similarity: float
    label: str
    correct: bool | None
    name: str = ""


# ------------------------------------------------------------------------------------------------ helpers
def overlay(image: np.ndarray, heat: np.ndarray, *, cmap: str = "inferno", alpha: float = 0.5) -> np.ndarray:
    """Blend a colormapped heatmap into an RGB image: uint8 ``(H, W, 3)`` + ``(H, W)`` in [0, 1] → uint8.

    Pixels where ``heat`` is NaN keep the image unchanged (e.g. outside the projected circle).
    """
    img = np.asarray(image)
    h = np.asarray(heat, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"expected a uint8 RGB image (H, W, 3), got {img.dtype} {img.shape}")
    if h.shape != img.shape[:2]:
        raise InputError(f"heatmap shape {h.shape} does not match the image {img.shape[:2]}: upsample the map to "
                         "the image size first")
    if cmap not in CMAPS:
        raise InputError(f"colormap {cmap!r} is not one of the perceptual maps {CMAPS}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    valid = np.isfinite(h)
    rgb = matplotlib.colormaps[cmap](np.clip(np.where(valid, h, 0.0), 0.0, 1.0))[..., :3] * 255.0
    out = img.astype(np.float64)
    a = alpha * valid[..., None]
    out = out * (1.0 - a) + rgb * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _save(fig: plt.Figure, out: str | os.PathLike[str]) -> Path:
    """savefig atomically (s4g_engine.fileio: temporary file, then rename), then close the figure."""
    p = Path(out)
    try:
        # no bbox_inches="tight": the pixel size stays as designed
        atomic_write_with(p, lambda f: fig.savefig(f, dpi=DPI, format="png"))
    finally:
        plt.close(fig)
    return p


class _Canvas:
    """A figure of exactly ``width × height`` pixels with panels placed in pixel coordinates (top-left origin)."""

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = int(width), int(height)
        self.fig = plt.figure(figsize=(self.w / DPI, self.h / DPI), dpi=DPI)

    def image(self, x: int, y: int, w: int, h: int, img: np.ndarray, label: str = "", color: str = _NEUTRAL,
              frame: str | None = None) -> None:
        ax = self.fig.add_axes((x / self.w, 1 - (y + h) / self.h, w / self.w, h / self.h))
        ax.imshow(img, aspect="auto", interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_color(frame or "#888888")
            s.set_linewidth(4 if frame else 0.5)
        if label:
            self.fig.text(x / self.w, 1 - (y - 5) / self.h, label, ha="left", va="bottom", fontsize=10, color=color)

    def title(self, text: str, color: str = "black", sub: str = "") -> None:
        self.fig.text(0.5, 1 - 8 / self.h, text, ha="center", va="top", fontsize=15, color=color, weight="bold")
        if sub:
            self.fig.text(0.5, 1 - 36 / self.h, sub, ha="center", va="top", fontsize=10, color=_NEUTRAL)

    def colorbar(self, x: int, y: int, w: int, h: int, cmap: str) -> None:
        ax = self.fig.add_axes((x / self.w, 1 - (y + h) / self.h, w / self.w, h / self.h))
        ax.imshow(np.linspace(0, 1, 256)[None, :], aspect="auto", cmap=cmap)
        ax.set_xticks([])
        ax.set_yticks([])
        yc = 1 - (y + h / 2) / self.h
        self.fig.text((x - 6) / self.w, yc, "heatmap: low", ha="right", va="center", fontsize=9, color=_NEUTRAL)
        self.fig.text((x + w + 6) / self.w, yc, "high", ha="left", va="center", fontsize=9, color=_NEUTRAL)


def _verdict(correct: bool | None) -> tuple[str, str]:
    if correct is None:
        return "", _NEUTRAL
    return ("correct", _GOOD) if correct else ("wrong", _BAD)


# ---------------------------------------------------------------------------------------------------- pair
def pair_figure_size(ground_hw: tuple[int, int], aerial_hw: tuple[int, int], width: int = 1500) -> tuple[int, int]:
    """(width, height) in pixels of :func:`render_pair` for these image sizes."""
    pw = (width - 3 * _M) // 2
    ph = int(round(pw * ground_hw[0] / ground_hw[1]))
    tw = (width - 4 * _M) // 3
    th = int(round(tw * aerial_hw[0] / aerial_hw[1]))
    return width, _TITLE + _LABEL + ph + _LABEL + th + 2 * _M + 24


def render_pair(query: QueryPanel, cand: CandidatePanel, out: str | os.PathLike[str], *, cmap: str = "inferno",
                alpha: float = 0.5, mode: str = "", width: int = 1500) -> Path:
    """One PNG: panorama | panorama+heatmap, then tile | tile+heatmap | tile+projected panorama heatmap."""
    W, H = pair_figure_size(query.image.shape[:2], cand.image.shape[:2], width)
    c = _Canvas(W, H)
    verdict, color = _verdict(cand.correct)
    c.title(f"cosine similarity {cand.similarity:.3f}" + (f" — {verdict}" if verdict else ""), color,
            f"query: {query.name}   reference: {cand.name}   ({cand.label}; heatmap: {mode})")
    pw = (W - 3 * _M) // 2
    ph = int(round(pw * query.image.shape[0] / query.image.shape[1]))
    y = _TITLE + _LABEL
    c.image(_M, y, pw, ph, query.image, "street view (north at the centre column)" if query.panorama else "query")
    c.image(2 * _M + pw, y, pw, ph, overlay(query.image, query.heat, cmap=cmap, alpha=alpha), "query heatmap")
    tw = (W - 4 * _M) // 3
    th = int(round(tw * cand.image.shape[0] / cand.image.shape[1]))
    y += ph + _M + _LABEL
    c.image(_M, y, tw, th, cand.image, "aerial tile (north up)", frame=color if verdict else None)
    c.image(2 * _M + tw, y, tw, th, overlay(cand.image, cand.heat, cmap=cmap, alpha=alpha), "aerial heatmap")
    if cand.projected is not None:
        c.image(3 * _M + 2 * tw, y, tw, th, overlay(cand.image, cand.projected, cmap=cmap, alpha=alpha),
                "street-view heatmap, inverse-polar projected")
    c.colorbar(W // 2 - 100, H - 20, 200, 12, cmap)
    return _save(c.fig, out)


# -------------------------------------------------------------------------------------------- candidates
def candidates_figure_size(ground_hw: tuple[int, int], n: int, min_width: int = 1200) -> tuple[int, int]:
    """(width, height) in pixels of :func:`render_candidates` for ``n`` candidate columns."""
    tw = 280
    width = max(min_width, n * tw + (n + 1) * _M)
    tw = (width - (n + 1) * _M) // n
    pw = width - 2 * _M
    ph = int(round(pw * ground_hw[0] / ground_hw[1]))
    return width, _TITLE + _LABEL + ph + 3 * (_LABEL + tw + _M) + _M + 24


def render_candidates(query: QueryPanel, cands: Sequence[CandidatePanel], out: str | os.PathLike[str], *,
                      cmap: str = "inferno", alpha: float = 0.5, mode: str = "", title: str = "") -> Path:
    """One PNG: the query panorama with its heatmap, then one column per candidate tile (tile, tile heatmap,
    the query's heatmap projected onto it), framed green/red when correctness is known."""
    if not cands:
        raise InputError("render_candidates needs at least one candidate tile")
    n = len(cands)
    W, H = candidates_figure_size(query.image.shape[:2], n)
    c = _Canvas(W, H)
    verdict, color = _verdict(cands[0].correct)
    c.title(title or (f"top-1 {verdict}" if verdict else "top candidates"), color,
            f"query: {query.name}   (heatmap: {mode}; street-view heatmap shown for {cands[0].label})")
    pw = W - 2 * _M
    ph = int(round(pw * query.image.shape[0] / query.image.shape[1]))
    y0 = _TITLE + _LABEL
    c.image(_M, y0, pw, ph, overlay(query.image, query.heat, cmap=cmap, alpha=alpha),
            "street view + heatmap" if query.panorama else "query + heatmap")
    tw = (W - (n + 1) * _M) // n
    for k, cand in enumerate(cands):
        x = _M + k * (tw + _M)
        v, col = _verdict(cand.correct)
        y = y0 + ph + _M + _LABEL
        c.image(x, y, tw, tw, cand.image, f"{cand.label}  cos {cand.similarity:.3f}  {v}", col,
                frame=col if v else None)
        y += tw + _M + _LABEL
        c.image(x, y, tw, tw, overlay(cand.image, cand.heat, cmap=cmap, alpha=alpha), "aerial heatmap")
        y += tw + _M + _LABEL
        if cand.projected is not None:
            c.image(x, y, tw, tw, overlay(cand.image, cand.projected, cmap=cmap, alpha=alpha), "street view, projected")
    c.colorbar(W // 2 - 100, H - 20, 200, 12, cmap)
    return _save(c.fig, out)


# ------------------------------------------------------------------------------------------------ gallery
def write_gallery_html(out_dir: str | os.PathLike[str], sections: dict[str, list[dict[str, Any]]], title: str) -> Path:
    """A static ``index.html`` in ``out_dir`` listing PNGs by section.

    ``sections``: heading → list of ``{"png": relative path, "caption": text}``.
    """
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:.5em;"
             "vertical-align:top}img{max-width:46vw;border:1px solid #ccc}figcaption{font-size:.9em}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, items in sections.items():
        parts.append(f"<h2>{html.escape(heading)} ({len(items)})</h2>")
        if not items:
            parts.append("<p>none</p>")
        for it in items:
            src = html.escape(str(it["png"]), quote=True)
            parts.append(f"<figure><a href='{src}'><img src='{src}' loading='lazy'></a>"
                         f"<figcaption>{html.escape(str(it['caption']))}</figcaption></figure>")
    p = Path(out_dir) / "index.html"
    atomic_write_text(p, "\n".join(parts) + "\n")
    return p


# ------------------------------------------------------------------------------------------------- curves
def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse ``metrics.jsonl`` (one JSON object per line; blank lines ignored); errors name ``file:line``."""
    from s4g_engine.datasets._io import read_text_lines

    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise MissingFileError(f"metrics file {str(p)!r} does not exist; expected runs/<name>/metrics.jsonl (or "
                               "the run folder)")
    rows = []
    for n, line in enumerate(read_text_lines(p, "metrics file"), 1):  # UTF-8 (BOM ok), size-limited
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{p}:{n}: not a JSON object ({exc.msg}); expected one JSON object per line") from exc
        if not isinstance(row, dict) or "event" not in row:
            raise FormatError(f"{p}:{n}: expected a JSON object with an 'event' field ('epoch' or 'eval'), got "
                              f"{line.strip()[:80]!r}")
        rows.append(row)
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and isinstance(r.get("epoch"), (int, float)):
            xs.append(float(r["epoch"]))
            ys.append(float(v))
    return xs, ys


CURVES_SIZE = (1400, 900)


def render_curves(metrics: str | os.PathLike[str], out: str | os.PathLike[str], *, title: str = "") -> Path:
    """2×2 PNG (:data:`CURVES_SIZE` pixels): recall per evaluation (R@1, R@5 per split), training loss,
    logit scale exp(t), batch hardness (mean positive-vs-hardest-negative similarity; GPS distance on a
    second axis when logged) per epoch."""
    rows = read_metrics(metrics)
    epochs = [r for r in rows if r["event"] == "epoch"]
    evals = [r for r in rows if r["event"] == "eval"]
    if not epochs and not evals:
        raise FormatError(f"{metrics}: no 'epoch' or 'eval' events to plot; expected the metrics.jsonl of a run")
    W, H = CURVES_SIZE
    fig, axes = plt.subplots(2, 2, figsize=(W / DPI, H / DPI), dpi=DPI)
    fig.suptitle(title or str(metrics), fontsize=12)
    ax = axes[0, 0]
    for split in sorted({str(r.get("split", "")) for r in evals}):
        sub = [r for r in evals if str(r.get("split", "")) == split]
        for key, style in (("R@1", "-o"), ("R@5", "--s")):
            xs, ys = _series(sub, key)
            if xs:
                ax.plot(xs, ys, style, ms=4, label=f"{key} {split}".strip())
    ax.set(title="recall per evaluation", xlabel="epoch", ylabel="%")
    for a, key, label in ((axes[0, 1], "loss", "training loss"), (axes[1, 0], "logit_scale", "logit scale exp(t)")):
        xs, ys = _series(epochs, key)
        if xs:
            a.plot(xs, ys, "-o", ms=3)
        a.set(title=label, xlabel="epoch")
    ax = axes[1, 1]
    xs, ys = _series(epochs, "hardness_sim")
    if xs:
        ax.plot(xs, ys, "-o", ms=3, color="C0", label="hardest in-batch negative (cos)")
    ax.set(title="batch hardness", xlabel="epoch", ylabel="cosine similarity")
    xg, yg = _series(epochs, "hardness_gps_m")
    if xg:
        ax2 = ax.twinx()
        ax2.plot(xg, yg, "-s", ms=3, color="C3", label="nearest in-batch sample (m)")
        ax2.set_ylabel("metres", color="C3")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax2.legend(h1 + h2, l1 + l2, loc="best", fontsize=8)  # one legend above both axes
    # shade the epochs that used similarity-based (DSS) batches, so their effect on the curves is visible
    dss = [float(r["epoch"]) for r in epochs if "dss" in str(r.get("sampling", "")).lower()
           and isinstance(r.get("epoch"), (int, float))]
    all_e = [float(r["epoch"]) for r in rows if isinstance(r.get("epoch"), (int, float))]
    for a in axes.flat:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if all_e:
            a.set_xlim(min(all_e) - 0.5, max(all_e) + 0.5)  # the same epoch axis in every panel
        for k, e in enumerate(dss):
            a.axvspan(e - 0.5, e + 0.5, color="#f0e6ff", zorder=0, label="DSS sampling" if k == 0 else None)
        if not a.lines:
            a.text(0.5, 0.5, "not logged", transform=a.transAxes, ha="center", va="center", color="#999999")
        elif a.get_legend_handles_labels()[0] and not (a is ax and xg):
            a.legend(loc="best", fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.94, bottom=0.07, top=0.91, hspace=0.35, wspace=0.22)
    return _save(fig, out)
