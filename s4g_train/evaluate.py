"""Evaluation: embed both views of a split, compute the metrics of docs/METHOD.md §7, ``s4g-eval`` CLI.

:func:`evaluate_split` is backend-agnostic: it takes two functions ``paths -> float32 (n, D)`` embeddings
(torch here; an exported ONNX bundle can plug in its own) and never builds a Q×N matrix (the metrics go
through the core's streaming ``positive_ranks``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from s4g_engine.console import cli_main
from s4g_engine.fileio import atomic_write_text, atomic_write_with
from s4g_engine.logs import setup_logging
from s4g_engine.preprocess import DataContract
from s4g_engine.tile_centres import centre_grid, grouped_ranks, shift_to_offset
from s4g_train.data import ImageStore, ViewDataset, checkpoint_contract, tile_side_px
from s4g_train.device import autocast_context, pick_amp, pick_device, use_device_preprocess
from s4g_train.feed import view_batches
from s4g_train.model import S4GModel
from s4g_train.parsers import eval_parser

log = logging.getLogger(__name__)

EmbedFn = Callable[[Sequence[str]], np.ndarray]
METRIC_KEYS = ("R@1", "R@5", "R@10", "R@1%", "hit_rate", "AP")


@torch.no_grad()
def embed_dataset(model: S4GModel, dataset: Any, *, batch_size: int = 128, device: torch.device | str = "cpu",
                  amp_dtype: torch.dtype | None = None, num_workers: int = 0, desc: str = "embed",
                  progress: bool = True, device_preprocess: bool | None = None,
                  to_numpy: bool = True) -> np.ndarray | torch.Tensor:
    """Embed every item of a :class:`ViewDataset` in eval mode → float32 ``(len(dataset), D)`` (L2-normalised).

    ``device_preprocess`` (None = auto: on with CUDA) sends uint8 images to the device and normalises there
    (:func:`s4g_train.feed.view_batches`: from the RAM cache without a loader when the store is cached); the
    CPU path normalises in the loader. The embeddings stay on the device until the end: one transfer
    (``to_numpy``), or none — ``to_numpy=False`` returns the device tensor (DSS mining searches it there).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    on_device = use_device_preprocess(device_preprocess, device)
    out = torch.empty((len(dataset), model.embed_dim), dtype=torch.float32, device=device)
    # the loader gets its own generator: embedding must not consume the global torch RNG (exact resume, tested)
    batches = view_batches(dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                           on_device=on_device, channels_last=True)
    total = -(-len(dataset) // max(1, batch_size))
    try:
        for x, idx in tqdm(batches, total=total, desc=desc, leave=False, disable=not progress, mininterval=1.0):
            with autocast_context(device, amp_dtype):
                e = model.embed(x)
            out[torch.from_numpy(idx).to(device)] = e.float()
    finally:
        model.train(was_training)
    return out.cpu().numpy() if to_numpy else out


def torch_embed_fns(model: S4GModel, contract: DataContract, *, batch_size: int = 128,
                    device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
                    num_workers: int = 0, progress: bool = True,
                    stores: dict[str, ImageStore] | None = None,
                    device_preprocess: bool | None = None) -> tuple[EmbedFn, EmbedFn]:
    """(embed_ground, embed_aerial) functions for :func:`evaluate_split` backed by a torch model, with the
    images preprocessed by ``contract`` (``s4g_train.data.data_contract`` / ``checkpoint_contract``). With
    ``contract.aerial.centres`` = n > 1 the aerial function returns n·n rows per tile, tile-major (§9.1)."""

    def make(view: str) -> EmbedFn:
        def fn(paths: Sequence[str]) -> np.ndarray:
            store = (stores or {}).get(view)
            if store is not None and store.paths != list(paths):
                store = None
            spec = contract[view]
            shifts = centre_grid(spec.centres, spec.stage_size[0]) if spec.centres > 1 else None
            ds = ViewDataset(paths, spec, store=store, shifts=shifts)  # centres > 1: S rows per tile (§9.1)
            return embed_dataset(model, ds, batch_size=batch_size, device=device, amp_dtype=amp_dtype,
                                 num_workers=num_workers, desc=f"embed {view}", progress=progress,
                                 device_preprocess=device_preprocess)
        return fn

    return make("ground"), make("aerial")


def embed_training_pairs(model: S4GModel, split: Any, contract: DataContract, ids: np.ndarray | None = None, *,
                         grounds: ImageStore | None = None, aerials: ImageStore | None = None,
                         batch_size: int = 128, device: torch.device | str = "cpu",
                         amp_dtype: torch.dtype | None = None, num_workers: int = 0, progress: bool = True,
                         device_preprocess: bool | None = None, to_numpy: bool = True,
                         camera_px: np.ndarray | None = None) -> tuple[Any, Any, np.ndarray]:
    """Un-augmented embeddings for DSS mining (docs/METHOD.md §4): training queries ``ids`` (None = all) and the
    references they are paired with → ``(q (n, D), r (m, D), pos (n,))``, ``r[pos[i]]`` = query i's positive.

    ``grounds`` / ``aerials``: the training dataset's image stores, reused (a cached store serves any subset
    from RAM). ``to_numpy=False`` leaves the embeddings on the device, for the CUDA top-k. ``camera_px`` (per
    training query, :func:`s4g_train.data.camera_stage_px`; with ``model.tile_centres`` > 1): each tile is
    embedded re-centred on the camera of the first of these queries it is the positive of — as training shows
    the tile of the sample that stands for it in the neighbour lists (§9.1), without the jitter.
    """
    q_ids = np.arange(len(split.queries)) if ids is None else np.asarray(ids, np.int64)
    r_ids = np.unique(split.positive[q_ids])
    gstore = grounds if ids is None else (grounds.subset(q_ids) if grounds is not None and grounds.cached else None)
    every_ref = ids is None and len(r_ids) == len(split.references)
    astore = aerials if every_ref else (aerials.subset(r_ids) if aerials is not None and aerials.cached else None)
    gq = ViewDataset([split.queries[i] for i in q_ids], contract.ground, store=gstore)
    shifts = None
    if camera_px is not None:
        pos = split.positive[q_ids]
        first = np.unique(pos, return_index=True)[1]  # the first query of each tile, in r_ids order
        shifts = np.rint(np.asarray(camera_px, np.float64)[q_ids[first]]).astype(np.int64)
    gr = ViewDataset([split.references[i] for i in r_ids], contract.aerial, store=astore, image_shifts=shifts)
    kw: dict[str, Any] = dict(batch_size=batch_size, device=device, amp_dtype=amp_dtype, num_workers=num_workers,
                              progress=progress, device_preprocess=device_preprocess, to_numpy=to_numpy)
    q = embed_dataset(model, gq, desc="mine ground", **kw)
    r = embed_dataset(model, gr, desc="mine aerial", **kw)
    return q, r, np.searchsorted(r_ids, split.positive[q_ids])


def subset_split(split: Any, max_queries: int | None) -> Any:
    """The first ``max_queries`` queries of a split (references unchanged), for quick evaluations."""
    import dataclasses

    if max_queries is None or max_queries >= len(split.queries):
        return split
    n, q = int(max_queries), len(split.queries)
    kw = {}
    for f in dataclasses.fields(split):
        v = getattr(split, f.name)
        if f.name in ("queries", "query_gps", "positive", "semi_positives", "offsets", "query_classes") \
                and v is not None and len(v) == q:
            v = v[:n]
        kw[f.name] = v
    return type(split)(**kw)


def version_offsets_m(contract: DataContract, split: Any) -> np.ndarray | None:
    """(north_m, east_m) of each tile-centre version of ``contract`` (docs/METHOD.md §9.1) on ``split``'s tiles:
    ``(S, 2)``, or None when the split does not say how many metres a pixel is (no refined position then)."""
    spec = contract.aerial
    mpp = getattr(split, "metres_per_pixel", None)
    if mpp is None or not np.isfinite(mpp) or not len(split.references):
        return None
    side = tile_side_px(split.references[0])
    return shift_to_offset(centre_grid(spec.centres, spec.stage_size[0]), float(mpp) * side / spec.stage_size[0])


def versions_kwargs(contract: DataContract, split: Any) -> dict[str, Any]:
    """The ``n_versions`` / ``version_offsets`` arguments of :func:`evaluate_split` for a model's contract."""
    n = contract.aerial.centres
    if n == 1:
        return {}
    return {"n_versions": n * n, "version_offsets": version_offsets_m(contract, split)}


def evaluate_split(embed_ground_fn: EmbedFn, embed_aerial_fn: EmbedFn, split: Any, *,
                   max_queries: int | None = None, n_versions: int = 1,
                   version_offsets: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Embed queries and references of ``split`` and compute the paper's metrics (percent).

    Returns ``(metrics, query_emb (Q, D), ref_emb (N·n_versions, D))``. Metrics: R@1/5/10/1% (+ ``hit_rate``
    when the split has semi-positives, VIGOR metre errors when it has offsets, AP for University-1652).
    ``n_versions`` > 1: ``embed_aerial_fn`` gives that many rows per tile (tile-major) and a tile scores the best
    of them (docs/METHOD.md §9.1); with ``version_offsets`` ((S, 2) north/east metres of each version's centre)
    the metre errors are also given for the refined position (``metre_refined_*``: the top-1 tile's best
    version's centre instead of the tile centre).
    """
    from s4g_engine import metrics as M

    split = subset_split(split, max_queries)
    t0 = time.perf_counter()
    q = np.ascontiguousarray(embed_ground_fn(split.queries), np.float32)
    r = np.ascontiguousarray(embed_aerial_fn(split.references), np.float32)
    t_embed = time.perf_counter() - t0
    semi = split.semi_positives if split.semi_positives.size else None
    if n_versions > 1:
        res = _grouped_metrics(q, r, split, semi, n_versions, version_offsets)
    elif split.query_classes is not None and split.reference_classes is not None:
        # University-1652: every gallery item of the query's class is a true match (sat→drone has many), so
        # R@k and AP come from the class labels, as the University-1652 reference evaluation computes them.
        res = dict(M.university_metrics(q, r, split.query_classes, split.reference_classes))
    else:
        res = dict(M.retrieval_metrics(q, r, split.positive, semi))
    if n_versions == 1 and split.offsets.size and np.isfinite(split.reference_gps).all():
        # VIGOR: metre error of the top-1 tile's centre against the labelled position (positive tile centre +
        # pixel offset × metres/px; docs/METHOD.md §7)
        truth = M.vigor_true_latlon(split.reference_gps, split.positive, split.offsets)
        errs = M.localisation_errors(q, r, split.reference_gps, truth)
        res.update({f"metre_{k}": float(v) for k, v in errs.items()})
    res = {k: float(v) for k, v in res.items()}
    if n_versions > 1:
        res["tile_versions"] = float(n_versions)
    res["queries"] = float(len(split.queries))
    res["references"] = float(len(split.references))
    res["embed_s"] = round(t_embed, 3)
    return res, q, r


def _grouped_metrics(q: np.ndarray, r: np.ndarray, split: Any, semi: np.ndarray | None, n_versions: int,
                     version_offsets: np.ndarray | None) -> dict[str, float]:
    """The metrics of :func:`evaluate_split` when every tile has ``n_versions`` rows (docs/METHOD.md §9.1)."""
    from s4g_engine import metrics as M
    from s4g_engine.geo import offset_latlon

    if split.query_classes is not None:
        raise ValueError("tile centres (model.tile_centres > 1) are for one positive tile per query (VIGOR), not "
                         "for class-labelled galleries (University-1652)")
    if r.shape[0] != n_versions * len(split.references):
        raise ValueError(f"expected {n_versions} aerial rows per tile ({n_versions * len(split.references)}), got "
                         f"{r.shape[0]}")
    g = grouped_ranks(q, r, n_versions, split.positive, semi)
    res = dict(M.ranks_to_metrics(g["rank"], len(split.references)))
    if semi is not None and semi.shape[1] > 0:
        res["hit_rate"] = 100.0 * float(np.mean(g["hit"]))
    if split.offsets.size and np.isfinite(split.reference_gps).all():
        truth = M.vigor_true_latlon(split.reference_gps, split.positive, split.offsets)
        top = split.reference_gps[g["top1"]]
        res.update({f"metre_{k}": float(v) for k, v in M.metre_errors(top, truth).items()})
        if version_offsets is not None:
            off = np.asarray(version_offsets, np.float64)[g["top1_version"]]
            lat, lon = offset_latlon(top[:, 0], top[:, 1], off[:, 0], off[:, 1])
            res.update({f"metre_refined_{k}": float(v)
                        for k, v in M.metre_errors(np.column_stack([lat, lon]), truth).items()})
    return res


#: VIGOR columns of :func:`format_table` (metric key → header): hit rate and the top-1 tile's metre error.
VIGOR_COLUMNS = {"hit_rate": "hit rate", "metre_median_m": "median m", "metre_mean_m": "mean m",
                 "metre_acc@10m": "≤10 m %", "metre_acc@25m": "≤25 m %", "metre_acc@50m": "≤50 m %",
                 "metre_refined_median_m": "refined median m"}


def format_table(rows: dict[str, dict[str, float]], keys: Sequence[str] = ("R@1", "R@5", "R@10", "R@1%")) -> str:
    """A markdown table: one row per name, columns = keys present in any row (+ hit rate, metre errors and AP
    when a row has them)."""
    headers = {**VIGOR_COLUMNS, "AP": "AP"}
    extra = [k for k in headers if any(k in v for v in rows.values())]
    cols = list(keys) + extra
    names = [headers.get(c, c) for c in cols]
    lines = ["| " + " | ".join(["model"] + names) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, m in rows.items():
        cells = [f"{m[c]:.2f}" if c in m and m[c] is not None else "" for c in cols]
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path``, atomically (parent folders are created)."""
    atomic_write_text(path, json.dumps(obj, indent=2))


def save_npy(path: str | os.PathLike[str], arr: np.ndarray) -> None:
    """Write ``arr`` as ``.npy`` (no pickle) to ``path``, atomically."""
    atomic_write_with(path, lambda f: np.save(f, arr, allow_pickle=False))


@cli_main("s4g-eval")  # user errors: one line + exit 2 (--debug: traceback)
def main(argv: list[str] | None = None) -> int:
    """``s4g-eval CHECKPOINT [--dataset D --root DIR --split S] [--out JSON] [--save-embeddings DIR]``."""
    from s4g_engine.datasets import load_split
    from s4g_train.checkpoint import load_model

    args = eval_parser().parse_args(argv)  # torch-free parser: s4g_train.parsers
    setup_logging()

    try:
        model, info = load_model(args.checkpoint, backbone=args.backbone, allow_partial=args.allow_partial,
                                 ground_size=args.ground_size, aerial_size=args.aerial_size, dataset=args.dataset)
    except (ValueError, FileNotFoundError) as exc:
        print(f"s4g-eval: error: cannot load {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    data_cfg = (info.get("config") or {}).get("data", {})
    dataset = args.dataset or data_cfg.get("dataset")
    root = args.root or data_cfg.get("resolved_root") or data_cfg.get("root")
    split_name = args.split or data_cfg.get("eval_split") or "test"
    if not dataset or not root:
        print("s4g-eval: the checkpoint does not name its dataset; pass --dataset and --root", file=sys.stderr)
        return 2
    split = load_split(dataset, root, split_name)
    device = pick_device(args.device)
    amp_dtype, _ = pick_amp(args.amp, device)
    model.to(device)
    contract = checkpoint_contract(model, info.get("config"))  # as trained (and as s4g-export records it)
    eg, ea = torch_embed_fns(model, contract, batch_size=args.batch_size, device=device,
                             amp_dtype=amp_dtype, num_workers=args.workers)
    res, q, r = evaluate_split(eg, ea, split, max_queries=args.max_queries, **versions_kwargs(contract, split))
    name = f"{Path(args.checkpoint).name} on {dataset}/{split_name}"
    print(format_table({name: res}))
    out = args.out or f"{args.checkpoint}.eval-{dataset}-{split_name}.json"
    write_json(out, {"checkpoint": str(args.checkpoint), "dataset": dataset, "root": str(root),
                     "split": split_name, "metrics": res, "epoch": info.get("epoch"),
                     "checkpoint_format": info.get("format"), "backbone": model.cfg.backbone,
                     "ground_size": list(model.cfg.ground_size), "aerial_size": list(model.cfg.aerial_size),
                     "input_sizes_from": info.get("input_sizes_from")})
    print(f"metrics written to {out}")
    if args.save_embeddings:
        d = Path(args.save_embeddings)
        d.mkdir(parents=True, exist_ok=True)
        sub = subset_split(split, args.max_queries)
        save_npy(d / "query_emb.npy", q)
        save_npy(d / "ref_emb.npy", r)
        save_npy(d / "positive.npy", np.asarray(sub.positive, np.int64))
        if sub.semi_positives.size:
            save_npy(d / "semi_positives.npy", np.asarray(sub.semi_positives, np.int64))
        print(f"embeddings written to {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
