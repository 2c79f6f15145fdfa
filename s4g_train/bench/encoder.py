"""``s4g-bench encoder``: encoder images/s — torch eager fp32, torch bf16 autocast, ONNX Runtime fp32 and its
fp16 / int8 variants, OpenVINO fp32 / bf16 (when installed) — on the same random batch, each with its cosine
against eager fp32, timed back to back in interleaved rounds (load on a shared machine hits all alike).
The CPU kind (AVX2 / AVX-512 / bf16 / VNNI / AMX, read from the OS) is in the output: which path wins
depends on it (OpenVINO's bf16 path needs native bf16; int8 needs VNNI/AMX to pay off).

The model is a random-init S4GModel (``--backbone``, ``--size H W``; random weights time exactly like
trained ones) exported with :func:`s4g_train.export.export_bundle`, or an existing checkpoint
(``--checkpoint``). Every path runs with the same thread count. Ratios are against the fastest torch path
measured in the same run. On CUDA machines (onnxruntime-gpu) the CUDA/TensorRT providers are added.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.logs import setup_logging
from s4g_train.bench import save_chart
from s4g_train.bench.hygiene import RunGuard, write_results

log = logging.getLogger(__name__)


def timeit(fn: Callable[[], Any], *, min_time: float, min_reps: int = 3) -> float:
    """Median seconds per call of ``fn`` after one warm-up (repeats until ``min_time`` has passed)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    info = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def _quantize_int8(src: Path, dst: Path, size: tuple[int, int], seed: int) -> bool:
    """Static QDQ int8 of the fp32 graph, calibrated on random inputs (a rough stand-in for real images)."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        return False

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(seed)
            self.batches = iter([{"image": rng.standard_normal((8, 3, *size)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return True


def _interleaved(fns: list[Callable[[], Any]], *, min_time: float, min_rounds: int = 3) -> list[float]:
    """Median seconds per call of each ``fn``, timed round-robin (one call of each per round) after one warm-up
    each, until ``min_time`` has passed: contenders compared back to back see the same machine load."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < min_rounds or time.perf_counter() - start < min_time:
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def _openvino_rows(graphs: dict[str, Path], x: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    """OpenVINO fp32 and bf16 on the fp32 graph, int8 on the int8 graph (what the engine's auto choice tries)."""
    from s4g_engine.backends.openvino_encoder import OpenVinoEncoder, openvino_available

    if not openvino_available():
        log.info("openvino is not installed: no OpenVINO rows (pip install 's4g[openvino]')")
        return []
    rows = []
    for prec, graph in (("fp32", "fp32"), ("bf16", "fp32"), ("int8", "int8 (static QDQ)")):
        if graph in graphs:
            try:
                enc = OpenVinoEncoder(graphs[graph], precision=prec, threads=args.threads,
                                      static_batches=(x.shape[0],))
                enc(x)  # compiles the static shape
            except Exception as exc:  # noqa: BLE001 - a graph OpenVINO cannot compile is reported, not fatal
                log.warning("openvino %s: cannot run %s (%s)", prec, graphs[graph].name, str(exc).splitlines()[-1:])
                continue
            rows.append({"path": f"openvino {prec}", "kind": "engine", "fn": lambda enc=enc: enc(x)})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from s4g_train.export import export_bundle
    from s4g_train.model import ModelConfig, S4GModel

    torch.set_num_threads(args.threads)
    size = (int(args.size[0]), int(args.size[1]))
    if args.checkpoint:
        from s4g_train.checkpoint import load_model

        model, _ = load_model(args.checkpoint)
        model.cfg.ground_size = size
    else:
        torch.manual_seed(0)
        model = S4GModel(ModelConfig(backbone=args.backbone, ground_size=size, aerial_size=size)).eval()
    model = model.float().eval()
    rng = np.random.default_rng(args.seed)
    x_np = rng.standard_normal((args.batch, 3, *size)).astype(np.float32)
    x = torch.from_numpy(x_np)
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        ref = model.embed(x).numpy()

        def torch_fp32() -> np.ndarray:
            return model.embed(x).numpy()

        rows.append({"path": "torch eager fp32", "kind": "torch", "fn": torch_fp32})
        if args.bf16:
            def torch_bf16() -> np.ndarray:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model.embed(x).float().numpy()

            rows.append({"path": "torch eager bf16 autocast", "kind": "torch", "fn": torch_bf16})
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "b"
            export_bundle(model, bundle, fp16=True)
            graphs = {"fp32": bundle / "ground.onnx", "fp16": bundle / "ground.fp16.onnx"}
            if args.int8 and _quantize_int8(graphs["fp32"], Path(tmp) / "int8.onnx", size, args.seed):
                graphs["int8 (static QDQ)"] = Path(tmp) / "int8.onnx"
            providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
                         if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
            for prov in providers:
                for name, path in graphs.items():
                    so = ort.SessionOptions()
                    so.intra_op_num_threads = args.threads
                    so.log_severity_level = 3
                    sess = ort.InferenceSession(str(path), so, providers=[prov])

                    def ort_run(sess: Any = sess) -> np.ndarray:
                        return sess.run(["embedding"], {"image": x_np})[0]

                    label = f"onnxruntime {name}" + ("" if prov == "CPUExecutionProvider" else f" [{prov}]")
                    rows.append({"path": label, "kind": "engine", "fn": ort_run})
            rows += _openvino_rows(graphs, x_np, args)
            fns = [row.pop("fn") for row in rows]
            for row, fn in zip(rows, fns, strict=True):
                row["cosine_vs_fp32"] = _cos(fn(), ref)
            for row, sec in zip(rows, _interleaved(fns, min_time=args.min_time * len(fns)), strict=True):
                row["images_per_s"] = args.batch / sec
                log.info("%-40s %8.1f images/s  cos %.6f", row["path"], row["images_per_s"], row["cosine_vs_fp32"])
    best_torch = max(r["images_per_s"] for r in rows if r["kind"] == "torch")
    for r in rows:
        r["ratio_vs_fastest_torch"] = r["images_per_s"] / best_torch
    ok = [r for r in rows if r["kind"] == "engine" and r["cosine_vs_fp32"] >= 0.999]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    from s4g_engine.backends.cpu import detect_cpu

    cpu = detect_cpu()
    return {"bench": "encoder", "cpu": cpu.to_dict(), "backbone": model.cfg.backbone, "input_size": list(size),
            "batch": args.batch,
            "threads": args.threads, "rows": rows, "fastest_torch_images_per_s": best_torch,
            "best_engine": best["path"] if best else None,
            "target_engine_vs_torch": 1.0, "achieved": best["ratio_vs_fastest_torch"] if best else 0.0,
            "machine": machine_info(), "command": "s4g-bench encoder " + " ".join(args.argv)}


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    names = [f"{r['path']} (cos {r['cosine_vs_fp32']:.4f})" for r in rows]
    vals = [r["images_per_s"] for r in rows]
    colours = ["tab:grey" if r["kind"] == "torch" else ("tab:green" if r["cosine_vs_fp32"] >= 0.999 else "tab:red")
               for r in rows]
    ax.barh(names, vals, color=colours)
    ax.invert_yaxis()
    ax.set_xlabel("images / s")
    ax.set_title(f"encoder {results['backbone']} {results['input_size'][0]}×{results['input_size'][1]}, batch "
                 f"{results['batch']}, {results['threads']} threads, CPU {results['cpu']['kind']}")
    save_chart(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s4g-bench encoder", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="convnext_atto")
    p.add_argument("--size", nargs=2, type=int, default=[64, 256], metavar=("H", "W"),
                   help="input size (default: the synthetic preset's 64×256)")
    p.add_argument("--checkpoint", default=None, help="benchmark a trained checkpoint instead of random init")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip torch bf16 autocast")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 ONNX variant")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: batch 8, 0.5 s per measurement")
    p.add_argument("--out", default="bench_results/encoder.json")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.quick:
        args.batch, args.min_time = min(args.batch, 8), 0.5
    setup_logging(plain=True)
    guard = RunGuard.start(args.threads)
    res = run(args)
    guard.finish(res)
    out = Path(args.out)
    write_results(out, res)
    chart(res, out.with_suffix(".png"))
    print(f"{'path':44s} {'images/s':>10s} {'× torch':>8s} {'cosine':>10s}")
    for r in res["rows"]:
        print(f"{r['path']:44s} {r['images_per_s']:10.1f} {r['ratio_vs_fastest_torch']:8.2f} "
              f"{r['cosine_vs_fp32']:10.6f}")
    print(f"CPU: {res['cpu']['model']} ({res['cpu']['kind']}); figures from a shared machine are indicative only")
    print(f"best engine path at cosine ≥ 0.999: {res['best_engine']} = {res['achieved']:.2f}× the fastest torch path "
          f"(target ≥ 1.0×); wrote {out} and {out.with_suffix('.png')}")
    return 0
