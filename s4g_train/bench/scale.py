"""``s4g-bench scale``: galleries of millions of synthetic vectors — build time, memory, queries/s and
recall@1/@10 of the in-process backends (exact core fp32/fp16, faiss IVF-PQ) and of Milvus Lite, each against
the exact core index measured in the same run.

``s4g-bench scale --sizes 1000000 10000000 --dims 1024 256``   (the published figures, on a quiet machine)
``s4g-bench scale --quick``                                      (a smoke run: 20k and 100k, d=256)

A size whose gallery does not fit the memory budget (``--max-gb``, default 60 % of the available memory: the
exact backend holds the float32 gallery plus its own copy) is not run: its row is **extrapolated** from the
largest measured size of the same dimension (build time, memory and scan time linear in N; recall not
extrapolated), and marked ``"kind": "extrapolated"``. Measured rows are ``"kind": "measured"``. Milvus Lite
inserts through gRPC (~10⁴–10⁵ rows/s here), so it runs up to ``--milvus-max`` vectors only.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.logs import setup_logging
from s4g_train.bench.hygiene import RunGuard, write_results
from s4g_train.bench.retrieval import clustered

log = logging.getLogger(__name__)

IN_PROCESS = ("exact", "exact-fp16", "faiss-flat", "faiss-ivfpq")


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def recalls(ids: np.ndarray, exact: np.ndarray, k: int) -> dict[str, float]:
    """recall@1 (top-1 equals the exact top-1) and recall@k (overlap of the top-k sets)."""
    return {"recall_at_1": float(np.mean(ids[:, 0] == exact[:, 0])),
            "recall_at_k": float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, exact, strict=True)]))}


def _timed_search(idx: Any, q: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    idx.search(q[: min(8, len(q))], k)  # warm-up (and lazy builds)
    times, ids = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        _, ids = idx.search(q, k)
        times.append(time.perf_counter() - t)
    return len(q) / float(np.median(times)), ids


def run_in_process(backend: str, g: np.ndarray, q: np.ndarray, k: int, repeats: int, nprobe: int) -> dict[str, Any]:
    from s4g_engine.index import ReferenceIndex

    n = g.shape[0]
    r0 = rss_bytes()
    t0 = time.perf_counter()
    idx = ReferenceIndex(g.shape[1], backend=backend, nprobe=nprobe, use_gpu=False)
    idx.add(g, np.zeros((n, 2)))
    idx.bytes_per_reference()  # materialises (and trains IVF-PQ)
    build = time.perf_counter() - t0
    qps, ids = _timed_search(idx, q, k, repeats)
    row = {"backend": backend, "build_s": build, "queries_per_s": qps, "rss_delta_gb": (rss_bytes() - r0) / 2**30,
           "bytes_per_reference": idx.bytes_per_reference(), "params": {k_: v for k_, v in idx.params.items()}}
    del idx
    return {**row, "_ids": ids}


def run_milvus(g: np.ndarray, q: np.ndarray, k: int, repeats: int, index_type: str, overfetch: int) -> dict[str, Any]:
    from s4g_engine.milvus_backend import MilvusIndex

    folder = Path(tempfile.mkdtemp(prefix="s4g-scale-milvus-"))
    try:
        t0 = time.perf_counter()
        idx = MilvusIndex.create(str(folder / "g.db"), g.shape[1], fingerprint="bench", index_type=index_type,
                                 overfetch=overfetch)
        for s in range(0, g.shape[0], 50_000):
            idx.add(g[s:s + 50_000], np.zeros((min(50_000, g.shape[0] - s), 2)))
        t_insert = time.perf_counter() - t0
        idx.save()
        build = time.perf_counter() - t0
        qps, ids = _timed_search(idx, q, k, repeats)
        disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        row = {"backend": f"milvus-lite:{idx.index_type()}", "build_s": build, "insert_s": t_insert,
               "queries_per_s": qps, "disk_gb": disk / 2**30, "candidates_R": idx.candidates_for(k),
               "bytes_per_reference": idx.bytes_per_reference(), "params": {"overfetch": overfetch}}
        idx.close()
        return {**row, "_ids": ids}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _queries(g: np.ndarray, n_q: int, rng: np.random.Generator) -> np.ndarray:
    d = g.shape[1]
    q = g[rng.choice(g.shape[0], n_q, replace=False)] + 0.3 / np.sqrt(d) * rng.standard_normal((n_q, d)).astype(
        np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _extrapolate(rows: list[dict[str, Any]], d: int, n: int) -> list[dict[str, Any]]:
    """Rows for size ``n`` from the largest measured size of dimension ``d`` (linear in N; no recall)."""
    measured = [r for r in rows if r["dim"] == d and r["kind"] == "measured"]
    if not measured:
        return []
    n0 = max(r["n"] for r in measured)
    out = []
    for r in (r for r in measured if r["n"] == n0):
        f = n / n0
        e = {"n": n, "dim": d, "kind": "extrapolated", "from_n": n0, "backend": r["backend"],
             "build_s": r["build_s"] * f, "queries_per_s": r["queries_per_s"] / f,
             "memory_gb": r["bytes_per_reference"] * n / 2**30, "recall_at_1": None, "recall_at_k": None}
        if r["backend"].startswith(("faiss-ivfpq", "milvus")):
            e["queries_per_s"] = None  # sub-linear in N: not extrapolated
        out.append(e)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from s4g_engine import set_num_threads

    set_num_threads(args.threads)
    budget = int(args.max_gb * 2**30) if args.max_gb else int(0.6 * available_bytes())
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    for d in args.dims:
        for n in sorted(args.sizes):
            need = 2 * n * d * 4  # the float32 gallery + the exact index's own copy
            if need > budget:
                log.info("N=%d d=%d needs ~%.1f GB > budget %.1f GB: extrapolated", n, d, need / 2**30, budget / 2**30)
                rows += _extrapolate(rows, d, n)
                continue
            g = clustered(n, d, rng)
            q = _queries(g, args.queries, rng)
            exact_ids = None
            todo = [b for b in args.backends if b in IN_PROCESS]
            if "milvus" in args.backends and n <= args.milvus_max:
                todo.append("milvus")
            for backend in todo:
                res = (run_milvus(g, q, args.k, args.repeats, args.milvus_index, args.overfetch) if backend == "milvus"
                       else run_in_process(backend, g, q, args.k, args.repeats, args.nprobe))
                ids = res.pop("_ids")
                if backend == "exact":
                    exact_ids = ids
                row = {"n": n, "dim": d, "kind": "measured", **res, **recalls(ids, exact_ids, args.k),
                       "memory_gb": res["bytes_per_reference"] * n / 2**30}
                rows.append(row)
                log.info("N=%-9d d=%-5d %-22s build %7.1f s  %9.1f q/s  R@1 %.3f  R@%d %.3f", n, d, row["backend"],
                         row["build_s"], row["queries_per_s"], row["recall_at_1"], args.k, row["recall_at_k"])
            del g
    return {"bench": "scale", "k": args.k, "queries": args.queries, "threads": args.threads, "rows": rows,
            "memory_budget_gb": budget / 2**30, "command": "s4g-bench scale " + " ".join(args.argv)}


def table(res: dict[str, Any]) -> str:
    k = res["k"]
    lines = [f"| N | d | backend | kind | build s | memory GB | queries/s | recall@1 | recall@{k} |",
             "|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    fmt = (lambda v, p: "–" if v is None else f"{v:.{p}f}")  # noqa: E731
    for r in res["rows"]:
        lines.append(f"| {r['n']:,} | {r['dim']} | {r['backend']} | {r['kind']} | {fmt(r['build_s'], 1)} | "
                     f"{fmt(r['memory_gb'], 2)} | {fmt(r['queries_per_s'], 1)} | {fmt(r['recall_at_1'], 3)} | "
                     f"{fmt(r['recall_at_k'], 3)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s4g-bench scale", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[1_000_000, 10_000_000])
    p.add_argument("--dims", nargs="+", type=int, default=[1024, 256])
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backends", nargs="+", default=["exact", "exact-fp16", "faiss-ivfpq", "milvus"])
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--milvus-index", default="auto", help="auto|FLAT|HNSW|IVF_FLAT|IVF_PQ|DISKANN")
    p.add_argument("--milvus-max", type=int, default=1_000_000, help="largest gallery inserted into Milvus Lite")
    p.add_argument("--overfetch", type=int, default=4, help="Milvus candidates R = max(overfetch*k, k+32)")
    p.add_argument("--max-gb", type=float, default=None, help="memory budget (default 60%% of MemAvailable)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: N = 20k, 100k; d = 256; 100 queries")
    p.add_argument("--out", default="bench_results/scale.json")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.quick:
        args.sizes, args.dims, args.queries, args.repeats, args.milvus_max = [20_000, 100_000], [256], 100, 2, 20_000
    args.backends = ["exact", *[b for b in args.backends if b != "exact"]]  # the baseline first
    setup_logging(plain=True)
    guard = RunGuard.start(args.threads)
    res = run(args)
    guard.finish(res)
    write_results(Path(args.out), res)
    print(table(res))
    print(f"wrote {args.out}")
    return 0
