"""Console scripts of the engine (torch-free): ``s4g-index`` and ``s4g-localise``.

``s4g-index build --model DIR --images DIR --coords CSV --out FILE``
``s4g-index build --model DIR --dataset vigor-same --root DIR [--split test] --out FILE``
``s4g-index info FILE``
``s4g-localise --model DIR --index FILE IMAGES... [--k 5] [--json | --geojson OUT]``
``s4g-localise --model DIR --demo`` (a few synthetic panoramas against freshly generated synthetic tiles)

The coords CSV has a header row with an image column (``image``/``filename``/``file``/``path``/``name``, relative to
``--images``), ``lat``/``latitude`` and ``lon``/``lng``/``longitude`` (degrees), and optionally ``id``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_COLS = {"image": ("image", "filename", "file", "path", "name"), "lat": ("lat", "latitude"),
         "lon": ("lon", "lng", "long", "longitude"), "id": ("id",)}


def read_coords_csv(csv_path: Path, images_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """``(image paths, coords (N, 2) lat/lon, ids)`` from a coords CSV (see the module docstring)."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"coords CSV {str(csv_path)!r} does not exist")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = {h.strip().lower(): h for h in (reader.fieldnames or [])}
        col = {k: next((header[c] for c in names if c in header), None) for k, names in _COLS.items()}
        missing = [k for k in ("image", "lat", "lon") if col[k] is None]
        if missing:
            raise ValueError(f"{csv_path}: header {reader.fieldnames} lacks column(s) {missing}; expected e.g. "
                             "'image,lat,lon' (image relative to --images, lat/lon in degrees)")
        paths, coords, ids = [], [], []
        for row_no, row in enumerate(reader, start=2):
            rel = (row[col["image"]] or "").strip()
            try:
                lat, lon = float(row[col["lat"]]), float(row[col["lon"]])
            except (TypeError, ValueError):
                raise ValueError(f"{csv_path}:{row_no}: lat/lon {row[col['lat']]!r}, {row[col['lon']]!r} are not "
                                 "numbers") from None
            p = images_dir / rel
            if not p.is_file():
                raise FileNotFoundError(f"{csv_path}:{row_no}: image {str(p)!r} does not exist")
            paths.append(str(p))
            coords.append((lat, lon))
            ids.append(str(row[col["id"]]).strip() if col["id"] else rel)
    if not paths:
        raise ValueError(f"{csv_path} lists no images")
    return paths, np.asarray(coords, dtype=np.float64), ids


def _localiser(args: argparse.Namespace, **kw: Any) -> Any:
    from s4g_engine.localiser import Localiser

    return Localiser.from_dir(args.model, device=args.device, backend=args.backend, batch_size=args.batch_size,
                              **kw)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported model bundle folder (models/NAME)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("-v", "--verbose", action="store_true")


def index_main(argv: list[str] | None = None) -> int:
    """``s4g-index``: build an index of geo-tagged reference tiles, or describe one."""
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
                   choices=("auto", "exact", "exact-fp16", "faiss-flat", "faiss-ivfpq"))
    b.add_argument("--out", required=True, help="index file to write (.npz)")
    i = sub.add_parser("info", help="print an index file's metadata")
    i.add_argument("file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "info":
            from s4g_engine.index import ReferenceIndex

            idx = ReferenceIndex.load(args.file)
            print(json.dumps({"backend": idx.backend, "count": len(idx), "dim": idx.dim,
                              "fingerprint": idx.fingerprint, "params": idx.params}, indent=2))
            return 0
        if bool(args.images) != bool(args.coords) or bool(args.images) == bool(args.dataset):
            p.error("give either --images DIR --coords CSV, or --dataset NAME --root DIR")
        if args.dataset:
            if not args.root:
                p.error("--dataset needs --root DIR")
            from s4g_engine.datasets import load_split

            split = load_split(args.dataset, args.root, args.split)
            paths, coords = list(split.references), np.asarray(split.reference_gps, dtype=np.float64)
            if np.isnan(coords).any():
                raise ValueError(f"{args.dataset} {args.split} at {args.root}: {int(np.isnan(coords[:, 0]).sum())} of "
                                 f"{len(paths)} references have no GPS, so they cannot be localised; this dataset "
                                 "(or its GPS file) does not provide reference coordinates")
            root = os.path.abspath(args.root)
            ids = [os.path.relpath(x, root) for x in paths]
        else:
            paths, coords, ids = read_coords_csv(Path(args.coords), Path(args.images))
        loc = _localiser(args, index_backend=args.index_backend)
        t0 = time.perf_counter()
        loc.index_references(paths, coords, ids, progress=True)
        dt = time.perf_counter() - t0
        loc.save_index(args.out)
        print(f"indexed {len(paths)} references in {dt:.1f} s ({len(paths) / max(dt, 1e-9):.1f} images/s), "
              f"backend {loc.index.backend}, wrote {args.out}")
        loc.close()
        return 0
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"s4g-index: error: {exc}", file=sys.stderr)
        return 2


def _expand_images(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            out.extend(sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS))
        else:
            out.append(str(p))
    return out


def _print_table(names: Sequence[str], res: Any, truth: np.ndarray | None = None,
                 truth_ids: Sequence[str] | None = None) -> None:
    from s4g_engine.geo import haversine_m

    for i, name in enumerate(names):
        print(name)
        for r in range(res.scores.shape[1]):
            lat, lon = res.coords[i, r]
            extra = ""
            if truth is not None:
                extra = f"  error {float(haversine_m(truth[i, 0], truth[i, 1], lat, lon)):8.1f} m"
            if truth_ids is not None and res.ids[i][r] == truth_ids[i]:
                extra += "  <- the true tile"
            print(f"  #{r + 1}  score {res.scores[i, r]:.4f}  lat {lat:.6f}  lon {lon:.6f}  id {res.ids[i][r]}{extra}")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _demo(args: argparse.Namespace) -> tuple[Any, list[str], np.ndarray]:
    """Generate a small synthetic world the model has never seen (same generator settings as its training
    data, another seed), index its tiles, return (localiser, a few panoramas, their true GPS)."""
    from s4g_engine.datasets import load_split
    from s4g_engine.localiser import read_bundle_config

    try:  # the synthetic world is a separate package (s4g_synth); only the demo needs it
        from s4g_synth import generate_dataset
    except ImportError as exc:
        from s4g_engine.errors import DependencyError

        raise DependencyError(f"s4g-localise --demo needs the synthetic-world package s4g_synth ({exc}); it ships "
                              "in the s4g distribution: reinstall s4g (pip install s4g) or run without --demo") from exc

    cfg = read_bundle_config(args.model, verify=False)
    ds = cfg.get("provenance", {}).get("dataset") or {}
    synth = dict(ds.get("synth") or {})
    layout = str(synth.pop("layout", "cvusa"))
    options = dict(synth.pop("options", None) or {})
    if args.demo_seed == synth.get("seed"):
        raise ValueError(f"--demo-seed {args.demo_seed} is the seed the model was trained on; pick another")
    out = Path(args.demo_dir or tempfile.mkdtemp(prefix="s4g-demo-"))
    if not (out / ".s4g-demo-done").exists():
        generate_dataset(layout, out, args.demo_pairs, args.demo_seed, force=True, contact_pairs=0, **options)
        (out / ".s4g-demo-done").write_text("ok\n")
    split = load_split("cvusa" if layout == "cvusa" else "vigor-same", out, "test")
    loc = _localiser(args)
    loc.index_references(split.references, split.reference_gps, [Path(r).name for r in split.references])
    q = min(args.demo_queries, len(split.queries))
    print(f"demo: synthetic {layout} world (seed {args.demo_seed}) in {out}: {len(split.references)} tiles indexed")
    args.demo_truth_ids = [Path(split.references[int(p)]).name for p in split.positive[:q]]
    return loc, list(split.queries[:q]), np.asarray(split.query_gps[:q])


def localise_main(argv: list[str] | None = None) -> int:
    """``s4g-localise``: top-k GPS candidates for ground images against an index."""
    p = argparse.ArgumentParser(prog="s4g-localise", description="Localise ground images against a reference index")
    _common(p)
    p.add_argument("--index", help="index file written by s4g-index build")
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument("--k", type=int, default=5)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the results as JSON")
    fmt.add_argument("--geojson", metavar="OUT", help="write the candidates as a GeoJSON FeatureCollection")
    p.add_argument("--demo", action="store_true", help="localise a few panoramas of a fresh synthetic world")
    p.add_argument("--demo-dir", default=None, help="where the demo world is generated (default: a temp dir)")
    p.add_argument("--demo-pairs", type=int, default=200)
    p.add_argument("--demo-queries", type=int, default=5)
    p.add_argument("--demo-seed", type=int, default=12345)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        truth = None
        if args.demo:
            loc, images, truth = _demo(args)
        else:
            if not args.index:
                p.error("--index FILE is required (or --demo)")
            images = _expand_images(args.images)
            if not images:
                p.error("give at least one image file or folder")
            loc = _localiser(args)
            loc.load_index(args.index)
        res = loc.localise(images, k=args.k)
        names = [str(x) for x in images]
        if args.json:
            print(json.dumps({"results": [
                {"image": names[i], "candidates": [
                    {"rank": r + 1, "score": float(res.scores[i, r]), "id": res.ids[i][r],
                     "lat": float(res.coords[i, r, 0]), "lon": float(res.coords[i, r, 1])}
                    for r in range(res.scores.shape[1])]} for i in range(len(names))],
                "timings": res.timings}, indent=1))
        else:
            truth_ids = getattr(args, "demo_truth_ids", None)
            _print_table(names, res, truth, truth_ids)
            if truth is not None:
                from s4g_engine.geo import haversine_m

                err = haversine_m(truth[:, 0], truth[:, 1], res.coords[:, 0, 0], res.coords[:, 0, 1])
                hits = sum(res.ids[i][0] == t for i, t in enumerate(truth_ids or []))
                print(f"top-1 error: median {float(np.median(err)):.1f} m over {len(names)} panoramas; true tile "
                      f"ranked first for {hits}/{len(names)} (index of {len(loc.index)} tiles)")
        if args.geojson:
            _write_json(Path(args.geojson), res.to_geojson(names))
            print(f"wrote {args.geojson} ({res.scores.size} candidate points)")
        loc.close()
        return 0
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"s4g-localise: error: {exc}", file=sys.stderr)
        return 2
