"""``s4g-ablate``: the supplementary's tables 1–4 on a preset, printed next to the paper's numbers.

Table 1: neighbours k of the pool K (paper: k ∈ {16, 32, 64, 128} of K=128, VIGOR same-area).
Table 2: loss direction (sat→street, street→sat, symmetric; VIGOR same-area).
Table 3: loss type (triplet with hardest in-batch negatives, soft-margin triplet, InfoNCE; CVUSA).
Table 4: sampling strategy (random, GPS, DSS, GPS+DSS; CVUSA and CVACT test).

Every variant is one ``s4g-train`` run in ``<out>/t<N>-<variant>/`` with the preset, the shared ``--set``
overrides and the variant's own override; a finished run (its ``metrics.jsonl`` has a ``final`` line) is
reused, an interrupted one resumed. All results go to ``<out>/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from s4g_train.config import build_config, split_cli_overrides
from s4g_train.evaluate import write_json

log = logging.getLogger(__name__)

METRICS = ("R@1", "R@5", "R@10", "R@1%")

# Supplementary material (seed/sample4geo_supplementary.md): R@1, R@5, R@10, R@1% (+ hit rate for VIGOR).
PAPER: dict[str, dict[str, Any]] = {
    "1": {"title": "Table 1: neighbours k of the pool K (paper: VIGOR same-area, K=128)", "rows": {
        "k=16": [76.84, 95.24, 96.98, 99.68, 88.55], "k=32": [77.39, 95.61, 97.19, 99.65, 89.46],
        "k=64": [77.86, 95.66, 97.21, 99.61, 89.82], "k=128": [77.84, 95.42, 97.07, 99.58, 89.69]}},
    "2": {"title": "Table 2: loss direction (paper: VIGOR same-area)", "rows": {
        "Sat→Street": [74.69, 93.80, 95.81, 99.40, 86.27], "Street→Sat": [77.49, 95.66, 97.18, 99.58, 89.57],
        "Street↔Sat": [77.86, 95.66, 97.21, 99.61, 89.82]}},
    "3": {"title": "Table 3: loss function (paper: CVUSA)", "rows": {
        "Triplet Loss": [0.00, 0.06, 0.10, 1.26], "Soft-Margin Triplet": [91.83, 97.87, 98.75, 99.67],
        "InfoNCE": [98.68, 99.68, 99.78, 99.87]}},
    "4": {"title": "Table 4: sampling strategy (paper: CVUSA; CVACT test for cvact)", "rows": {
        "Random": [97.83, 99.63, 99.75, 99.89], "GPS": [97.83, 99.53, 99.72, 99.87],
        "DSS": [98.51, 99.69, 99.79, 99.85], "GPS + DSS": [98.68, 99.68, 99.78, 99.87]},
        "rows_cvact": {
        "Random": [60.57, 89.50, 92.99, 98.92], "GPS": [71.13, 90.28, 92.47, 98.09],
        "DSS": [71.04, 92.26, 94.33, 98.58], "GPS + DSS": [71.51, 92.42, 94.45, 98.70]}},
}


def variants(table: str, batch_size: int, k_values: list[int] | None, big_k: int | None) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(paper row label, run-folder slug, overrides) for each row of a table."""
    if table == "1":
        if k_values is None:
            # paper: 16/32/64/128 of K=128 (needs batch > 128); smaller batches scale the same ratios
            k_values = [16, 32, 64, 128] if batch_size > 128 else [max(2, (batch_size // 16) // 2 * 2) * m
                                                                   for m in (1, 2, 4, 8)]
        K = big_k or max(k_values)
        labels = ["k=16", "k=32", "k=64", "k=128"]
        out = []
        for i, k in enumerate(k_values):
            if k >= batch_size:
                raise ValueError(f"k={k} must be smaller than the batch size {batch_size}; pass --k-values")
            label = labels[i] if i < len(labels) else f"k={k}"
            out.append((label, f"k{k}", [("sampling.k", str(k)), ("sampling.K", str(K))]))
        return out
    if table == "2":
        return [("Sat→Street", "sat2street", [("train.loss", "sat2street")]),
                ("Street→Sat", "street2sat", [("train.loss", "street2sat")]),
                ("Street↔Sat", "both", [("train.loss", "infonce")])]
    if table == "3":
        return [("Triplet Loss", "triplet", [("train.loss", "triplet")]),
                ("Soft-Margin Triplet", "soft_triplet", [("train.loss", "soft_triplet")]),
                ("InfoNCE", "infonce", [("train.loss", "infonce")])]
    if table == "4":
        return [("Random", "random", [("sampling.strategy", "random")]),
                ("GPS", "gps", [("sampling.strategy", "gps")]),
                ("DSS", "dss", [("sampling.strategy", "dss")]),
                ("GPS + DSS", "gps_dss", [("sampling.strategy", "gps+dss")])]
    raise ValueError(f"unknown table {table!r}; expected 1, 2, 3 or 4")


def final_metrics(run: Path) -> dict[str, Any] | None:
    p = run / "metrics.jsonl"
    if not p.is_file():
        return None
    final = None
    for line in p.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("event") == "final":
                final = rec
    return final


def run_variant(preset: str | None, config: str | None, run: Path, overrides: list[tuple[str, str]]) -> dict[str, Any]:
    from s4g_train import trainer

    done = final_metrics(run)
    if done is not None:
        log.info("reusing finished run %s", run)
        return done
    sets: list[str] = []
    for k, v in overrides:
        sets += ["--set", f"{k}={v}"]
    if (run / "checkpoints" / "last.pt").is_file():
        argv = ["--resume", str(run), *sets]
    else:
        argv = [*(["--preset", preset] if preset else []), *(["--config", config] if config else []),
                "--run-dir", str(run), *sets]
    rc = trainer.main(argv)
    res = final_metrics(run)
    if rc != 0 or res is None:
        raise RuntimeError(f"ablation run {run} failed (exit code {rc}); see its metrics.jsonl / log")
    return res


def format_ablation(table: str, rows: list[dict[str, Any]], dataset: str) -> str:
    paper = PAPER[table]
    prow = paper["rows_cvact"] if table == "4" and dataset == "cvact" else paper["rows"]
    hit = any("hit_rate" in r["metrics"] for r in rows) or table in ("1", "2")
    cols = list(METRICS) + (["Hit Rate"] if hit else [])
    head = ["variant", "run"] + [f"ours {c}" for c in cols] + [f"paper {c}" for c in cols]
    lines = [paper["title"] + f" — ours on {dataset}", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        ours = [f"{m[c]:.2f}" if c in m else "" for c in METRICS] + \
               ([f"{m['hit_rate']:.2f}" if "hit_rate" in m else "–"] if hit else [])
        p = prow.get(r["label"], [])
        theirs = [f"{v:.2f}" for v in p[:len(cols)]] + [""] * (len(cols) - len(p[:len(cols)]))
        lines.append("| " + " | ".join([r["label"], r["slug"]] + ours + theirs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, shared = split_cli_overrides(argv)
    p = argparse.ArgumentParser(prog="s4g-ablate", description="Run supplementary tables 1–4 on a preset. "
                                "Shared overrides: --set section.field=value (applied to every run).")
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--config", default=None)
    p.add_argument("--tables", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
    p.add_argument("--out", default="runs/ablate", help="folder for the runs and ablation.json")
    p.add_argument("--k-values", default=None, help="table 1: comma-separated k values (default: paper's "
                                                    "16,32,64,128, scaled down for batches ≤ 128)")
    p.add_argument("--K", type=int, default=None, help="table 1: neighbour pool size (default max k)")
    args = p.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    base = build_config(args.preset, args.config, shared)  # validates the shared overrides once, up front
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k_values = [int(v) for v in args.k_values.split(",")] if args.k_values else None
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    results: dict[str, Any] = {"preset": args.preset, "shared_overrides": [f"{k}={v}" for k, v in shared],
                               "dataset": base.data.dataset, "tables": {}}
    texts = []
    for t in tables:
        rows = []
        for label, slug, ov in variants(t, base.train.batch_size, k_values, args.K):
            run = out / f"t{t}-{slug}"
            res = run_variant(args.preset, args.config, run, [*shared, ("train.name", f"t{t}-{slug}"), *ov])
            metrics = {k: v for k, v in res.items() if k not in ("event", "wall_time")}
            rows.append({"label": label, "slug": slug, "run": str(run), "overrides": [f"{k}={v}" for k, v in ov],
                         "metrics": metrics})
            results["tables"][t] = rows
            write_json(out / "ablation.json", results)  # after every run: partial results survive
        texts.append(format_ablation(t, rows, base.data.dataset))
    print("\n\n".join(texts))
    print(f"\nall runs: {out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
