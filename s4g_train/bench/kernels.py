"""``s4g-bench kernels``: the compiled core against the libraries one would otherwise use, same run,
same thread count for every contender, contenders interleaved (each repeat runs every contender once;
the best time of each is kept), so a load change hits all of them alike.

Sections (``--only``, comma-separated; default ``polar,topk,small,fp16,ranks``; ``all`` adds the long
end-to-end ones):

* ``polar``: ``polar_transform`` (uint8 → normalised float32, fused) vs ``cv2.remap`` with precomputed float
  maps + ``astype`` + per-channel normalisation, and a NumPy gather; 256 × 512²×3 → 128×512 (≥ 1.5× cv2).
* ``topk``: ``topk_similarity`` Q=1,000 × N=100,000 × d=1024, k=10, float32, vs faiss ``IndexFlatIP`` and
  ``torch.mm`` + ``torch.topk`` (≥ 1.2× both); ``small``: the same at Q=1 and Q=16 (≥ 1.0× faiss), float32
  and float16 references; ``fp16``: Q=1,000 with float16 references (≥ the float32 time).
* ``ranks``: ``positive_ranks`` same size vs chunked NumPy matmul + count: time and peak extra heap memory
  (malloc in use, sampled while each contender runs; ≥ 1.2× with ≤ 8 MiB).
* ``dss``: DSS hard-negative mining at CVUSA size — 35,532 ground × 35,532 aerial × 1024, K=128, own
  positive excluded — vs faiss (k = K+1, positive dropped) and chunked torch mm + topk.
* ``vigor``: streaming retrieval metrics at VIGOR size — positive ranks of 52,605 queries among 90,618
  references × 1024 with 3 ignored semi-positives each, embeddings whose positive scores near the top like
  a trained model's — vs chunked NumPy and chunked torch.

Prints a table and writes JSON (``--out``) with the machine, SIMD flags, threads and load average; runs on
a loaded machine are marked noisy (s4g_train/bench/hygiene.py). torch, faiss and cv2 are optional.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import s4g_engine
from s4g_engine.logs import setup_logging
from s4g_train.bench.hygiene import RunGuard, write_results

log = logging.getLogger(__name__)

SECTIONS = ("polar", "topk", "small", "fp16", "ranks", "dss", "vigor")
DEFAULT = "polar,topk,small,fp16,ranks"
FULL = {"polar": {"batch": 256, "tile": 512, "height": 128, "width": 512, "numpy_batch": 16},
        "topk": {"q": 1000, "n": 100_000, "d": 1024, "k": 10},
        "small": {"qs": (1, 16), "n": 100_000, "d": 1024, "k": 10},
        "ranks": {"q": 1000, "n": 100_000, "d": 1024, "chunk": 8192},
        "dss": {"q": 35_532, "n": 35_532, "d": 1024, "k": 128, "chunk": 4096},
        "vigor": {"q": 52_605, "n": 90_618, "d": 1024, "ignore": 3, "chunk": 4096}}
QUICK = {"polar": {"batch": 16, "tile": 256, "height": 64, "width": 256, "numpy_batch": 4},
         "topk": {"q": 200, "n": 10_000, "d": 256, "k": 10}, "small": {"qs": (1, 16), "n": 10_000, "d": 256, "k": 10},
         "ranks": {"q": 200, "n": 10_000, "d": 256, "chunk": 2048},
         "dss": {"q": 3000, "n": 3000, "d": 256, "k": 128, "chunk": 1024},
         "vigor": {"q": 3000, "n": 5000, "d": 256, "ignore": 3, "chunk": 1024}}
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


# ---------------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------------
def interleaved(contenders: dict[str, Callable[[], Any]], repeat: int) -> dict[str, tuple[float, Any]]:
    """Best wall time of each contender over ``repeat`` rounds (after one warm-up round); in every round each
    contender runs once, in turn. Returns {name: (best seconds, last result)}."""
    out = {name: (float("inf"), fn()) for name, fn in contenders.items()}
    for _ in range(repeat):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            res = fn()
            out[name] = (min(out[name][0], time.perf_counter() - t0), res)
    return out


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
    """Peak extra heap memory (MiB) while fn runs, sampled every `interval` s from a second thread (NumPy's
    buffers and the C++ kernels' alike: both release the GIL). None where mallinfo2 is unavailable."""
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
    for name, setter in (("cv2", "setNumThreads"), ("faiss", "omp_set_num_threads"), ("torch", "set_num_threads")):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        getattr(mod, setter)(n)
        done[name] = n
    # NumPy's BLAS reads OPENBLAS_NUM_THREADS/OMP_NUM_THREADS at import: main() sets them first.
    done["numpy_blas_env"] = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return done


def _optional(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------------------
# polar
# ---------------------------------------------------------------------------------------------------
def polar_maps(a: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """cv2-style float maps (map_x = aerial column, map_y = aerial row) of docs/METHOD.md §9."""
    i = np.arange(h, dtype=np.float64)[:, None]
    j = np.arange(w, dtype=np.float64)[None, :]
    r = (a / 2) * (h - 1 - i) / h
    th = 2 * np.pi * j / w
    return (a / 2 - r * np.sin(th)).astype(np.float32), (a / 2 + r * np.cos(th)).astype(np.float32)


def _numpy_polar(x: np.ndarray, mx: np.ndarray, my: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> Callable:
    """Gather with precomputed flat indices and weights (float32)."""
    a = x.shape[1]
    r0, c0 = np.floor(my), np.floor(mx)
    fr, fc = (my - r0)[..., None], (mx - c0)[..., None]
    taps = []
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr, cc = (r0 + dr).astype(np.int64), (c0 + dc).astype(np.int64)
            ok = ((rr >= 0) & (rr < a) & (cc >= 0) & (cc < a))[..., None]
            taps.append((np.clip(rr, 0, a - 1) * a + np.clip(cc, 0, a - 1),
                         np.where(ok, wr * wc, 0).astype(np.float32)))

    def run() -> np.ndarray:
        out = np.empty((len(x), *mx.shape, 3), np.float32)
        for n in range(len(x)):
            flat = x[n].reshape(-1, 3)
            out[n] = sum(flat[idx].astype(np.float32) * wt for idx, wt in taps) * scale + bias
        return out

    return run


def bench_polar(cfg: dict[str, int], repeat: int, rng: np.random.Generator) -> dict[str, Any]:
    b, a, h, w = cfg["batch"], cfg["tile"], cfg["height"], cfg["width"]
    x = rng.integers(0, 256, (b, a, a, 3), dtype=np.uint8)
    scale = (1.0 / (255.0 * STD)).astype(np.float32)
    bias = (-MEAN / STD).astype(np.float32)
    mx, my = polar_maps(a, h, w)
    runs: dict[str, Callable[[], Any]] = {"s4g": lambda: s4g_engine.polar_transform(x, h, w, mean=MEAN, std=STD)}
    cv2 = _optional("cv2")
    if cv2 is not None:
        def run_cv2() -> np.ndarray:
            out = np.empty((b, h, w, 3), np.float32)
            for n in range(b):
                y = cv2.remap(x[n], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                np.multiply(y, scale, out=out[n], casting="unsafe")
                out[n] += bias
            return out

        runs["cv2"] = run_cv2
    got = interleaved(runs, repeat)
    res: dict[str, Any] = {"config": cfg, "s4g_ms_per_image": 1e3 * got["s4g"][0] / b}
    ours = got["s4g"][1]
    if "cv2" in got:
        res["cv2_ms_per_image"] = 1e3 * got["cv2"][0] / b
        res["speedup_vs_cv2"] = res["cv2_ms_per_image"] / res["s4g_ms_per_image"]
        res["max_abs_diff_vs_cv2"] = float(np.abs(got["cv2"][1] - ours).max())  # cv2: 5-bit fixed-point weights
    nb = min(cfg["numpy_batch"], b)
    t, ref_np = interleaved({"numpy": _numpy_polar(x[:nb], mx, my, scale, bias)}, max(1, repeat // 2))["numpy"]
    res["numpy_ms_per_image"] = 1e3 * t / nb
    res["speedup_vs_numpy"] = res["numpy_ms_per_image"] / res["s4g_ms_per_image"]
    res["max_abs_diff_vs_numpy"] = float(np.abs(ref_np - ours[:nb]).max())
    return res


# ---------------------------------------------------------------------------------------------------
# top-k
# ---------------------------------------------------------------------------------------------------
def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _faiss_index(r: np.ndarray) -> Any:
    faiss = _optional("faiss")
    if faiss is None:
        return None
    index = faiss.IndexFlatIP(r.shape[1])
    index.add(r)
    return index


def _torch_topk(q: np.ndarray, r: np.ndarray, k: int, chunk: int) -> Callable[[], Any] | None:
    torch = _optional("torch")
    if torch is None:
        return None
    tq, tr = torch.from_numpy(q), torch.from_numpy(r)

    def run() -> np.ndarray:
        with torch.no_grad():
            return torch.cat([torch.topk(tq[s:s + chunk] @ tr.T, k, dim=1).indices
                              for s in range(0, len(tq), chunk)]).numpy()

    return run


def topk_row(q: np.ndarray, r: np.ndarray, k: int, repeat: int, *, index: Any = None, torch_chunk: int = 0,
             exclude: Any = None, drop: np.ndarray | None = None) -> dict[str, Any]:
    """s4g vs faiss (``index``, k + 1 and ``drop`` per row removed when excluding) vs torch (chunked)."""
    runs: dict[str, Callable[[], Any]] = {"s4g": lambda: s4g_engine.topk_similarity(q, r, k, exclude=exclude)[1]}
    extra = 1 if drop is not None else 0
    if index is not None:
        runs["faiss"] = lambda: index.search(q, k + extra)[1]
    if torch_chunk and (t := _torch_topk(q, r.astype(np.float32), k + extra, torch_chunk)) is not None:
        runs["torch"] = t
    got = interleaved(runs, repeat)
    res: dict[str, Any] = {"q": len(q), "n": len(r), "d": q.shape[1], "k": k, "refs": str(r.dtype),
                           "s4g_s": got["s4g"][0]}
    ours = got["s4g"][1]
    for name in ("faiss", "torch"):
        if name not in got:
            res[f"{name}_s"] = None
            continue
        ids = got[name][1]
        if drop is not None:  # remove each row's own positive, keep k
            ids = np.array([row[row != p][:k] for row, p in zip(ids, drop, strict=True)])
        res[f"{name}_s"] = got[name][0]
        res[f"speedup_vs_{name}"] = got[name][0] / res["s4g_s"]
        res[f"index_agreement_vs_{name}"] = float((ids == ours).mean())
    return res


def bench_topk(cfg: dict[str, Any], repeat: int, rng: np.random.Generator, sections: set[str]) -> dict[str, Any]:
    r = _unit(rng, cfg["n"], cfg["d"])
    index = _faiss_index(r)
    out: dict[str, Any] = {}
    if "topk" in sections:
        q = _unit(rng, cfg["q"], cfg["d"])
        out["topk"] = topk_row(q, r, cfg["k"], repeat, index=index, torch_chunk=len(q))
    if "fp16" in sections:
        q = _unit(rng, cfg["q"], cfg["d"])
        row = topk_row(q, r.astype(np.float16), cfg["k"], repeat, index=index)
        fp32_refs = {"s4g": lambda: s4g_engine.topk_similarity(q, r, cfg["k"])}
        row["s4g_fp32_refs_s"] = interleaved(fp32_refs, repeat)["s4g"][0]
        row["fp16_vs_fp32"] = row["s4g_fp32_refs_s"] / row["s4g_s"]
        out["topk_fp16"] = row
    if "small" in sections:
        for nq in cfg.get("qs", (1, 16)):
            q = _unit(rng, nq, cfg["d"])
            out[f"topk_q{nq}"] = topk_row(q, r, cfg["k"], max(repeat, 5), index=index, torch_chunk=nq)
            out[f"topk_q{nq}_fp16"] = topk_row(q, r.astype(np.float16), cfg["k"], max(repeat, 5), index=index)
    return out


def bench_dss(cfg: dict[str, int], repeat: int, rng: np.random.Generator) -> dict[str, Any]:
    """DSS mining: every ground embedding's K most similar aerial embeddings, own positive excluded."""
    a = _unit(rng, cfg["n"], cfg["d"])
    pos = rng.permutation(cfg["n"])[: cfg["q"]]
    g = 0.5 * a[pos] + 0.85 * _unit(rng, cfg["q"], cfg["d"])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    res = topk_row(g, a, cfg["k"], repeat, index=_faiss_index(a), torch_chunk=cfg["chunk"], exclude=pos, drop=pos)
    res["note"] = "faiss/torch: k+1 neighbours, own positive dropped (s4g: exclude=positive)"
    return res


# ---------------------------------------------------------------------------------------------------
# positive ranks
# ---------------------------------------------------------------------------------------------------
def ranks_numpy(q: np.ndarray, r: np.ndarray, pos: np.ndarray, chunk: int, ignore: np.ndarray | None = None,
                backend: Any = np) -> np.ndarray:
    """The plain way: per chunk of references a (Q, chunk) score block and a count; ignored ids subtracted.
    ``backend`` is NumPy or torch (same code through ``matmul``/``sum``)."""
    xq, xr = (q, r) if backend is np else (backend.from_numpy(q), backend.from_numpy(r))
    p = (xq * xr[pos]).sum(1)[:, None]
    out = np.zeros(len(q), np.int64)
    for s in range(0, len(r), chunk):
        c = (xq @ xr[s:s + chunk].T > p).sum(1)
        out += np.asarray(c if backend is np else c.numpy(), dtype=np.int64)
    if ignore is not None:
        ig = np.where(ignore >= 0, ignore, pos[:, None])  # padding → the positive (never above itself)
        s_ig = (xq[:, None, :] * xr[ig]).sum(2)
        above = np.asarray(s_ig > p if backend is np else (s_ig > p).numpy())
        out -= above.sum(1)
    return out


def ranks_row(q, r, pos, chunk: int, repeat: int, ignore=None, with_torch: bool = False) -> dict[str, Any]:
    runs: dict[str, Callable[[], Any]] = {"s4g": lambda: s4g_engine.positive_ranks(q, r, pos, ignore=ignore),
                                          "numpy_chunked": lambda: ranks_numpy(q, r, pos, chunk, ignore)}
    torch = _optional("torch") if with_torch else None
    if torch is not None:
        runs["torch_chunked"] = lambda: ranks_numpy(q, r, pos, chunk, ignore, backend=torch)
    got = interleaved(runs, repeat)
    res: dict[str, Any] = {"q": len(q), "n": len(r), "d": q.shape[1], "s4g_s": got["s4g"][0]}
    for name in runs:
        if name == "s4g":
            continue
        res[f"{name}_s"] = got[name][0]
        res[f"speedup_vs_{name}"] = got[name][0] / res["s4g_s"]
        res[f"max_rank_diff_vs_{name}"] = int(np.abs(got[name][1] - got["s4g"][1]).max()) if len(q) else 0
    res["recall_at_1"] = float((got["s4g"][1] == 0).mean()) if len(q) else None
    return res


def bench_ranks(cfg: dict[str, int], repeat: int, rng: np.random.Generator) -> dict[str, Any]:
    q, r = _unit(rng, cfg["q"], cfg["d"]), _unit(rng, cfg["n"], cfg["d"])
    pos = rng.integers(0, cfg["n"], cfg["q"])
    res = ranks_row(q, r, pos, cfg["chunk"], repeat)
    res["s4g_peak_mib"], _ = peak_memory(lambda: s4g_engine.positive_ranks(q, r, pos))
    res["numpy_peak_mib"], _ = peak_memory(lambda: ranks_numpy(q, r, pos, cfg["chunk"]))
    res["full_matrix_would_be_mib"] = cfg["q"] * cfg["n"] * 4 / 2**20
    res["note"] = "random unit vectors, random positives (scores in the bulk: the hardest case for the filter)"
    return res


def bench_vigor(cfg: dict[str, int], repeat: int, rng: np.random.Generator) -> dict[str, Any]:
    """Streaming metrics at VIGOR size: queries near their positive (cos ≈ 0.15 against ≈ ±0.03 for the rest,
    R@1 ≈ 50 % like a trained model), 3 ignored semi-positives each."""
    r = _unit(rng, cfg["n"], cfg["d"])
    pos = rng.integers(0, cfg["n"], cfg["q"])
    q = 0.15 * r[pos] + 0.989 * _unit(rng, cfg["q"], cfg["d"])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ignore = rng.integers(0, cfg["n"], (cfg["q"], cfg["ignore"]))
    res = ranks_row(q, r, pos, cfg["chunk"], repeat, ignore=ignore, with_torch=True)
    res["s4g_peak_mib"], _ = peak_memory(lambda: s4g_engine.positive_ranks(q, r, pos, ignore=ignore))
    return res


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}{unit}" if isinstance(v, float) else str(v)


def _topk_lines(name: str, t: dict[str, Any], target: str) -> list[tuple[str, ...]]:
    label = f"{name} Q={t['q']} N={t['n']} d={t['d']} k={t['k']} {t['refs']}"
    rows = [(label, _fmt(t["s4g_s"], " s"), "faiss IndexFlatIP", _fmt(t.get("faiss_s"), " s"),
             _fmt(t.get("speedup_vs_faiss"), "×"), f"{target}; same ids {_fmt(t.get('index_agreement_vs_faiss'))}")]
    if t.get("torch_s") is not None:
        rows.append(("", "", "torch.mm+topk", _fmt(t["torch_s"], " s"), _fmt(t.get("speedup_vs_torch"), "×"),
                     f"same ids {_fmt(t.get('index_agreement_vs_torch'))}"))
    if "fp16_vs_fp32" in t:
        rows.append(("", "", "s4g, float32 refs", _fmt(t["s4g_fp32_refs_s"], " s"), _fmt(t["fp16_vs_fp32"], "×"),
                     "target: fp16 refs ≥ 1.0× fp32"))
    return rows


def _ranks_lines(name: str, r: dict[str, Any], target: str) -> list[tuple[str, ...]]:
    rows = []
    for i, other in enumerate(k for k in ("numpy_chunked", "torch_chunked") if f"{k}_s" in r):
        peak = f"; peak MiB s4g {_fmt(r.get('s4g_peak_mib'))}" + (
            f" vs {_fmt(r['numpy_peak_mib'])}" if "numpy_peak_mib" in r else "") if i == 0 else ""
        rows.append((f"{name} Q={r['q']} N={r['n']} d={r['d']}" if i == 0 else "",
                     _fmt(r["s4g_s"], " s") if i == 0 else "", other.replace("_", " "), _fmt(r[f"{other}_s"], " s"),
                     _fmt(r[f"speedup_vs_{other}"], "×"), (target if i == 0 else "") + peak))
    return rows


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("kernel", "s4g", "baseline", "baseline time", "s4g speed-up", "note")]
    p = results.get("polar")
    if p:
        rows.append(("polar_transform", _fmt(p["s4g_ms_per_image"], " ms/img"), "cv2.remap+astype+norm",
                     _fmt(p.get("cv2_ms_per_image"), " ms/img"), _fmt(p.get("speedup_vs_cv2"), "×"),
                     f"target ≥1.5×; max|Δ| {_fmt(p.get('max_abs_diff_vs_cv2'))}"))
        rows.append(("", "", "NumPy gather", _fmt(p["numpy_ms_per_image"], " ms/img"),
                     _fmt(p["speedup_vs_numpy"], "×"), f"max|Δ| {p['max_abs_diff_vs_numpy']:.1e}"))
    targets = {"topk": "target ≥1.2× faiss and torch", "topk_fp16": "", "dss": "end to end (DSS mining)"}
    for key in ("topk", "topk_fp16", *[k for k in results if k.startswith("topk_q")], "dss"):
        if results.get(key):
            rows += _topk_lines(key, results[key], targets.get(key, "target ≥1.0× faiss"))
    if results.get("ranks"):
        rows += _ranks_lines("positive_ranks", results["ranks"], "target ≥1.2×, ≤ 8 MiB")
    if results.get("vigor"):
        rows += _ranks_lines("metrics (VIGOR size)", results["vigor"], f"R@1 {_fmt(results['vigor']['recall_at_1'])}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(wd) for c, wd in zip(row, widths, strict=True)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="s4g-bench kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every contender (default: all cores)")
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds (best per contender is kept)")
    ap.add_argument("--only", default=DEFAULT, help=f"comma-separated subset of {','.join(SECTIONS)}, or 'all'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_results/kernels.json"))
    args = ap.parse_args(argv)
    setup_logging(plain=True)
    only = set(SECTIONS) if args.only == "all" else {s.strip() for s in args.only.split(",") if s.strip()}
    if not only <= set(SECTIONS) or args.repeat < 1:
        ap.error(f"--only takes {','.join(SECTIONS)} or all; --repeat must be >= 1")
    threads = args.threads or os.cpu_count() or 1
    if args.threads:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))  # effective for BLAS loaded after this
    sizes = QUICK if args.quick else FULL
    rng = np.random.default_rng(args.seed)
    guard = RunGuard.start(threads)
    results: dict[str, Any] = {"command": "s4g-bench kernels " + " ".join(argv if argv is not None else []),
                               "quick": args.quick, "threads": set_threads(threads),
                               "build_info": s4g_engine.build_info()}
    steps = [("polar", lambda: {"polar": bench_polar(sizes["polar"], args.repeat, rng)}),
             ("topk/small/fp16", lambda: bench_topk(
                 {**sizes["topk"], **sizes["small"]} if "small" in only else sizes["topk"], args.repeat, rng, only)),
             ("ranks", lambda: {"ranks": bench_ranks(sizes["ranks"], args.repeat, rng)}),
             ("dss", lambda: {"dss": bench_dss(sizes["dss"], args.repeat, rng)}),
             ("vigor", lambda: {"vigor": bench_vigor(sizes["vigor"], args.repeat, rng)})]
    for name, step in steps:
        if set(name.split("/")) & only:
            log.info("%s …", name)
            results.update(step())
    guard.finish(results)
    print(table(results))
    write_results(args.out, results)
    print(f"\nwrote {args.out}")
    return 0
