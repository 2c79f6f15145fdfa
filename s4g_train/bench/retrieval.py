"""``s4g-bench retrieval``: top-k queries/s vs gallery size for the index backends (exact core fp32/fp16,
faiss Flat, faiss IVF-PQ), with IVF-PQ's recall against the exact answer and bytes per reference.

Gallery and queries are synthetic L2-normalised embeddings with cluster structure (a mixture of
Gaussians, queries = perturbed gallery items), so that approximate search has realistic neighbourhoods.
The exact core is the baseline (same run, same threads). Torch is not needed.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.logs import setup_logging
from s4g_train.bench import save_chart
from s4g_train.bench.encoder import machine_info
from s4g_train.bench.hygiene import RunGuard, write_results

log = logging.getLogger(__name__)


def clustered(n: int, d: int, rng: np.random.Generator, *, clusters: int = 1024, spread: float = 0.5,
              chunk: int = 200_000) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres (float32 ``(n, d)``), built in chunks."""
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, clusters, m)] + spread / np.sqrt(d) * rng.standard_normal((m, d)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from s4g_engine import set_num_threads
    from s4g_engine.index import ReferenceIndex

    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        faiss = None
    set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    d, k = args.dim, args.k
    nmax = max(args.sizes)
    gallery = clustered(nmax, d, rng)
    rows: list[dict[str, Any]] = []
    for n in sorted(args.sizes):
        g = gallery[:n]
        q = g[rng.choice(n, args.queries, replace=False)] + 0.3 / np.sqrt(d) * rng.standard_normal(
            (args.queries, d)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exact_ids = None
        for backend in args.backends:
            if backend.startswith("faiss") and faiss is None:
                continue
            idx = ReferenceIndex(d, backend=backend, nprobe=args.nprobe, use_gpu=True)
            t0 = time.perf_counter()
            idx.add(g, np.zeros((n, 2)))
            idx.search(q[:1], k)  # builds (trains IVF-PQ) on first search
            build = time.perf_counter() - t0
            idx.search(q, k)  # warm-up
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                _, ids = idx.search(q, k)
                times.append(time.perf_counter() - t)
            sec = float(np.median(times))
            if backend == "exact":
                exact_ids = ids
            row = {"n": n, "backend": backend, "queries_per_s": args.queries / sec, "build_s": build,
                   "bytes_per_reference": idx.bytes_per_reference(), "params": dict(idx.params)}
            if exact_ids is not None:
                row["recall10_overlap"] = float(np.mean([len(set(a) & set(b)) / k
                                                         for a, b in zip(ids, exact_ids, strict=True)]))
                row["recall1_at10"] = float(np.mean([b[0] in a for a, b in zip(ids, exact_ids, strict=True)]))
            rows.append(row)
            log.info("N=%-8d %-12s %10.1f q/s  build %.1f s  %.0f B/ref  recall %s", n, backend, row["queries_per_s"],
                     build, row["bytes_per_reference"], row.get("recall10_overlap"))
            del idx
        base = next(r["queries_per_s"] for r in rows if r["n"] == n and r["backend"] == "exact")
        for r in rows:
            if r["n"] == n:
                r["ratio_vs_exact"] = r["queries_per_s"] / base
    return {"bench": "retrieval", "dim": d, "k": k, "queries": args.queries, "threads": args.threads,
            "nprobe": args.nprobe, "rows": rows, "machine": machine_info(),
            "command": "s4g-bench retrieval " + " ".join(args.argv)}


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in results["rows"]):
        rs = [r for r in results["rows"] if r["backend"] == backend]
        label = backend
        if "recall10_overlap" in rs[-1] and backend != "exact":
            label += f" (recall@10 {100 * rs[-1]['recall10_overlap']:.0f}% at N={rs[-1]['n']:,})"
        ax.loglog([r["n"] for r in rs], [r["queries_per_s"] for r in rs], marker="o", label=label)
    ax.set_xlabel("gallery size N")
    ax.set_ylabel("queries / s")
    ax.set_title(f"top-{results['k']} retrieval, d={results['dim']}, {results['queries']} queries, "
                 f"{results['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_chart(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s4g-bench retrieval", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=320, help="embedding dim (320 = convnext_atto, 1024 = convnext_base)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--backends", nargs="+", default=["exact", "exact-fp16", "faiss-flat", "faiss-ivfpq"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: N = 10k, 50k; 200 queries")
    p.add_argument("--out", default="bench_results/retrieval.json")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.quick:
        args.sizes, args.queries, args.repeats = [10_000, 50_000], 200, 2
    if "exact" not in args.backends:
        args.backends = ["exact", *args.backends]  # the baseline
    args.backends = ["exact", *[b for b in args.backends if b != "exact"]]
    setup_logging(plain=True)
    guard = RunGuard.start(args.threads)
    res = run(args)
    guard.finish(res)
    out = Path(args.out)
    write_results(out, res)
    chart(res, out.with_suffix(".png"))
    print(f"{'N':>9s} {'backend':12s} {'queries/s':>10s} {'× exact':>8s} {'B/ref':>7s} {'R@10 ovl':>8s} "
          f"{'top1∈10':>8s} {'build s':>8s}")
    for r in res["rows"]:
        print(f"{r['n']:9d} {r['backend']:12s} {r['queries_per_s']:10.1f} {r['ratio_vs_exact']:8.2f} "
              f"{r['bytes_per_reference']:7.0f} {100 * r.get('recall10_overlap', 1):7.1f}% "
              f"{100 * r.get('recall1_at10', 1):7.1f}% {r['build_s']:8.2f}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
