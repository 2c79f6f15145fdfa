"""``s4g-viz``: see what the model sees (supplementary §5, docs/METHOD.md §9/§10).

Subcommands (each writes files only):

* ``pair``    — one query panorama and one aerial tile: both heatmaps, the panorama's heatmap projected onto
  the tile by the inverse polar transform, the cosine similarity (and right/wrong when told);
* ``topk``    — one query and its top-k tiles among ``--references`` (files/folders) or a dataset split;
* ``gallery`` — evaluate a split, pick N random false and N random correct top-1 predictions (as in
  supplementary §5.1/§5.2), write one PNG each plus ``index.html`` and ``summary.json``;
* ``curves``  — training curves from a run's ``metrics.jsonl``.

Sources: ``--checkpoint`` (ours or a published Sample4Geo checkpoint; both map modes) or ``--bundle``
(an exported ``models/<name>/`` made with ``s4g-export --with-features``; activation maps only).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from s4g_engine.console import add_debug_flag, cli_main
from s4g_engine.errors import InputError, MissingFileError
from s4g_engine.fileio import atomic_write_text, check_writable
from s4g_engine.imagecheck import IMAGE_EXTS
from s4g_engine.logs import setup_logging

# torch (heatmaps) and matplotlib (plots) are imported where they are used, so that the parser and --help
# of s4g-viz import neither.
from s4g_train.vizopts import CMAPS, MODES, ROWS

if TYPE_CHECKING:  # pragma: no cover
    from s4g_train.heatmaps import BundleSource, TorchSource
    from s4g_train.plots import CandidatePanel, QueryPanel

log = logging.getLogger(__name__)

Source = Union["TorchSource", "BundleSource"]


# ---------------------------------------------------------------------------------------------- sources
def open_source(*, checkpoint: str | None = None, bundle: str | None = None, backbone: str | None = None,
                allow_partial: bool = False, ground_size: tuple[int, int] | None = None,
                aerial_size: tuple[int, int] | None = None, dataset: str | None = None,
                device: str = "auto") -> Source:
    """A torch checkpoint (``s4g_train.checkpoint.load_model``: ours or a reference checkpoint) or a bundle.

    Reference checkpoints do not store their input sizes: unless given, they are the paper's for
    ``dataset`` (``s4g_train.reference.paper_input_sizes``), else the :class:`ModelConfig` defaults.
    """
    from s4g_train.heatmaps import BundleSource, TorchSource

    if (checkpoint is None) == (bundle is None):
        raise InputError("give exactly one model source: --checkpoint CKPT (a .pt/.pth) or --bundle DIR (an export)")
    if bundle is not None:
        if ground_size or aerial_size:
            raise InputError("--ground-size/--aerial-size apply to checkpoints only: a bundle's config.json fixes "
                             "them")
        return BundleSource(bundle)
    from s4g_train.checkpoint import load_model

    model, info = load_model(checkpoint, backbone=backbone, allow_partial=allow_partial)
    if info.get("format") != "s4g-checkpoint" and not (ground_size and aerial_size):
        if dataset is not None:
            from s4g_train.reference import paper_input_sizes

            g, a = paper_input_sizes(dataset)
            ground_size, aerial_size = ground_size or g, aerial_size or a
        else:
            log.warning("reference checkpoint without stored input sizes: using ground %s, aerial %s; pass "
                        "--ground-size/--aerial-size (CVUSA/CVACT: 140 768 / 384 384)", ground_size or
                        model.cfg.ground_size, aerial_size or model.cfg.aerial_size)
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchSource(model, ground_size=ground_size, aerial_size=aerial_size, device=device,
                       train_config=info.get("config"))  # the run's data contract (interpolation, draft)


def _square(tile_size: Sequence[int]) -> int | None:
    return int(tile_size[0]) if tile_size[0] == tile_size[1] else None


# --------------------------------------------------------------------------------------------- explain
def explain(source: Source, query: str, references: Sequence[str], *, mode: str = "gradcam", rows: str = "full",
            horizon: float = 0.5, labels: Sequence[str] | None = None,
            correct: Sequence[bool | None] | None = None) -> tuple[QueryPanel, list[CandidatePanel]]:
    """Heatmaps of ``query`` against each reference tile.

    Returns the query panel (its heatmap is the one for ``references[0]``; the channel-mean map does not
    depend on the reference) and one candidate panel per reference with its own heatmap and the query's
    heatmap for that pair projected onto it (NaN outside the inscribed circle).
    """
    from s4g_train.heatmaps import normalise, project_panorama, upsample
    from s4g_train.plots import CandidatePanel, QueryPanel

    if not references:
        raise InputError("explain needs at least one reference tile")
    if mode not in source.modes:
        raise InputError(f"heatmap mode {mode!r} is not available from {source.name}; choose one of {source.modes}"
                         + ("" if mode not in ("gradcam",) else " (gradient-weighted maps need gradients, which only a "
                            "torch checkpoint gives: use --checkpoint)"))
    g_img, gx = source.load_ground(query)
    tiles, axs = zip(*(source.load_aerial(r) for r in references), strict=True)
    pms = source.maps(gx[None], np.stack(axs), mode)
    side = _square(source.tile_size)
    if side is None:
        log.warning("tiles are %s, not square: no inverse-polar projection", source.tile_size)
    # Only a 360° panorama wraps around and has the polar layout; a drone view (University-1652) is a photo.
    panorama = source.ground_size[1] >= 1.5 * source.ground_size[0]
    q_heat = None
    cands = []
    for k, (ref, tile, pm) in enumerate(zip(references, tiles, pms, strict=True)):
        g_heat = normalise(upsample(pm.ground, source.ground_size, wrap=panorama))
        if source.polar:  # the aerial map lives in polar space: bring it back onto the tile
            a_heat = project_panorama(normalise(upsample(pm.aerial, source.aerial_size, wrap=True)), side or 0)
        else:
            a_heat = normalise(upsample(pm.aerial, tile.shape[:2]))
        proj = project_panorama(g_heat, side, rows=rows, horizon=horizon) if side and panorama else None
        q_heat = g_heat if q_heat is None else q_heat
        cands.append(CandidatePanel(
            image=tile, heat=a_heat, projected=proj, similarity=pm.similarity,
            label=labels[k] if labels else f"#{k + 1}", correct=correct[k] if correct else None, name=Path(ref).name))
    assert q_heat is not None
    return QueryPanel(image=g_img, heat=q_heat, name=Path(query).name, panorama=panorama), cands


def visualise_pair(source: Source, query: str, reference: str, out: str, *, mode: str = "gradcam",
                   correct: bool | None = None, rows: str = "full", horizon: float = 0.5, cmap: str = "inferno",
                   alpha: float = 0.5) -> tuple[Path, float]:
    """Write the pair figure; returns (PNG path, cosine similarity)."""
    from s4g_train.plots import render_pair

    q, (c,) = explain(source, query, [reference], mode=mode, rows=rows, horizon=horizon,
                      labels=["reference"], correct=[correct])
    return render_pair(q, c, out, cmap=cmap, alpha=alpha, mode=mode), c.similarity


def embed_paths(source: Source, paths: Sequence[str], view: str, batch_size: int = 16, desc: str = "") -> np.ndarray:
    """Embed image files → float32 ``(N, D)``, with a progress bar."""
    from tqdm import tqdm

    load = source.load_ground if view == "ground" else source.load_aerial
    out = []
    for i in tqdm(range(0, len(paths), batch_size), desc=desc or f"embed {view}", unit="batch",
                  disable=len(paths) <= batch_size or not log.isEnabledFor(logging.INFO)):
        xs = np.stack([load(p)[1] for p in paths[i:i + batch_size]])
        out.append(source.embed(xs, view))
    return np.concatenate(out)


def rank_references(source: Source, query: str, references: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``references`` for ``query`` by cosine similarity → (scores (k,), indices (k,))."""
    from s4g_engine import topk_similarity

    q = embed_paths(source, [query], "ground")
    r = embed_paths(source, references, "aerial", desc="embed references")
    scores, idx = topk_similarity(q, r, min(k, len(references)))
    return np.asarray(scores[0]), np.asarray(idx[0])


def visualise_topk(source: Source, query: str, references: Sequence[str], out: str, *, k: int = 5,
                   positive: int | None = None, mode: str = "gradcam", rows: str = "full", horizon: float = 0.5,
                   cmap: str = "inferno", alpha: float = 0.5) -> tuple[Path, np.ndarray]:
    """Rank ``references``, render the top-``k`` (right/wrong marked when ``positive`` index is known)."""
    from s4g_train.plots import render_candidates

    if k < 1:
        raise InputError(f"k must be ≥ 1, got {k}")
    _, idx = rank_references(source, query, references, k)
    correct = [None if positive is None else bool(i == positive) for i in idx]
    q, cands = explain(source, query, [references[i] for i in idx], mode=mode, rows=rows, horizon=horizon,
                       labels=[f"#{n + 1}" for n in range(len(idx))], correct=correct)
    title = ""
    if positive is not None:
        hit = np.flatnonzero(idx == positive)
        title = f"ground truth at rank {hit[0] + 1}" if hit.size else f"ground truth not in the top-{len(idx)}"
    return render_candidates(q, cands, out, cmap=cmap, alpha=alpha, mode=mode, title=title), idx


# ---------------------------------------------------------------------------------------------- gallery
def gallery(source: Source, split: Any, out_dir: str, *, n: int = 8, seed: int = 0, mode: str = "gradcam",
            rows: str = "full", horizon: float = 0.5, cmap: str = "inferno", alpha: float = 0.5,
            max_queries: int | None = None) -> dict[str, Any]:
    """Evaluate ``split`` (a :class:`~s4g_engine.datasets.CrossViewSplit`), draw ``n`` random false and ``n``
    random correct top-1 predictions, write ``false_*.png``/``correct_*.png``, ``index.html``, ``summary.json``.
    Returns the summary (R@1 over the evaluated queries, chosen query indices)."""
    from tqdm import tqdm

    from s4g_engine import topk_similarity
    from s4g_train.plots import render_candidates, write_gallery_html

    out = Path(out_dir)
    nq = len(split.queries) if max_queries is None else min(max_queries, len(split.queries))
    if nq == 0 or not split.references:
        raise InputError(f"split {split.name}/{split.split} has {nq} queries and {len(split.references)} references")
    q = embed_paths(source, split.queries[:nq], "ground", desc="embed queries")
    r = embed_paths(source, split.references, "aerial", desc="embed references")
    scores, idx = topk_similarity(q, r, 1)
    top1 = np.asarray(idx)[:, 0]
    positive = np.asarray(split.positive[:nq])
    hit = top1 == positive
    rng = np.random.default_rng(seed)
    false_ids = np.sort(rng.permutation(np.flatnonzero(~hit))[:n])
    true_ids = np.sort(rng.permutation(np.flatnonzero(hit))[:n])
    sections: dict[str, list[dict[str, Any]]] = {"false predictions": [], "correct predictions": []}
    for qi in tqdm(false_ids, desc="render false", disable=not log.isEnabledFor(logging.INFO)):
        refs = [split.references[top1[qi]], split.references[positive[qi]]]
        qp, cands = explain(source, split.queries[qi], refs, mode=mode, rows=rows, horizon=horizon,
                            labels=["predicted", "ground truth"], correct=[False, None])
        png = render_candidates(qp, cands, out / f"false_{qi:06d}.png", cmap=cmap, alpha=alpha, mode=mode,
                                title=f"false prediction: cos {cands[0].similarity:.3f} vs ground truth "
                                      f"{cands[1].similarity:.3f}")
        caption = f"query {qi}: predicted cos {cands[0].similarity:.3f}, ground truth cos {cands[1].similarity:.3f}"
        sections["false predictions"].append({"png": png.name, "caption": caption})
    for qi in tqdm(true_ids, desc="render correct", disable=not log.isEnabledFor(logging.INFO)):
        png, sim = visualise_pair(source, split.queries[qi], split.references[top1[qi]],
                                  str(out / f"correct_{qi:06d}.png"),
                                  mode=mode, correct=True, rows=rows, horizon=horizon, cmap=cmap, alpha=alpha)
        sections["correct predictions"].append({"png": png.name, "caption": f"query {qi}: cos {sim:.3f}"})
    summary = {"dataset": split.name, "split": split.split, "source": source.name, "mode": mode,
               "queries": int(nq), "references": len(split.references), "R@1": float(100.0 * hit.mean()),
               "false": [int(i) for i in false_ids], "correct": [int(i) for i in true_ids], "seed": seed}
    write_gallery_html(out, sections, f"{split.name} {split.split}: R@1 {summary['R@1']:.2f}% over {nq} queries "
                       f"({source.name}, {mode})")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


# -------------------------------------------------------------------------------------------------- CLI
def _list_images(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            out += sorted(str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            out.append(str(p))
        else:
            raise MissingFileError(f"reference {it!r} is neither an image file nor a folder; expected tiles or a "
                                   "folder of tiles")
    if not out:
        raise InputError(f"no images ({', '.join(IMAGE_EXTS)}) found in {list(items)}")
    return out


def _add_source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint",
                     help="our checkpoint (runs/<name>/checkpoints/best.pt) or a published Sample4Geo .pth")
    src.add_argument("--bundle", help="exported model folder made with `s4g-export --with-features` (activation maps)")
    p.add_argument("--backbone", help="timm backbone of a reference checkpoint when it cannot be inferred")
    p.add_argument("--allow-partial", action="store_true", help="accept a partial checkpoint load (reported)")
    p.add_argument("--ground-size", type=int, nargs=2, metavar=("H", "W"), help="override the ground input size")
    p.add_argument("--aerial-size", type=int, nargs=2, metavar=("H", "W"), help="override the aerial input size")
    p.add_argument("--device", default="auto", help="torch device for checkpoints: auto | cpu | cuda[:N]")
    p.add_argument("--mode", choices=MODES, help="heatmap: gradcam (default for checkpoints) or activation")
    p.add_argument("--rows", choices=ROWS, default="full", help="panorama rows projected onto the tile")
    p.add_argument("--horizon", type=float, default=0.5, help="horizon height as a fraction (--rows below-horizon)")
    p.add_argument("--cmap", choices=CMAPS, default="inferno")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="s4g-viz", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pair", help="one query and one tile")
    _add_source_args(p)
    p.add_argument("--query", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--match", choices=("yes", "no"),
                   help="say whether the pair is the true match (shown as right/wrong)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("topk", help="one query and its top-k tiles")
    _add_source_args(p)
    p.add_argument("--query", help="panorama file (with --references)")
    p.add_argument("--references", nargs="+", help="tile files and/or folders to rank")
    p.add_argument("--positive", help="the true tile among --references (marks right/wrong)")
    p.add_argument("--dataset", help="instead of --query/--references: a dataset name (s4g_engine.datasets)")
    p.add_argument("--root")
    p.add_argument("--split", default="test")
    p.add_argument("--query-index", type=int, default=0)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--out", required=True)
    p = sub.add_parser("gallery", help="N random false and N correct predictions of an evaluation")
    _add_source_args(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-queries", type=int, help="evaluate only the first N queries (all references)")
    p.add_argument("--out", required=True, help="output folder (index.html, PNGs, summary.json)")
    p = sub.add_parser("curves", help="training curves from metrics.jsonl")
    p.add_argument("metrics", help="runs/<name>/metrics.jsonl (or the run folder)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    for sp in sub.choices.values():
        add_debug_flag(sp)
    return ap


def _topk_inputs(args: argparse.Namespace) -> tuple[str, list[str], int | None]:
    """(query, references, index of the true reference or None) of ``s4g-viz topk``."""
    if args.dataset:
        if args.query or args.references:
            raise InputError("s4g-viz topk: give either --dataset/--root/--query-index or --query/--references")
        if not args.root:
            raise InputError("s4g-viz topk: --dataset needs --root DIR")
        from s4g_engine.datasets import load_split

        split = load_split(args.dataset, args.root, args.split)
        if not 0 <= args.query_index < len(split.queries):
            raise InputError(f"--query-index {args.query_index} is outside 0..{len(split.queries) - 1}")
        return split.queries[args.query_index], list(split.references), int(split.positive[args.query_index])
    if not (args.query and args.references):
        raise InputError("s4g-viz topk: give --query and --references (or --dataset/--root)")
    refs = _list_images(args.references)
    pos = None
    if args.positive:
        matches = [i for i, r in enumerate(refs) if Path(r).resolve() == Path(args.positive).resolve()]
        if not matches:
            raise InputError(f"--positive {args.positive!r} is not among the {len(refs)} references")
        pos = matches[0]
    return args.query, refs, pos


@cli_main("s4g-viz")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    if args.cmd != "gallery":  # a folder for gallery, a file for the others: checked before any model work
        check_writable(args.out, "--out")
    if args.cmd == "curves":
        from s4g_train.plots import render_curves

        print(render_curves(args.metrics, args.out, title=args.title))
        return 0
    if getattr(args, "k", 1) < 1 or getattr(args, "n", 1) < 1:
        raise InputError("--k and --n must be >= 1")
    source = open_source(checkpoint=args.checkpoint, bundle=args.bundle, backbone=args.backbone,
                         allow_partial=args.allow_partial, ground_size=args.ground_size, aerial_size=args.aerial_size,
                         dataset=getattr(args, "dataset", None), device=args.device)
    mode = args.mode or source.modes[-1]  # gradcam when available, else activation
    style = dict(mode=mode, rows=args.rows, horizon=args.horizon, cmap=args.cmap, alpha=args.alpha)
    if args.cmd == "pair":
        match = None if args.match is None else args.match == "yes"
        png, sim = visualise_pair(source, args.query, args.reference, args.out, correct=match, **style)
        print(f"{png}  cosine similarity {sim:.4f}")
        return 0
    if args.cmd == "topk":
        query, refs, pos = _topk_inputs(args)
        png, idx = visualise_topk(source, query, refs, args.out, k=args.k, positive=pos, **style)
        print(f"{png}  top-{len(idx)}: " + ", ".join(Path(refs[i]).name for i in idx))
        return 0
    from s4g_engine.datasets import load_split

    split = load_split(args.dataset, args.root, args.split)
    summary = gallery(source, split, args.out, n=args.n, seed=args.seed, max_queries=args.max_queries, **style)
    print(f"{Path(args.out) / 'index.html'}  R@1 {summary['R@1']:.2f}% over {summary['queries']} queries; "
          f"{len(summary['false'])} false + {len(summary['correct'])} correct rendered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
