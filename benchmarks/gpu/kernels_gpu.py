"""Issue 10's GPU kernel figures (driver of benchmarks/gpu/run_all.sh): s4g's CUDA kernels against torch in the
same reference precision, on the same device, in the same process; every contender warmed up once, then
the best of ``--repeat`` runs (CUDA events around a synchronised call).

Sections (``--only``, comma-separated; all by default):

* ``topk_1k``        top-k Q=1,000 × N=100,000 × 1024, k=10, float32 refs (torch: fp32 mm + topk, TF32 off;
                     a TF32 row for information)
* ``topk_10k``       the same at Q=10,000 × N=1,000,000
* ``topk_10k_fp16``  Q=10,000 × N=1,000,000 with float16 refs (torch: fp16 mm + topk)
* ``dss``            DSS mining size: Q=50,000 × N=90,618, k=128, own positive excluded (torch: mm, positive
                     masked, topk)
* ``vigor``          positive_ranks 52,605 × 90,618 with 3 ignored ids each; queries near their positive
                     (like a trained model's), and, for information, random positives (the filter's worst case)
* ``polar``          256 × 512²×3 uint8 → 128×512 float32 normalised, as % of the device's memory bandwidth
                     (spec and measured copy), vs torch grid_sample

Exactness is checked in the same run: the exact result against ``mode="canonical"`` (every score in the
canonical order) on the first ``--check`` queries, ids and score bits. ``--quick``: sizes ÷ 10 (smoke run).
Writes ``OUT/gpu_kernels.json`` and ``.md`` after every section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECTIONS = ("topk_1k", "topk_10k", "topk_10k_fp16", "dss", "vigor", "polar")
EST_S = {"topk_1k": 20, "topk_10k": 90, "topk_10k_fp16": 60, "dss": 60, "vigor": 90, "polar": 20}
H200_SPEC_TBS = 4.8


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    import torch

    out = fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = fn()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3)
    return best, out


def unit(n: int, d: int, gen: Any) -> Any:
    import torch

    x = torch.randn(n, d, device="cuda", generator=gen)
    return x / x.norm(dim=1, keepdim=True)


def core_call(fn: str, q: Any, r: Any, *rest: Any, mode: str) -> Any:
    """s4g_engine._core_cuda.<fn> with a mode ('exact' | 'canonical' | 'filter'), results as torch tensors."""
    from s4g_engine import kernels

    cu = kernels._cuda_module()
    args = kernels._cuda_search_inputs(cu, q, r)
    out = getattr(cu, fn)(*args, *rest, mode)
    return tuple(kernels._wrap(q, o) for o in out) if isinstance(out, tuple) else kernels._wrap(q, out)


def check_exact(q: Any, r: Any, k: int, got: tuple[Any, Any], n_check: int, exclude: Any = None) -> dict[str, Any]:
    import numpy as np
    import torch

    m = min(n_check, q.shape[0])
    ex = None if exclude is None else np.ascontiguousarray(exclude[:m], dtype=np.int64)
    cs, ci = core_call("topk_similarity", q[:m].contiguous(), r, k, ex, mode="canonical")
    ids = bool((ci == got[1][:m]).all())
    bits = bool((cs.view(torch.int32) == got[0][:m].view(torch.int32)).all())
    return {"checked_queries": m, "ids_equal_canonical": ids, "scores_bit_identical": bits}


def search_stats() -> dict[str, Any]:
    from s4g_engine import _core_cuda

    return dict(_core_cuda.search_stats())


# ---------------------------------------------------------------------------------------------- sections
def sec_topk(nq: int, n: int, d: int, k: int, half: bool, repeat: int, n_check: int,
             chunk: int = 2048) -> dict[str, Any]:
    import torch

    import s4g_engine

    gen = torch.Generator(device="cuda").manual_seed(0)
    r32 = unit(n, d, gen)
    q = unit(nq, d, gen)
    r = r32.half() if half else r32
    del r32
    t_s4g, got = timed(lambda: s4g_engine.topk_similarity(q, r, k), repeat)
    res: dict[str, Any] = {"q": nq, "n": n, "d": d, "k": k, "refs": "float16" if half else "float32",
                           "s4g_s": t_s4g, "s4g_stats": search_stats()}
    res.update(check_exact(q, r, k, got, n_check))
    torch.backends.cuda.matmul.allow_tf32 = False
    qq = q.half() if half else q

    def torch_topk() -> Any:
        return torch.cat([torch.topk(qq[s:s + chunk] @ r.T, k, dim=1).indices for s in range(0, nq, chunk)])

    t_t, ti = timed(torch_topk, repeat)
    res.update(torch_s=t_t, speedup_vs_torch=t_t / t_s4g, ids_agree_with_torch=float((ti == got[1]).float().mean()))
    res["tflops_s4g"] = 2 * nq * n * d / t_s4g / 1e12
    if not half:
        torch.backends.cuda.matmul.allow_tf32 = True
        t_tf, _ = timed(torch_topk, repeat)
        torch.backends.cuda.matmul.allow_tf32 = False
        res.update(torch_tf32_s=t_tf, speedup_vs_torch_tf32=t_tf / t_s4g)
    return res


def sec_dss(nq: int, n: int, d: int, k: int, repeat: int, n_check: int, chunk: int = 4096) -> dict[str, Any]:
    import torch

    import s4g_engine

    gen = torch.Generator(device="cuda").manual_seed(1)
    a = unit(n, d, gen)
    pos = torch.randint(0, n, (nq,), device="cuda", generator=gen)
    g = 0.5 * a[pos] + 0.85 * unit(nq, d, gen)
    g = g / g.norm(dim=1, keepdim=True)
    pos_h = pos.cpu().numpy()
    t_s4g, got = timed(lambda: s4g_engine.topk_similarity(g, a, k, exclude=pos_h), repeat)
    res: dict[str, Any] = {"q": nq, "n": n, "d": d, "k": k, "s4g_s": t_s4g, "s4g_stats": search_stats()}
    res.update(check_exact(g, a, k, got, n_check, exclude=pos_h[:, None]))
    torch.backends.cuda.matmul.allow_tf32 = False

    def torch_dss() -> Any:
        out = []
        for s in range(0, nq, chunk):
            sc = g[s:s + chunk] @ a.T
            sc[torch.arange(sc.shape[0], device="cuda"), pos[s:s + chunk]] = -float("inf")
            out.append(torch.topk(sc, k, dim=1).indices)
        return torch.cat(out)

    t_t, ti = timed(torch_dss, repeat)
    res.update(torch_s=t_t, speedup_vs_torch=t_t / t_s4g, ids_agree_with_torch=float((ti == got[1]).float().mean()))
    return res


def _torch_ranks(q: Any, r: Any, pos: Any, ig: Any, chunk: int) -> Any:
    import torch

    p = (q * r[pos]).sum(1, keepdim=True)
    out = torch.zeros(q.shape[0], dtype=torch.int64, device="cuda")
    for s in range(0, q.shape[0], chunk):
        out[s:s + chunk] = (q[s:s + chunk] @ r.T > p[s:s + chunk]).sum(1)
    s_ig = (q[:, None, :] * r[ig]).sum(2)
    return out - (s_ig > p).sum(1)


def sec_vigor(nq: int, n: int, d: int, repeat: int, chunk: int = 4096) -> dict[str, Any]:
    import torch

    import s4g_engine

    gen = torch.Generator(device="cuda").manual_seed(2)
    r = unit(n, d, gen)
    pos = torch.randint(0, n, (nq,), device="cuda", generator=gen)
    ig = torch.randint(0, n, (nq, 3), device="cuda", generator=gen)
    ig = torch.where(ig == pos[:, None], (ig + 1) % n, ig)
    torch.backends.cuda.matmul.allow_tf32 = False
    res: dict[str, Any] = {"q": nq, "n": n, "d": d, "ignored_per_query": 3}
    for name, a in (("near_positive", 0.15), ("random_positive", 0.0)):
        q = a * r[pos] + (1 - a * a) ** 0.5 * unit(nq, d, gen)
        q = q / q.norm(dim=1, keepdim=True)
        t_s, got = timed(lambda q=q: s4g_engine.positive_ranks(q, r, pos, ignore=ig), repeat)
        stats = search_stats()
        canon = core_call("positive_ranks", q[:512].contiguous(), r, pos[:512].cpu().numpy(),
                          ig[:512].cpu().numpy(), mode="canonical")
        t_t, tr = timed(lambda q=q: _torch_ranks(q, r, pos, ig, chunk), repeat)
        res[name] = {"s4g_s": t_s, "torch_s": t_t, "speedup_vs_torch": t_t / t_s, "s4g_stats": stats,
                     "ranks_equal_canonical_first_512": bool((canon == got[:512]).all()),
                     "max_rank_diff_vs_torch": int((tr - got).abs().max()),
                     "recall_at_1": float((got == 0).float().mean())}
    return res


def sec_polar(batch: int, tile: int, h: int, w: int, repeat: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    import s4g_engine

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randint(0, 256, (batch, tile, tile, 3), dtype=torch.uint8, device="cuda", generator=gen)
    t_s, out = timed(lambda: s4g_engine.polar_transform(x, h, w, mean=mean, std=std), repeat)
    moved = x.numel() + out.numel() * 4
    big = torch.empty(2**30, dtype=torch.float32, device="cuda")
    t_copy, _ = timed(big.clone, repeat)
    copy_tbs = 2 * big.numel() * 4 / t_copy / 1e12
    big = None  # free the 4 GiB before the torch contender
    i = torch.arange(h, device="cuda", dtype=torch.float64)[:, None]
    j = torch.arange(w, device="cuda", dtype=torch.float64)[None, :]
    rad = (tile / 2) * (h - 1 - i) / h
    th = 2 * torch.pi * j / w
    row, col = tile / 2 + rad * torch.cos(th), tile / 2 - rad * torch.sin(th)
    grid = torch.stack([(col + 0.5) / tile * 2 - 1, (row + 0.5) / tile * 2 - 1], -1).float()[None] \
        .expand(batch, h, w, 2)
    m_t = torch.tensor(mean, device="cuda").view(1, 3, 1, 1)
    s_t = torch.tensor(std, device="cuda").view(1, 3, 1, 1)

    def torch_polar() -> Any:
        y = (x.permute(0, 3, 1, 2).float() / 255 - m_t) / s_t
        return F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False).permute(0, 2, 3, 1)

    t_t, ref = timed(torch_polar, repeat)
    return {"batch": batch, "tile": tile, "out": [h, w], "s4g_ms": 1e3 * t_s, "bytes_moved": moved,
            "s4g_tb_per_s": moved / t_s / 1e12, "pct_of_spec_bandwidth": 100 * moved / t_s / 1e12 / H200_SPEC_TBS,
            "measured_copy_tb_per_s": copy_tbs, "pct_of_measured_copy": 100 * moved / t_s / 1e12 / copy_tbs,
            "torch_grid_sample_ms": 1e3 * t_t, "speedup_vs_torch": t_t / t_s,
            "max_abs_diff_vs_torch": float((ref - out).abs().max())}


# ---------------------------------------------------------------------------------------------- report
def markdown(res: dict[str, Any]) -> str:
    env = res.get("env", {})
    lines = ["# GPU kernels (issue 10)", "", f"device: {env.get('gpu')}, cuBLAS: {env.get('cublas')}", "",
             "| kernel | size | s4g | torch (same precision) | ratio | exact vs canonical | path |",
             "|---|---|---|---|---|---|---|"]
    for key in ("topk_1k", "topk_10k", "topk_10k_fp16", "dss"):
        t = res.get(key)
        if not isinstance(t, dict) or "s4g_s" not in t:
            if t:
                lines.append(f"| {key} | | failed: {str(t.get('error', ''))[:80]} | | | | |")
            continue
        size = f"Q={t['q']} N={t['n']} d={t['d']} k={t['k']} {t.get('refs', 'float32')}"
        lines.append(f"| {key} | {size} | {1e3 * t['s4g_s']:.1f} ms | {1e3 * t['torch_s']:.1f} ms | "
                     f"{t['speedup_vs_torch']:.2f}× | ids {t['ids_equal_canonical']}, "
                     f"bits {t['scores_bit_identical']} | "
                     f"{t['s4g_stats'].get('path')} |")
    v = res.get("vigor")
    if isinstance(v, dict):
        for name in ("near_positive", "random_positive"):
            if name in v:
                x = v[name]
                lines.append(f"| positive_ranks ({name}) | Q={v['q']} N={v['n']} d={v['d']} | "
                             f"{1e3 * x['s4g_s']:.1f} ms | "
                             f"{1e3 * x['torch_s']:.1f} ms | {x['speedup_vs_torch']:.2f}× | "
                             f"{x['ranks_equal_canonical_first_512']} | {x['s4g_stats'].get('path')} |")
    p = res.get("polar")
    if isinstance(p, dict) and "s4g_ms" in p:
        lines.append(f"| polar | {p['batch']} × {p['tile']}² → {p['out']} | {p['s4g_ms']:.3f} ms "
                     f"({p['pct_of_spec_bandwidth']:.0f} % of {H200_SPEC_TBS} TB/s, "
                     f"{p['pct_of_measured_copy']:.0f} % of "
                     f"copy) | grid_sample {p['torch_grid_sample_ms']:.3f} ms | {p['speedup_vs_torch']:.2f}× | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--check", type=int, default=512, help="queries checked against the canonical kernels")
    ap.add_argument("--budget", type=float, default=420, help="seconds; sections that no longer fit are skipped")
    ap.add_argument("--quick", action="store_true", help="sizes ÷ 10 (smoke run)")
    args = ap.parse_args(argv)
    import torch

    import s4g_engine
    from s4g_engine import kernels

    kernels._cuda_module()  # loads cuBLAS
    f = 10 if args.quick else 1
    only = [s for s in args.only.split(",") if s]
    res: dict[str, Any] = {"env": {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                   "cublas": s4g_engine.build_info()["cuda"].get("cublas"), "quick": args.quick,
                                   "python": sys.version.split()[0], "cpus": os.cpu_count()}}
    runs = {"topk_1k": lambda: sec_topk(1000 // f, 100_000 // f, 1024, 10, False, args.repeat, args.check),
            "topk_10k": lambda: sec_topk(10_000 // f, 1_000_000 // f, 1024, 10, False, args.repeat, args.check),
            "topk_10k_fp16": lambda: sec_topk(10_000 // f, 1_000_000 // f, 1024, 10, True, args.repeat, args.check),
            "dss": lambda: sec_dss(50_000 // f, 90_618 // f, 1024, 128, args.repeat, args.check),
            "vigor": lambda: sec_vigor(52_605 // f, 90_618 // f, 1024, args.repeat),
            "polar": lambda: sec_polar(256 // f, 512, 128, 512, args.repeat)}
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in only:
        if time.time() - t0 + EST_S.get(name, 60) / f > args.budget:
            res[name] = {"skipped": f"budget {args.budget:.0f} s"}
            continue
        t = time.time()
        try:
            res[name] = runs[name]()
        except Exception as exc:  # noqa: BLE001 — one section's failure must not lose the others' figures
            res[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
        res[name]["wall_s"] = round(time.time() - t, 1)
        torch.cuda.empty_cache()
        print(f"{name}: {json.dumps(res[name])[:600]}", flush=True)
        (args.out / "gpu_kernels.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.out / "gpu_kernels.md").write_text(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
