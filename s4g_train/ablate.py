"""``s4g-ablate``: the supplementary's tables 1–4 on a preset, over several seeds, next to the paper's numbers.

Table 1: neighbours k of the pool K (paper: k ∈ {16, 32, 64, 128} of K=128 at batch 128, VIGOR same-area).
Table 2: loss direction (sat→street, street→sat, symmetric; VIGOR same-area).
Table 3: loss type (triplet with hardest in-batch negatives, soft-margin triplet, InfoNCE; CVUSA).
Table 4: sampling strategy (random, GPS, DSS, GPS+DSS; CVUSA and CVACT test).

Every (variant, seed) is one ``s4g-train`` run in ``<out>/t<N>-<variant>/seed<S>/`` with the preset, the shared
``--set`` overrides, the variant's own override and ``train.seed=S`` (S = the config's ``train.seed`` + 0 …
``--seeds``−1: initialisation, batches and augmentation change, the data does not). A finished run (its
``metrics.jsonl`` has a ``final`` line, or a ``collapse`` line: a stopped run is a result too) is reused, an
interrupted one resumed — so ``--seeds 5`` after ``--seeds 3`` trains only the two new seeds. Each cell is
reported as mean ± sample standard deviation over its seeds, and for every pair of rows the paper's ordering
(by R@1) is tested with Welch's t-test on the seeds: *holds* (p < 0.05, same sign), *reversed* (p < 0.05,
opposite sign) or *within noise*. One seed gives no verdict. All results go to ``<out>/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.console import cli_main
from s4g_engine.logs import setup_logging
from s4g_train.config import build_config, split_cli_overrides
from s4g_train.evaluate import write_json
from s4g_train.parsers import ablate_parser

log = logging.getLogger(__name__)

METRICS = ("R@1", "R@5", "R@10", "R@1%")
ALPHA = 0.05  # significance level of the ordering verdicts

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


def table1_k(batch_size: int) -> tuple[list[int], int]:
    """Table 1's k values and pool K scaled to ``batch_size``: the paper's k/B ∈ {1/8, 1/4, 1/2, 1} and K = B
    (batch 128, K = 128). k must stay below B (the anchor needs a place), so the k = B row runs with the
    largest even k < B — one anchor and its nearest neighbours fill the batch, which is what the paper's
    k = 128 at batch 128 amounts to. Batches above 128 keep the paper's values."""
    if batch_size > 128:
        return [16, 32, 64, 128], 128
    big_k = max(4, batch_size)
    ks = [max(2, 2 * round(big_k * f / 2)) for f in (1 / 8, 1 / 4, 1 / 2, 1)]
    cap = (batch_size - 1) // 2 * 2  # the largest even k < B
    return sorted({min(k, cap) for k in ks}), big_k


def variants(table: str, batch_size: int, k_values: list[int] | None,
             big_k: int | None) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(paper row label, run-folder slug, overrides) for each row of a table."""
    if table == "1":
        auto_k, auto_big = table1_k(batch_size)
        k_values = k_values or auto_k
        K = big_k or max(auto_big, max(k_values))
        labels = ["k=16", "k=32", "k=64", "k=128"]
        out = []
        for i, k in enumerate(k_values):
            if k >= batch_size:
                raise ValueError(f"k={k} must be smaller than the batch size {batch_size}; pass --k-values")
            label = labels[i] if i < len(labels) and len(k_values) == 4 else f"k={k}"
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


def _records(run: Path) -> list[dict[str, Any]]:
    p = run / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def final_metrics(run: Path) -> dict[str, Any] | None:
    """The run's ``final`` record (its test metrics), or None when it has none."""
    final = [r for r in _records(run) if r.get("event") == "final"]
    return final[-1] if final else None


def run_outcome(run: Path) -> dict[str, Any] | None:
    """``{"metrics": …}`` of a finished run, ``{"collapsed": …}`` of one stopped by collapse detection, else None."""
    recs = _records(run)
    final = [r for r in recs if r.get("event") == "final"]
    if final:
        return {"metrics": {k: v for k, v in final[-1].items() if k not in ("event", "wall_time")}}
    stop = [r for r in recs if r.get("event") == "collapse" and r.get("action") == "stop"]
    if stop:
        return {"collapsed": {k: v for k, v in stop[-1].items() if k not in ("event", "wall_time")}}
    return None


def run_variant(preset: str | None, config: str | None, run: Path, overrides: list[tuple[str, str]]) -> dict[str, Any]:
    """Train one (variant, seed) unless its folder already holds the outcome; returns :func:`run_outcome`."""
    from s4g_train import trainer

    done = run_outcome(run)
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
    res = run_outcome(run)
    if res is None:
        raise RuntimeError(f"ablation run {run} failed (exit code {rc}); see its metrics.jsonl / log")
    return res


# ----------------------------------------------------------------------------------------------- statistics
def summarise(values: list[float]) -> dict[str, float]:
    """mean, sample standard deviation (0 for one value), min, max and n of a cell's seeds."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def verdict(hi: list[float], lo: list[float], alpha: float = ALPHA) -> tuple[str, float | None]:
    """Does ``mean(hi) > mean(lo)`` hold on these seeds? Welch's t-test, two-sided → (verdict, p-value)."""
    if len(hi) < 2 or len(lo) < 2:
        return "single run: no verdict", None
    from scipy import stats

    a, b = np.asarray(hi, np.float64), np.asarray(lo, np.float64)
    d = float(a.mean() - b.mean())
    if a.std() == 0 and b.std() == 0:  # no spread at all: the difference is exact
        return ("within noise" if d == 0 else "holds" if d > 0 else "reversed"), (1.0 if d == 0 else 0.0)
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    if not math.isfinite(p) or p >= alpha:
        return "within noise", p
    return ("holds" if d > 0 else "reversed"), p


def orderings(table: str, rows: list[dict[str, Any]], dataset: str, metric: str = "R@1") -> list[dict[str, Any]]:
    """Every pair of rows ordered as the paper's ``metric`` orders them, with our difference and verdict."""
    prow = PAPER[table]["rows_cvact"] if table == "4" and dataset == "cvact" else PAPER[table]["rows"]
    col = METRICS.index(metric) if metric in METRICS else 4
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            pa, pb = prow.get(a["label"]), prow.get(b["label"])
            if pa is None or pb is None or len(pa) <= col:
                continue
            hi, lo = (a, b) if pa[col] >= pb[col] else (b, a)
            vh, vl = _values(hi, metric), _values(lo, metric)
            if not vh or not vl:
                continue
            v, p = verdict(vh, vl)
            out.append({"higher": hi["label"], "lower": lo["label"], "metric": metric,
                        "paper_diff": round(abs(pa[col] - pb[col]), 2),
                        "ours_diff": float(np.mean(vh) - np.mean(vl)), "p": p, "verdict": v})
    return out


def _values(row: dict[str, Any], metric: str) -> list[float]:
    return [float(r["metrics"][metric]) for r in row["runs"] if "metrics" in r and metric in r["metrics"]]


def _cell(row: dict[str, Any], metric: str) -> str:
    v = _values(row, metric)
    if not v:
        return "–"
    s = summarise(v)
    return f"{s['mean']:.2f} ± {s['sd']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"


def format_ablation(table: str, rows: list[dict[str, Any]], dataset: str) -> str:
    """Markdown: ours (mean ± sd over seeds, n) beside the paper's row; then the orderings and their verdicts."""
    paper = PAPER[table]
    prow = paper["rows_cvact"] if table == "4" and dataset == "cvact" else paper["rows"]
    hit = table in ("1", "2") or any("hit_rate" in r.get("metrics", {}) for row in rows for r in row["runs"])
    cols = list(METRICS) + (["hit_rate"] if hit else [])
    names = [c if c != "hit_rate" else "Hit Rate" for c in cols]
    head = ["variant", "run", "seeds"] + [f"ours {c}" for c in names] + [f"paper {c}" for c in names]
    lines = [paper["title"] + f" — ours on {dataset}, mean ± sd over seeds",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        n_ok = sum("metrics" in r for r in row["runs"])
        n_col = len(row["runs"]) - n_ok
        seeds = f"{n_ok}" + (f" (+{n_col} collapsed)" if n_col else "")
        p = prow.get(row["label"], [])
        theirs = [f"{v:.2f}" for v in p[:len(cols)]] + [""] * (len(cols) - len(p[:len(cols)]))
        lines.append("| " + " | ".join([row["label"], row["slug"], seeds] + [_cell(row, c) for c in cols] + theirs)
                     + " |")
    ords = orderings(table, rows, dataset)
    if ords:
        lines += ["", "| paper's ordering (R@1) | paper Δ | ours Δ | Welch p | verdict |", "|---|---|---|---|---|"]
        for o in ords:
            p = "–" if o["p"] is None else f"{o['p']:.3f}"
            lines.append(f"| {o['higher']} > {o['lower']} | {o['paper_diff']:.2f} | {o['ours_diff']:+.2f} | {p} | "
                         f"{o['verdict']} |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    rest, shared = split_cli_overrides(argv)
    p = ablate_parser()  # torch-free: s4g_train.parsers
    args = p.parse_args(rest)
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: expected ≥ 1")
    return args, shared


@cli_main("s4g-ablate")  # user errors: one line + exit 2 (--debug: traceback)
def main(argv: list[str] | None = None) -> int:
    args, shared = parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging()
    base = build_config(args.preset, args.config, shared)  # validates the shared overrides once, up front
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k_values = [int(v) for v in args.k_values.split(",")] if args.k_values else None
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    seeds = [base.train.seed + i for i in range(args.seeds)]
    results: dict[str, Any] = {"preset": args.preset, "shared_overrides": [f"{k}={v}" for k, v in shared],
                               "dataset": base.data.dataset, "seeds": seeds, "alpha": ALPHA, "tables": {}}
    texts = []
    for t in tables:
        rows: list[dict[str, Any]] = []
        for label, slug, ov in variants(t, base.train.batch_size, k_values, args.K):
            row: dict[str, Any] = {"label": label, "slug": slug, "overrides": [f"{k}={v}" for k, v in ov], "runs": []}
            rows.append(row)
            for s in seeds:
                run = out / f"t{t}-{slug}" / f"seed{s}"
                res = run_variant(args.preset, args.config, run,
                                  [*shared, ("train.name", f"t{t}-{slug}-s{s}"), *ov, ("train.seed", str(s))])
                row["runs"].append({"seed": s, "run": str(run), **res})
                row["summary"] = {m: summarise(v) for m in (*METRICS, "hit_rate") if (v := _values(row, m))}
                results["tables"][t] = {"rows": rows, "orderings": orderings(t, rows, base.data.dataset)}
                write_json(out / "ablation.json", results)  # after every run: partial results survive
        texts.append(format_ablation(t, rows, base.data.dataset))
    print("\n\n".join(texts))
    print(f"\nall runs: {out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
