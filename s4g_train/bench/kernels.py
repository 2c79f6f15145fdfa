"""``s4g-bench kernels``: the compiled core against the libraries one would otherwise use, same run,
same thread count for every contender.

* ``polar_transform`` (uint8 → normalised float32, fused) vs ``cv2.remap`` with precomputed float maps
  + ``astype(float32)`` + per-channel normalisation, and vs a NumPy gather reference (precomputed
  indices/weights); batch 256 × 512²×3 → 128×512 (target ≥ 1.5× cv2.remap).
* ``topk_similarity`` vs faiss ``IndexFlatIP`` and ``torch.mm`` + ``torch.topk`` (when importable):
  d=1024, N=100,000, Q=1,000, k=10, float32 (target ≥ 1.0× faiss); index agreement is reported.
* ``positive_ranks`` vs chunked NumPy matmul + count: time and peak extra heap memory (malloc in use,
  sampled while each contender runs), which must stay O(Q + N·d).

Prints a table and writes JSON (``--out``). Timings are the best of ``--repeat`` runs. torch, faiss and
cv2 are optional and imported inside functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import s4g_engine

log = logging.getLogger(__name__)

FULL = {"polar": dict(batch=256, tile=512, height=128, width=512, numpy_batch=16),
        "topk": dict(q=1000, n=100_000, d=1024, k=10),
        "ranks": dict(q=1000, n=100_000, d=1024, chunk=8192)}
QUICK = {"polar": dict(batch=16, tile=256, height=64, width=256, numpy_batch=4),
         "topk": dict(q=200, n=10_000, d=256, k=10),
         "ranks": dict(q=200, n=10_000, d=256, chunk=2048)}
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


# ---------------------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------------------
def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of `repeat` runs (after one warm-up) and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _malloc_in_use() -> Callable[[], int] | None:
    """Bytes currently allocated through malloc (glibc mallinfo2: heap + mmapped chunks), or None."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fields = ["arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                  "keepcost"]

        class MallInfo2(ctypes.Structure):
            _fields_ = [(f, ctypes.c_size_t) for f in fields]

        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        m = libc.mallinfo2()
        return int(m.uordblks + m.hblkhd)

    return in_use


def peak_memory(fn: Callable[[], Any], interval: float = 0.0005) -> tuple[float | None, Any]:
    """Peak extra heap memory (MiB) while fn runs, sampled every `interval` s from a second thread.

    Counts every malloc/new of the process — NumPy's buffers and the C++ kernels' alike (both release
    the GIL while they compute, so the sampler keeps running). None where mallinfo2 is unavailable."""
    import threading

    in_use = _malloc_in_use()
    if in_use is None:
        return None, fn()
    base = in_use()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], in_use())
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], in_use())
    return (peak[0] - base) / 2**20, out


def set_threads(n: int) -> dict[str, Any]:
    """One thread count for every contender that we can reach."""
    s4g_engine.set_num_threads(n)
    done: dict[str, Any] = {"s4g": s4g_engine.get_num_threads()}
    try:
        import cv2

        cv2.setNumThreads(n)
        done["cv2"] = cv2.getNumThreads()
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
        done["faiss"] = n
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(n)
        done["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    # NumPy's BLAS reads OPENBLAS_NUM_THREADS/OMP_NUM_THREADS at import: main() sets them before numpy
    # is used when --threads is given; report what was in effect.
    done["numpy_blas_env"] = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return done


# ---------------------------------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------------------------------
def polar_maps(a: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """cv2-style float maps (map_x = aerial column, map_y = aerial row) of docs/METHOD.md §9."""
    i = np.arange(h, dtype=np.float64)[:, None]
    j = np.arange(w, dtype=np.float64)[None, :]
    r = (a / 2) * (h - 1 - i) / h
    th = 2 * np.pi * j / w
    return (a / 2 - r * np.sin(th)).astype(np.float32), (a / 2 + r * np.cos(th)).astype(np.float32)


def bench_polar(cfg: dict[str, int], repeat: int, rng: np.random.Generator) -> dict[str, Any]:
    b, a, h, w = cfg["batch"], cfg["tile"], cfg["height"], cfg["width"]
    x = rng.integers(0, 256, (b, a, a, 3), dtype=np.uint8)
    scale = (1.0 / (255.0 * STD)).astype(np.float32)
    bias = (-MEAN / STD).astype(np.float32)
    res: dict[str, Any] = {"config": cfg}
    t, ours = best_time(lambda: s4g_engine.polar_transform(x, h, w, mean=MEAN, std=STD), repeat)
    res["s4g_ms_per_image"] = 1e3 * t / b
    mx, my = polar_maps(a, h, w)
    try:
        import cv2

        def run_cv2() -> np.ndarray:
            out = np.empty((b, h, w, 3), np.float32)
            for n in range(b):
                y = cv2.remap(x[n], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                np.multiply(y, scale, out=out[n], casting="unsafe")
                out[n] += bias
            return out

        t, ref = best_time(run_cv2, repeat)
        res["cv2_ms_per_image"] = 1e3 * t / b
        res["speedup_vs_cv2"] = res["cv2_ms_per_image"] / res["s4g_ms_per_image"]
        res["max_abs_diff_vs_cv2"] = float(np.abs(ref - ours).max())  # cv2 uses 5-bit fixed-point weights
    except ImportError:
        res["cv2_ms_per_image"] = None
    # NumPy reference: gather with precomputed flat indices and weights (float32), on a sub-batch.
    nb = min(cfg["numpy_batch"], b)
    r0, c0 = np.floor(my), np.floor(mx)
    fr, fc = (my - r0)[..., None], (mx - c0)[..., None]
    taps = []
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr, cc = (r0 + dr).astype(np.int64), (c0 + dc).astype(np.int64)
            ok = ((rr >= 0) & (rr < a) & (cc >= 0) & (cc < a))[..., None]
            taps.append((np.clip(rr, 0, a - 1) * a + np.clip(cc, 0, a - 1), np.where(ok, wr * wc, 0).astype(np.float32)))

    def run_numpy() -> np.ndarray:
        out = np.empty((nb, h, w, 3), np.float32)
        for n in range(nb):
            flat = x[n].reshape(-1, 3)
            acc = sum(flat[idx].astype(np.float32) * wt for idx, wt in taps)
            out[n] = acc * scale + bias
        return out

    t, ref_np = best_time(run_numpy, max(1, repeat // 2))
    res["numpy_ms_per_image"] = 1e3 * t / nb
    res["speedup_vs_numpy"] = res["numpy_ms_per_image"] / res["s4g_ms_per_image"]
    res["max_abs_diff_vs_numpy"] = float(np.abs(ref_np - ours[:nb]).max())
    return res


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_topk(cfg: dict[str, int], repeat: int, rng: np.random.Generator, threads: int) -> dict[str, Any]:
    q, r = _unit(rng, cfg["q"], cfg["d"]), _unit(rng, cfg["n"], cfg["d"])
    k = cfg["k"]
    res: dict[str, Any] = {"config": cfg}
    t, (_, ours) = best_time(lambda: s4g_engine.topk_similarity(q, r, k), repeat)
    res["s4g_s"] = t
    try:
        import faiss

        index = faiss.IndexFlatIP(cfg["d"])
        index.add(r)
        t, (_, fi) = best_time(lambda: index.search(q, k), repeat)
        res["faiss_s"] = t
        res["speedup_vs_faiss"] = t / res["s4g_s"]
        res["index_agreement_vs_faiss"] = float((fi == ours).mean())
    except ImportError:
        res["faiss_s"] = None
    try:
        import torch

        tq, tr = torch.from_numpy(q), torch.from_numpy(r)

        def run_torch() -> Any:
            with torch.no_grad():
                return torch.topk(tq @ tr.T, k, dim=1)

        t, (_, ti) = best_time(run_torch, repeat)
        res["torch_s"] = t
        res["speedup_vs_torch"] = t / res["s4g_s"]
        res["index_agreement_vs_torch"] = float((ti.numpy() == ours).mean())
        res["torch_threads"] = torch.get_num_threads()
    except ImportError:
        res["torch_s"] = None
    return res


def ranks_numpy(q: np.ndarray, r: np.ndarray, pos: np.ndarray, chunk: int) -> np.ndarray:
    """The plain way: per chunk of references, a (Q, chunk) score block and a count."""
    p = np.einsum("ij,ij->i", q, r[pos])[:, None]
    out = np.zeros(len(q), np.int64)
    for s in range(0, len(r), chunk):
        out += (q @ r[s : s + chunk].T > p).sum(1)
    return out


def bench_ranks(cfg: dict[str, int], repeat: int, rng: np.random.Generator) -> dict[str, Any]:
    q, r = _unit(rng, cfg["q"], cfg["d"]), _unit(rng, cfg["n"], cfg["d"])
    pos = rng.integers(0, cfg["n"], cfg["q"])
    res: dict[str, Any] = {"config": cfg}
    t, ours = best_time(lambda: s4g_engine.positive_ranks(q, r, pos), repeat)
    res["s4g_s"] = t
    res["s4g_peak_mib"], _ = peak_memory(lambda: s4g_engine.positive_ranks(q, r, pos))
    t, ref = best_time(lambda: ranks_numpy(q, r, pos, cfg["chunk"]), repeat)
    res["numpy_chunked_s"] = t
    res["numpy_peak_mib"], _ = peak_memory(lambda: ranks_numpy(q, r, pos, cfg["chunk"]))
    res["speedup_vs_numpy"] = t / res["s4g_s"]
    res["max_rank_diff_vs_numpy"] = int(np.abs(ref - ours).max()) if len(ours) else 0  # fp32 rounding only
    res["full_matrix_would_be_mib"] = cfg["q"] * cfg["n"] * 4 / 2**20
    res["inputs_mib"] = (q.nbytes + r.nbytes) / 2**20
    return res


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}{unit}" if isinstance(v, float) else str(v)


def table(results: dict[str, Any]) -> str:
    rows = [("kernel", "s4g", "baseline", "baseline time", "s4g speed-up", "note")]
    p = results.get("polar")
    if p:
        rows.append(("polar_transform", _fmt(p["s4g_ms_per_image"], " ms/img"), "cv2.remap+astype+norm",
                     _fmt(p.get("cv2_ms_per_image"), " ms/img"), _fmt(p.get("speedup_vs_cv2"), "×"),
                     f"target ≥1.5×; max|Δ| {_fmt(p.get('max_abs_diff_vs_cv2'))}"))
        rows.append(("", "", "NumPy gather", _fmt(p["numpy_ms_per_image"], " ms/img"),
                     _fmt(p["speedup_vs_numpy"], "×"), f"max|Δ| {p['max_abs_diff_vs_numpy']:.1e}"))
    t = results.get("topk")
    if t:
        rows.append(("topk_similarity", _fmt(t["s4g_s"], " s"), "faiss IndexFlatIP", _fmt(t.get("faiss_s"), " s"),
                     _fmt(t.get("speedup_vs_faiss"), "×"),
                     f"target ≥1.0×; same ids {_fmt(t.get('index_agreement_vs_faiss'))}"))
        rows.append(("", "", "torch.mm+topk", _fmt(t.get("torch_s"), " s"), _fmt(t.get("speedup_vs_torch"), "×"),
                     f"same ids {_fmt(t.get('index_agreement_vs_torch'))}"))
    r = results.get("ranks")
    if r:
        rows.append(("positive_ranks", _fmt(r["s4g_s"], " s"), "chunked NumPy", _fmt(r["numpy_chunked_s"], " s"),
                     _fmt(r["speedup_vs_numpy"], "×"),
                     f"peak MiB s4g {_fmt(r['s4g_peak_mib'])} vs {_fmt(r['numpy_peak_mib'])} "
                     f"(Q×N would be {r['full_matrix_would_be_mib']:.0f})"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(wd) for c, wd in zip(row, widths)) for row in rows)


def write_json(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="s4g-bench kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every contender (default: all cores)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per contender (best is kept)")
    ap.add_argument("--only", default="polar,topk,ranks", help="comma-separated subset of polar,topk,ranks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_results/kernels.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not only <= {"polar", "topk", "ranks"} or args.repeat < 1:
        ap.error("--only takes polar,topk,ranks; --repeat must be >= 1")
    threads = args.threads or os.cpu_count() or 1
    if args.threads:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))  # effective for BLAS loaded after this
    sizes = QUICK if args.quick else FULL
    rng = np.random.default_rng(args.seed)
    results: dict[str, Any] = {
        "command": "s4g-bench kernels " + " ".join(argv if argv is not None else []),
        "quick": args.quick,
        "threads": set_threads(threads),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "build_info": s4g_engine.build_info(),
    }
    if "polar" in only:
        log.info("polar_transform …")
        results["polar"] = bench_polar(sizes["polar"], args.repeat, rng)
    if "topk" in only:
        log.info("topk_similarity …")
        results["topk"] = bench_topk(sizes["topk"], args.repeat, rng, threads)
    if "ranks" in only:
        log.info("positive_ranks …")
        results["ranks"] = bench_ranks(sizes["ranks"], args.repeat, rng)
    results["machine"]["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(table(results))
    write_json(args.out, results)
    print(f"\nwrote {args.out}")
    return 0
