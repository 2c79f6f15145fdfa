"""``s4g-data check --dataset NAME --root DIR [--json]``: is this dataset folder usable, and if not, what to do.

Reads every split exactly as ``load_split`` does and reports, per split: counts against the published
dataset (docs/METHOD.md §6), missing split files (with the expected path), malformed rows (``file:line``), paths that
escape the root, missing images (first few by name), unreadable images (a sample is decoded with Pillow),
image sizes per view (raw vs scaled vs unexpected shapes such as polar-transformed tiles), GPS availability.
Exit status: 0 = usable (possibly with warnings), 1 = unusable (at least one error), 2 = bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.console import add_debug_flag, cli_main
from s4g_engine.errors import InputError
from s4g_engine.logs import setup_logging

from . import DATASET_NAMES, SPLITS, family, load_split
from ._io import MalformedRowError, PathEscapeError, SplitFileNotFoundError
from .base import EXPECTED_SIZES, PUBLISHED, CrossViewSplit

logger = logging.getLogger(__name__)

GROUPS: dict[str, tuple[str, ...]] = {
    "vigor": ("vigor-same", "vigor-cross"),
    "university": ("university-d2s", "university-s2d"),
}
CHECK_NAMES = tuple(sorted(set(DATASET_NAMES) | set(GROUPS)))
SOURCES = {
    "cvusa": "the CVUSA download (request form on the authors' page, Jacobs lab, University of Kentucky)",
    "cvact": "the CVACT download (authors' GitHub, Liumouliu/OriCNN)",
    "vigor": "VIGOR's splits.zip (authors' GitHub, Jeff-Zilence/VIGOR)",
    "university": "the University-1652 download (request form, layumi/University1652-Baseline)",
}
ASPECT_TOL = 0.03


@dataclass
class Problem:
    severity: str          # error | warning | info
    kind: str
    message: str
    fix: str
    examples: list[str] = field(default_factory=list)


@dataclass
class SplitReport:
    name: str
    split: str
    status: str = "ok"
    counts: dict[str, int] = field(default_factory=dict)
    published: dict[str, int] | None = None
    skipped: dict[str, Any] = field(default_factory=dict)
    image_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    gps: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def add(self, severity: str, kind: str, message: str, fix: str, examples: list[str] | None = None) -> None:
        self.problems.append(Problem(severity, kind, message, fix, list(examples or [])))
        order = {"ok": 0, "info": 0, "warning": 1, "error": 2}
        if order[severity] > order[self.status]:
            self.status = severity


def _splits_to_check(name: str) -> list[str]:
    # CVUSA's val and test are the same file: check it once (as "test").
    return ["train", "test"] if name == "cvusa" else list(SPLITS[name])


def _read_meta(root: Path) -> dict[str, Any]:
    try:
        info = json.loads((root / "meta.json").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_synthetic(meta: dict[str, Any]) -> bool:
    return bool(meta.get("synthetic", False)) or meta.get("generator") == "s4g-synth"


def _expected_sizes(fam: str, meta: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Nominal (w, h) per view; a synthetic folder's meta.json (tile_size, pano_size=[H, W]) overrides."""
    sizes = dict(EXPECTED_SIZES.get(fam, {}))
    try:
        if "tile_size" in meta:
            t = int(meta["tile_size"])
            sizes["satellite"] = (t, t)
        if "pano_size" in meta:
            h, w = (int(x) for x in meta["pano_size"])
            sizes["ground"] = (w, h)
    except (TypeError, ValueError):
        pass
    return sizes


def _classify_size(expected: dict[str, tuple[int, int]], view: str,
                   wh: tuple[int, int]) -> tuple[str, str, str] | None:
    """None if (w, h) is the nominal size; else (severity, message, fix)."""
    nominal = expected.get(view)
    if nominal is None or tuple(wh) == nominal:
        return None
    w, h = wh
    nw, nh = nominal
    if abs((w / h) / (nw / nh) - 1.0) <= ASPECT_TOL:
        return ("info", f"{view} images are {w}×{h}, a scaled version of the nominal {nw}×{nh}",
                "fine (scaled copies, e.g. synthetic or resized data; the model resizes its inputs)")
    if view == "satellite" and w != h:
        return ("error", f"satellite tiles are {w}×{h}, not square (nominal {nw}×{nh}): these look like "
                "polar-transformed tiles (SAFA-style), not raw north-up tiles",
                "point --root at the raw aerial tiles of the original download (s4g applies the polar "
                "transform itself when asked: model option polar_aerial)")
    return ("warning", f"{view} images are {w}×{h}; expected {nw}×{nh} (aspect {nw / nh:.2f}, got {w / h:.2f})",
            "check that these are the images of this dataset (e.g. full 2:1 panoramas where CVUSA's cropped "
            "strip is expected, or crops); training will run but numbers will not match the paper")


def _sample_images(paths: list[str], n: int) -> list[str]:
    if not paths:
        return []
    idx = np.unique(np.linspace(0, len(paths) - 1, num=min(n, len(paths))).round().astype(int))
    return [paths[i] for i in idx]


def _inspect_images(rep: SplitReport, expected: dict[str, tuple[int, int]], view: str, paths: list[str],
                    root: Path, n: int) -> None:
    from s4g_engine.imagecheck import open_image

    sizes: Counter[str] = Counter()
    shapes: dict[tuple[int, int], int] = {}
    bad: list[str] = []
    for p in _sample_images(paths, n):
        try:
            with open_image(p) as im:  # header checks (pixels, bytes) before decoding
                wh = im.size
                im.draft("RGB", (max(1, wh[0] // 8), max(1, wh[1] // 8)))  # JPEG: decode at 1/8 (fast)
                im.load()
        except Exception as exc:  # any decoder failure means unreadable
            bad.append(f"{os.path.relpath(p, root)} ({type(exc).__name__}: {exc})")
            continue
        sizes[f"{wh[0]}x{wh[1]}"] += 1
        shapes[wh] = shapes.get(wh, 0) + 1
    rep.image_sizes[view] = dict(sizes)
    if bad:
        rep.add("error", "unreadable_images", f"{len(bad)} of {min(n, len(paths))} sampled {view} images cannot "
                "be decoded", "re-download or re-extract these files (a truncated archive is the usual cause)",
                bad[:5])
    for wh in shapes:
        verdict = _classify_size(expected, view, wh)
        if verdict:
            rep.add(verdict[0], "image_size", verdict[1], verdict[2])


def check_split(name: str, split: str, root: Path, *, sample: int = 8,
                meta: dict[str, Any] | None = None) -> SplitReport:
    """Check one split; never raises for dataset problems (they become report entries)."""
    rep = SplitReport(name=name, split=split, published=PUBLISHED.get((name, split)))
    fam = family(name)
    try:
        data = load_split(name, root, split, strict=False)
    except SplitFileNotFoundError as exc:
        rep.add("error", "missing_split_file", str(exc), f"put {exc.path.name} at {exc.path} (it comes with "
                f"{SOURCES[fam]}; see DATASETS.md for the tree)", [str(exc.path)])
        return rep
    except MalformedRowError as exc:
        rep.add("error", "malformed_row", str(exc), f"fix or re-download {Path(exc.path).name}: line {exc.line} "
                "does not have the expected form (the message says which)", [exc.location])
        return rep
    except FileNotFoundError as exc:
        rep.add("error", "missing_folder", str(exc), "restore the folder named in the message (see the tree in "
                "DATASETS.md)")
        return rep
    except PathEscapeError as exc:
        rep.add("error", "path_escape", str(exc), "fix the split file named in the message: image paths must be "
                "relative to the dataset root and must not contain '..' (or re-download the file)")
        return rep
    except ValueError as exc:
        rep.add("error", "invalid_data", str(exc), "fix the split/label file named in the message (paths must be "
                "relative to the dataset root) or re-download it")
        return rep
    except ImportError as exc:
        rep.add("error", "missing_dependency", str(exc), "pip install 's4g[engine]' (scipy, pyproj)")
        return rep
    _report_loaded(rep, data, fam, root, sample, meta or {})
    return rep


def _report_loaded(rep: SplitReport, data: CrossViewSplit, fam: str, root: Path, sample: int,
                   meta: dict[str, Any]) -> None:
    synthetic = _is_synthetic(meta)
    expected = _expected_sizes(fam, meta)
    q, n = data.num_queries, data.num_references
    rep.counts = {"queries": q, "references": n, "positive_references": int(len(np.unique(data.positive)))}
    rep.skipped = {k: v for k, v in data.skipped.items()}
    if q == 0 or n == 0:
        rep.add("error", "empty_split", f"no usable {'queries' if q == 0 else 'references'} in this split",
                "the images the split file refers to are not where expected: check the tree in DATASETS.md")
    for kind in ("missing_query_images", "missing_reference_images"):
        cnt = data.skipped.get(kind, 0)
        if cnt:
            view = "query" if kind.startswith("missing_query") else "reference"
            rep.add("warning", "missing_images", f"{cnt} {view} images named by the split are missing; their "
                    "pairs were skipped", "re-extract the image archives (or accept the smaller split; "
                    "load_split(strict=True) turns this into an error)", data.skipped.get(kind + "_examples", [])[:5])
    for kind in ("positive_tile_missing", "semi_positive_tile_missing", "queries_without_reference_class"):
        if data.skipped.get(kind):
            rep.add("warning", kind, f"{data.skipped[kind]} entries: {kind.replace('_', ' ')}",
                    "restore the missing gallery images (see the examples / the missing images above)")
    if rep.published:
        exp = rep.published
        if (q, n) != (exp["queries"], exp["references"]):
            rep.add("info" if synthetic else "warning", "count_mismatch",
                    f"{q:,} queries / {n:,} references; the published dataset has {exp['queries']:,} / "
                    f"{exp['references']:,}", "fine for synthetic data or a deliberate subset; otherwise the "
                    "download is incomplete — re-download the missing parts")
    qv, rv = data.query_view, data.reference_view
    _inspect_images(rep, expected, qv, data.queries, root, sample)
    _inspect_images(rep, expected, rv, data.references, root, sample)
    qg = int(np.isfinite(data.query_gps).all(axis=1).sum())
    rg = int(np.isfinite(data.reference_gps).all(axis=1).sum())
    rep.gps = {"queries_with_gps": qg, "references_with_gps": rg,
               "utm": data.reference_utm is not None}
    if fam == "university":
        rep.gps["note"] = "University-1652 has no GPS (GPS sampling is not used there)"
    elif qg < q or rg < n:
        rep.add("warning", "gps_unavailable", f"GPS known for {qg}/{q} queries and {rg}/{n} references "
                f"({data.skipped.get('gps_problem', 'positions missing')})",
                "GPS sampling needs positions: CVUSA reads them from split_locations/all.csv — put it in the "
                "root, or train with random/DSS sampling")


def check_dataset(dataset: str, root: str | Path, *, sample: int = 8) -> dict[str, Any]:
    """Check every split of ``dataset`` (a loader name, or ``vigor`` / ``university`` for both variants)."""
    names = GROUPS.get(dataset, (dataset,))
    for nm in names:
        if nm not in SPLITS:
            raise InputError(f"unknown dataset {dataset!r}; expected one of {', '.join(CHECK_NAMES)}")
    r = Path(root).expanduser()
    report: dict[str, Any] = {"dataset": dataset, "root": str(r), "usable": False, "splits": []}
    if not r.is_dir():
        report["error"] = f"{r} is not a directory"
        return report
    r = r.resolve()
    meta = _read_meta(r)
    report["synthetic"] = _is_synthetic(meta)
    seen_university_train = False
    for nm in names:
        for sp in _splits_to_check(nm):
            if family(nm) == "university" and sp == "train":
                if seen_university_train:  # d2s and s2d share the train split
                    continue
                seen_university_train = True
            report["splits"].append(asdict(check_split(nm, sp, r, sample=sample, meta=meta)))
    errors = sum(p["severity"] == "error" for s in report["splits"] for p in s["problems"])
    warnings = sum(p["severity"] == "warning" for s in report["splits"] for p in s["problems"])
    report.update(usable=errors == 0, errors=errors, warnings=warnings)
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable report with a "what to do" line per problem."""
    lines = [f"s4g-data check: {report['dataset']} at {report['root']}"
             + (" (synthetic)" if report.get("synthetic") else "")]
    if "error" in report:
        lines += [f"  ERROR: {report['error']}", "  what to do: pass --root the dataset folder (see DATASETS.md)",
                  "verdict: UNUSABLE"]
        return "\n".join(lines)
    for s in report["splits"]:
        c = s["counts"]
        label = "val = test" if s["name"] == "cvusa" and s["split"] == "test" else s["split"]
        head = f"  [{s['name']} / {label}] {s['status'].upper()}"
        if c:
            head += f": {c['queries']:,} queries, {c['references']:,} references"
            if s["published"]:
                head += f" (published: {s['published']['queries']:,} / {s['published']['references']:,})"
        lines.append(head)
        if s["image_sizes"]:
            sizes = "; ".join(f"{v}: " + ", ".join(f"{k} ×{n}" for k, n in d.items())
                              for v, d in s["image_sizes"].items())
            lines.append(f"      image sizes (sampled): {sizes}")
        if s["gps"]:
            g = s["gps"]
            lines.append(f"      GPS: {g['queries_with_gps']:,} queries, {g['references_with_gps']:,} references"
                         + (" (+ UTM)" if g.get("utm") else "") + (f" — {g['note']}" if g.get("note") else ""))
        for p in s["problems"]:
            if p["severity"] == "info":
                lines.append(f"      note: {p['message']} — {p['fix']}")
                continue
            lines.append(f"      {p['severity'].upper()} {p['kind']}: {p['message']}")
            for ex in p["examples"][:5]:
                lines.append(f"          e.g. {ex}")
            lines.append(f"        what to do: {p['fix']}")
    verdict = ("USABLE" + (f" with {report['warnings']} warning(s)" if report["warnings"] else "")
               if report["usable"] else f"UNUSABLE: {report['errors']} error(s) — fix them and re-run")
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


@cli_main("s4g-data")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s4g-data", description="Dataset folder tools.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ck = sub.add_parser("check", help="check a dataset folder and say what to fix")
    ck.add_argument("--dataset", required=True, choices=CHECK_NAMES)
    ck.add_argument("--root", required=True, help="the dataset folder")
    ck.add_argument("--json", action="store_true", help="print the report as (strict) JSON")
    ck.add_argument("--sample", type=int, default=8, help="images decoded per view and split (default 8)")
    add_debug_flag(ck)
    args = parser.parse_args(argv)
    setup_logging(quiet=True)
    report = check_dataset(args.dataset, args.root, sample=max(1, args.sample))
    if args.json:
        print(json.dumps(report, indent=1, allow_nan=False))
    else:
        print(format_report(report))
    return 0 if report["usable"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
