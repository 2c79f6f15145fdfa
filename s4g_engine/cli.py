"""Console scripts of the engine (torch-free): ``s4g-index`` and ``s4g-localise``.

``s4g-index build --model DIR --images DIR --coords CSV --out FILE``
``s4g-index build --model DIR --dataset vigor-same --root DIR [--split test] --out FILE``
``s4g-index info FILE``
``s4g-localise --model DIR --index FILE IMAGES... [--k 5] [--json | --geojson OUT]``
``s4g-localise --model DIR --demo`` (a few synthetic panoramas against freshly generated synthetic tiles)

The coords CSV (UTF-8, a byte-order mark is fine) has a header row with an image column
(``image``/``filename``/``file``/``path``/``name``, relative to ``--images``), ``lat``/``latitude`` and
``lon``/``lng``/``longitude`` (degrees), and optionally ``id``. Errors name ``file:line``.

Errors are one line on stderr with exit code 2 (``--debug`` for the traceback, :mod:`s4g_engine.console`);
output files are checked before any embedding work; ``--json`` is strict JSON (no NaN).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.console import add_debug_flag, cli_main
from s4g_engine.errors import InputError, MissingFileError
from s4g_engine.fileio import atomic_write_text, check_writable
from s4g_engine.imagecheck import IMAGE_EXTS
from s4g_engine.logs import setup_logging

log = logging.getLogger(__name__)

DEMO_MARKER = ".s4g-demo-done"


def read_coords_csv(csv_path: Path, images_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """``(image paths, coords (N, 2) lat/lon, ids)`` from a coords CSV (see the module docstring)."""
    from s4g_engine.coords_csv import read_coords_csv as read

    return read(csv_path, images_dir)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _localiser(args: argparse.Namespace, **kw: Any) -> Any:
    from s4g_engine.localiser import Localiser

    return Localiser.from_dir(args.model, device=args.device, backend=args.backend, precision=args.precision,
                              batch_size=args.batch_size, **kw)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported model bundle folder (models/NAME)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino", "tensorrt"),
                   help="encoder runtime; auto = on the CPU the fastest at full accuracy, measured once per machine")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16", "int8"),
                   help="encoder precision; auto allows bf16/int8 on the CPU only where cosine >= 0.999")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("-v", "--verbose", action="store_true")
    add_debug_flag(p)


def _index_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4g-index", description="Build or inspect an s4g reference index")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="embed reference tiles and write an index file")
    _common(b)
    b.add_argument("--images", help="folder of aerial tiles (with --coords)")
    b.add_argument("--coords", help="CSV: image,lat,lon[,id]")
    b.add_argument("--dataset", help="dataset name (cvusa|cvact|vigor-same|vigor-cross|university-d2s|…)")
    b.add_argument("--root", help="dataset root (with --dataset)")
    b.add_argument("--split", default="test", help="dataset split (with --dataset)")
    b.add_argument("--index-backend", default="auto",
                   choices=("auto", "exact", "exact-fp16", "faiss-flat", "faiss-ivfpq", "milvus"))
    b.add_argument("--out", help="index file to write (.npz)")
    b.add_argument("--tile-side-m", type=float, default=None,
                   help="the tiles' ground width in metres (kept in the index): with a model whose aerial view has "
                        "centres > 1, candidates then also give the position inside the tile")
    from s4g_engine.gallery_build import add_cluster_args

    add_cluster_args(b)  # --ray [--address], --uri for --index-backend milvus
    i = sub.add_parser("info", help="print an index file's metadata")
    i.add_argument("file")
    add_debug_flag(i)
    return p


def _dataset_references(args: argparse.Namespace) -> tuple[list[str], np.ndarray, list[str]]:
    from s4g_engine.datasets import load_split

    split = load_split(args.dataset, args.root, args.split)
    paths, coords = list(split.references), np.asarray(split.reference_gps, dtype=np.float64)
    if not paths:
        raise InputError(f"{args.dataset} {args.split} at {args.root}: no reference images found; expected the "
                         "dataset's aerial tiles (run `s4g-data check` on the folder)")
    if np.isnan(coords).any():
        raise InputError(f"{args.dataset} {args.split} at {args.root}: {int(np.isnan(coords[:, 0]).sum())} of "
                         f"{len(paths)} references have no GPS, so they cannot be localised; expected coordinates "
                         "for every reference: this dataset (or its GPS file) does not provide them")
    root = os.path.abspath(args.root)
    return paths, coords, [os.path.relpath(x, root) for x in paths]


@cli_main("s4g-index")
def index_main(argv: list[str] | None = None) -> int:
    """``s4g-index``: build an index of geo-tagged reference tiles, or describe one."""
    p = _index_parser()
    args = p.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    if args.cmd == "info":
        from s4g_engine.index import ReferenceIndex

        idx = ReferenceIndex.load(args.file)
        print(json.dumps({"backend": idx.backend, "count": len(idx), "dim": idx.dim,
                          "fingerprint": idx.fingerprint, "params": idx.params,
                          "versions": getattr(idx, "versions", 1), "tile_side_m": getattr(idx, "tile_side_m", None)},
                         indent=2, allow_nan=False))
        return 0
    if bool(args.images) != bool(args.coords) or bool(args.images) == bool(args.dataset):
        p.error("give either --images DIR --coords CSV, or --dataset NAME --root DIR")
    if args.dataset and not args.root:
        p.error("--dataset needs --root DIR")
    from s4g_engine import gallery_build

    gallery_build.check_args(p, args)
    if args.out:
        check_writable(args.out, "--out")  # before any embedding work
    if args.dataset:
        paths, coords, ids = _dataset_references(args)
    else:
        from s4g_engine.shards import read_tile_list  # CSV, or Parquet

        paths, coords, ids = read_tile_list(args.coords, args.images)
    if gallery_build.wants_cluster_build(args):
        return gallery_build.build(args, paths, coords, ids)
    with _localiser(args, index_backend=args.index_backend) as loc:
        t0 = time.perf_counter()
        loc.index_references(paths, coords, ids, progress=True, tile_side_m=args.tile_side_m)
        dt = time.perf_counter() - t0
        loc.save_index(args.out)
        print(f"indexed {len(paths)} references in {dt:.1f} s ({len(paths) / max(dt, 1e-9):.1f} images/s), "
              f"backend {loc.index.backend}, wrote {args.out}")
    return 0


def _expand_images(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
            if not found:
                raise InputError(f"folder {it!r} holds no images; expected files ending in {', '.join(IMAGE_EXTS)}")
            out.extend(found)
        elif not p.exists():
            raise MissingFileError(f"image {it!r} does not exist; expected an image file or a folder of images")
        else:
            out.append(str(p))
    return out


def _print_table(names: Sequence[str], res: Any, truth: np.ndarray | None = None,
                 truth_ids: Sequence[str] | None = None) -> None:
    from s4g_engine.geo import haversine_m

    for i, name in enumerate(names):
        print(name)
        cands = res.candidates(i)
        if not cands:
            print("  (no candidate found)")
        for c in cands:
            extra = ""
            if truth is not None:
                extra = f"  error {float(haversine_m(truth[i, 0], truth[i, 1], c['lat'], c['lon'])):8.1f} m"
            if truth_ids is not None and c["id"] == truth_ids[i]:
                extra += "  <- the true tile"
            if "refined_lat" in c:
                extra += f"  in tile: lat {c['refined_lat']:.6f}  lon {c['refined_lon']:.6f}"
            elif "shift" in c:
                extra += f"  centre shift {c['shift'][0]:+d},{c['shift'][1]:+d} px"
            print(f"  #{c['rank']}  score {c['score']:.4f}  lat {c['lat']:.6f}  lon {c['lon']:.6f}  id {c['id']}"
                  f"{extra}")


def _demo_dir(args: argparse.Namespace, settings: dict[str, Any]) -> tuple[Path, bool]:
    """The demo world's folder and whether it still has to be generated. An existing folder is only reused
    when it holds a demo world of the same settings; anything else in it is never overwritten."""
    if not args.demo_dir:
        return Path(tempfile.mkdtemp(prefix="s4g-demo-")), True
    out = Path(args.demo_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--demo-dir {str(out)!r} is a file; expected a new or empty folder for the demo world")
    marker = out / DEMO_MARKER
    if marker.is_file():
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            done = None
        if done != settings:
            raise InputError(f"--demo-dir {str(out)!r} holds a demo world made with other settings ({done}); expected "
                             f"{settings}: delete the folder or choose another --demo-dir")
        return out, False
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"--demo-dir {str(out)!r} is not empty and is not a demo world (no {DEMO_MARKER}); the demo "
                         "never writes into existing data: expected a new or empty folder")
    return out, True


def _demo(args: argparse.Namespace) -> tuple[Any, list[str], np.ndarray]:
    """Generate a small synthetic world the model has never seen (same generator settings as its training
    data, another seed), index its tiles, return (localiser, a few panoramas, their true GPS)."""
    from s4g_engine.bundle import read_bundle_config
    from s4g_engine.datasets import load_split

    try:  # the synthetic world is a separate package (s4g_synth); only the demo needs it
        from s4g_synth import generate_dataset
    except ImportError as exc:
        from s4g_engine.errors import DependencyError

        raise DependencyError(f"s4g-localise --demo needs the synthetic-world package s4g_synth ({exc}); it ships "
                              "in the s4g distribution: reinstall s4g (pip install s4g) or run without --demo") from exc

    cfg = read_bundle_config(args.model, verify=False)
    ds = cfg.get("provenance", {}).get("dataset") or {} if isinstance(cfg.get("provenance"), dict) else {}
    synth = dict(ds.get("synth") or {}) if isinstance(ds, dict) else {}
    layout = str(synth.pop("layout", "cvusa"))
    options = synth.pop("options", None) or {}
    if not isinstance(options, dict):
        options = {}
    options = {k: v for k, v in options.items() if k != "workers"}
    if args.demo_seed == synth.get("seed"):
        raise InputError(f"--demo-seed {args.demo_seed} is the seed the model was trained on; expected another seed")
    settings = {"layout": layout, "pairs": args.demo_pairs, "seed": args.demo_seed, "options": options}
    out, generate = _demo_dir(args, settings)
    if generate:
        generate_dataset(layout, out, args.demo_pairs, args.demo_seed, contact_pairs=0, **options)
        atomic_write_text(out / DEMO_MARKER, json.dumps(settings, sort_keys=True) + "\n")
    split = load_split("cvusa" if layout == "cvusa" else "vigor-same", out, "test")
    loc = _localiser(args)
    loc.index_references(split.references, split.reference_gps, [Path(r).name for r in split.references])
    q = min(args.demo_queries, len(split.queries))
    print(f"demo: synthetic {layout} world (seed {args.demo_seed}) in {out}: {len(split.references)} tiles indexed")
    args.demo_truth_ids = [Path(split.references[int(p)]).name for p in split.positive[:q]]
    return loc, list(split.queries[:q]), np.asarray(split.query_gps[:q])


def _localise_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4g-localise", description="Localise ground images against a reference index")
    _common(p)
    p.add_argument("--index", help="index file written by s4g-index build")
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument("--k", type=_positive_int, default=5)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the results as (strict) JSON")
    fmt.add_argument("--geojson", metavar="OUT", help="write the candidates as a GeoJSON FeatureCollection")
    p.add_argument("--demo", action="store_true", help="localise a few panoramas of a fresh synthetic world")
    p.add_argument("--demo-dir", default=None, help="where the demo world is generated (default: a temp dir); "
                   "must be new or empty, or a demo world of the same settings")
    p.add_argument("--demo-pairs", type=_positive_int, default=200)
    p.add_argument("--demo-queries", type=_positive_int, default=5)
    p.add_argument("--demo-seed", type=int, default=12345)
    return p


@cli_main("s4g-localise")
def localise_main(argv: list[str] | None = None) -> int:
    """``s4g-localise``: top-k GPS candidates for ground images against an index."""
    p = _localise_parser()
    args = p.parse_args(argv)
    setup_logging(args.verbose, quiet=not args.verbose)
    if args.geojson:
        check_writable(args.geojson, "--geojson")  # before any embedding work
    truth = None
    if args.demo:
        loc, images, truth = _demo(args)
    else:
        if not args.index:
            p.error("--index FILE is required (or --demo)")
        if not args.images:
            p.error("give at least one image file or folder")
        images = _expand_images(args.images)
        loc = _localiser(args)
    with loc:
        if not args.demo:
            loc.load_index(args.index)
        res = loc.localise(images, k=args.k)
        names = [str(x) for x in images]
        if args.json:
            print(json.dumps(res.to_dict(names), indent=1, allow_nan=False))
        else:
            truth_ids = getattr(args, "demo_truth_ids", None)
            _print_table(names, res, truth, truth_ids)
            if truth is not None:
                _print_demo_summary(res, truth, truth_ids or [], len(loc.index))
        if args.geojson:
            atomic_write_text(args.geojson, json.dumps(res.to_geojson(names), indent=1, allow_nan=False))
            n_points = sum(len(res.candidates(i)) for i in range(len(names)))
            print(f"wrote {args.geojson} ({n_points} candidate points)")
    return 0


def _print_demo_summary(res: Any, truth: np.ndarray, truth_ids: Sequence[str], n_index: int) -> None:
    from s4g_engine.geo import haversine_m

    err = haversine_m(truth[:, 0], truth[:, 1], res.coords[:, 0, 0], res.coords[:, 0, 1])
    hits = sum(res.ids[i][0] == t for i, t in enumerate(truth_ids))
    print(f"top-1 error: median {float(np.nanmedian(err)):.1f} m over {len(truth)} panoramas; true tile ranked "
          f"first for {hits}/{len(truth)} (index of {n_index} tiles)")
