"""``s4g-bench engine``: end-to-end ``Localiser.localise`` images/s vs the encoder alone (same session, same
batch size, same threads), from in-memory uint8 images at the input size, from full-size uint8 arrays
that need a resize, and from JPEG files on disk; the search runs against an index of ``--gallery``
references. The encoder-alone figure is the baseline (measured in the same run, same encoder: the
runtime/precision the Localiser chose for this CPU, see ``encoder`` in the output).

Each input kind is measured pipelined (the default ``localise``) and sequential (``pipelined=False``: the
same batches, one stage after another), and each row carries its stage shares so that a regression points
at its stage: sequential rows split the wall time into decode (+ resize), preprocess (normalise / polar),
encode, search and other (Python, result building); pipelined rows split it into wait (decode + preprocess
the encoder waited for), encode, search and other, and report the decode/preprocess work the pool did in
the shadow of the encoder. Single-image latency (batch 1) is reported with the same breakdown.

Targets: end-to-end ≥ 0.9× encoder-only at input size, ≥ 0.85× with resize and with JPEG decode. The
bundle is ``--model DIR`` or, by default, a random-init convnext_atto exported to a temporary folder with
the synthetic preset's sizes. Timings on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.logs import setup_logging
from s4g_train.bench import save_chart
from s4g_train.bench.encoder import machine_info, timeit
from s4g_train.bench.hygiene import RunGuard, write_results

log = logging.getLogger(__name__)


def _bundle(args: argparse.Namespace, tmp: Path) -> Path:
    if args.model:
        return Path(args.model)
    import torch

    from s4g_train.export import export_bundle
    from s4g_train.model import ModelConfig, S4GModel

    torch.manual_seed(0)
    model = S4GModel(ModelConfig(backbone=args.backbone, ground_size=(64, 256), aerial_size=(64, 256),
                                 polar_aerial=True))
    export_bundle(model, tmp / "bundle")
    return tmp / "bundle"


def _shares(t: dict[str, float], pipelined: bool) -> dict[str, float]:
    """Fractions of the wall time per stage (see the module docstring)."""
    total = max(t["total_s"], 1e-12)
    if pipelined:
        parts = {"wait": t["decode_s"], "encode": t["encode_s"], "search": t["search_s"], "other": t["other_s"]}
    else:
        parts = {"decode": t.get("decode_work_s", 0.0), "preprocess": t.get("preprocess_work_s", 0.0),
                 "encode": t["encode_s"], "search": t["search_s"]}
        parts["other"] = max(0.0, total - sum(parts.values()))
    return {k: v / total for k, v in parts.items()}


def _median_timings(timings: list[dict[str, float]]) -> dict[str, float]:
    """The stage timings of the call with the median total (so that its stages add up to its total)."""
    order = sorted(timings, key=lambda t: t["total_s"])
    return {key: float(v) for key, v in order[len(order) // 2].items()}


def _inputs(rng: np.random.Generator, n: int, h: int, w: int, tmp: Path) -> dict[str, list[Any]]:
    from PIL import Image

    at_size = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    big = [rng.integers(0, 256, (2 * h, 2 * w, 3), dtype=np.uint8) for _ in range(n)]
    files = []
    for i, im in enumerate(big):
        f = tmp / f"q{i}.jpg"
        Image.fromarray(im).save(f, quality=90)
        files.append(str(f))
    return {f"uint8 arrays {h}×{w} (no resize)": at_size, f"uint8 arrays {2 * h}×{2 * w} (resize)": big,
            f"JPEG files {2 * h}×{2 * w} (decode + resize)": files}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from s4g_engine import Localiser

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        bundle = _bundle(args, tmp)
        loc = Localiser.from_dir(bundle, device=args.device, backend=args.backend, precision=args.precision,
                                 batch_size=args.batch, threads=args.threads, decode_threads=args.decode_threads)
        spec = loc.specs["ground"]
        h, w = spec.input_size
        d = loc.embed_dim
        g = rng.standard_normal((args.gallery, d)).astype(np.float32)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        loc.index.add(g, np.c_[rng.uniform(-60, 60, args.gallery), rng.uniform(-170, 170, args.gallery)])
        n = args.images
        kinds = _inputs(rng, n, h, w, tmp)
        enc = loc.encoders["ground"]
        pre = spec.normalise_batch(np.stack(kinds[f"uint8 arrays {h}×{w} (no resize)"]))

        def encoder_only() -> None:
            for s in range(0, n, args.batch):
                enc(pre[s:s + args.batch])

        rows: list[dict[str, Any]] = []
        base = n / timeit(encoder_only, min_time=args.min_time)
        rows.append({"path": "encoder only (preprocessed batches)", "images_per_s": base})
        for label, imgs in kinds.items():
            for pipelined in (True, False):
                timings: list[dict[str, float]] = []

                def e2e(imgs: Any = imgs, pipelined: bool = pipelined, timings: list[Any] = timings) -> None:
                    timings.append(loc.localise(imgs, k=args.k, pipelined=pipelined).timings)

                ips = n / timeit(e2e, min_time=args.min_time)
                stage = _median_timings(timings)
                rows.append({"path": f"localise{'' if pipelined else ' sequential'}: {label}", "images_per_s": ips,
                             "pipelined": pipelined, "stage_s": stage, "shares": _shares(stage, pipelined)})
        for r in rows:
            r["ratio_vs_encoder"] = r["images_per_s"] / base
            log.info("%-64s %8.1f images/s  %.2f× encoder", r["path"], r["images_per_s"], r["ratio_vs_encoder"])
        latency = []
        for label, imgs in kinds.items():
            timings = []
            timeit(lambda imgs=imgs, timings=timings: timings.append(loc.localise(imgs[:1], k=args.k).timings),
                   min_time=args.min_time / 2)
            stage = _median_timings(timings)
            latency.append({"path": f"batch 1: {label}", "latency_ms": 1e3 * stage["total_s"], "stage_s": stage,
                            "shares": _shares(stage, True)})
        choice = {v: {k: c.get(k) for k in ("runtime", "precision", "source", "cpu")}
                  for v, c in loc.encoder_choice.items()}
        loc.close()
    return {"bench": "engine", "input_size": [h, w], "polar": spec.polar, "batch": args.batch, "images": n,
            "gallery": args.gallery, "k": args.k, "threads": args.threads, "decode_threads": args.decode_threads,
            "encoder": getattr(enc, "name", "?"), "encoder_choice": choice, "rows": rows, "latency": latency,
            "target_e2e_vs_encoder": {"input size": 0.9, "resize": 0.85, "jpeg": 0.85},
            "machine": machine_info(), "command": "s4g-bench engine " + " ".join(args.argv)}


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.5))
    def target(r: dict[str, Any]) -> float:
        return 0.9 if "no resize" in r["path"] else 0.85

    ax.barh([r["path"] for r in rows], [r["images_per_s"] for r in rows],
            color=["tab:grey"] + ["tab:green" if r["ratio_vs_encoder"] >= target(r) else "tab:orange"
                                  for r in rows[1:]])
    ax.axvline(0.9 * rows[0]["images_per_s"], color="k", ls="--", lw=1, label="0.9 × encoder only")
    ax.axvline(0.85 * rows[0]["images_per_s"], color="k", ls=":", lw=1, label="0.85 × encoder only")
    ax.invert_yaxis()
    ax.set_xlabel("images / s")
    ax.set_title(f"Localiser end-to-end vs encoder, {results['input_size'][0]}×{results['input_size'][1]}, batch "
                 f"{results['batch']}, gallery {results['gallery']:,}")
    ax.legend(fontsize=8)
    save_chart(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s4g-bench engine", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="bundle folder (default: a random-init convnext_atto export)")
    p.add_argument("--backbone", default="convnext_atto")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto", help="encoder runtime: auto (chosen by calibration), onnxruntime, "
                                                     "openvino, tensorrt")
    p.add_argument("--precision", default="auto", help="auto, fp32, fp16, bf16, int8")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--gallery", type=int, default=10_000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--decode-threads", type=int, default=None)
    p.add_argument("--min-time", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 64 images, 0.5 s per measurement")
    p.add_argument("--out", default="bench_results/engine.json")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.quick:
        args.images, args.min_time = 64, 0.5
    setup_logging(plain=True)
    guard = RunGuard.start(args.threads)
    res = run(args)
    guard.finish(res)
    out = Path(args.out)
    write_results(out, res)
    chart(res, out.with_suffix(".png"))
    print(f"encoder: {res['encoder']} ({res['encoder_choice'].get('ground')})")
    print(f"{'path':66s} {'images/s':>9s} {'× enc':>6s}  stage shares of the wall time")
    for r in res["rows"]:
        shares = "  ".join(f"{k} {100 * v:4.1f}%" for k, v in r.get("shares", {}).items())
        print(f"{r['path']:66s} {r['images_per_s']:9.1f} {r['ratio_vs_encoder']:6.2f}  {shares}")
    for r in res["latency"]:
        shares = "  ".join(f"{k} {100 * v:4.1f}%" for k, v in r["shares"].items())
        print(f"{r['path']:66s} {r['latency_ms']:7.2f} ms         {shares}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
