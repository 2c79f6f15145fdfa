"""Issue 11's GPU figures in one run (driver of benchmarks/gpu/train_figures.sh).

Stages, each in its own process with its own time limit, results written after every stage (a stage that
fails or runs out of time leaves the others' figures intact):

1. ``env``      — GPU, torch/CUDA versions, bf16 support, the s4g build (CUDA core present?).
2. ``tests``    — tests/test_gpu_path.py (device path = CPU path, on CUDA) and tests/test_ddp.py (NCCL
                  variant: runs with ≥ 2 GPUs, else skips with the reason).
3. ``main_job`` — ``s4g-train --preset synthetic`` on the GPU, wall time including the synthetic world,
                  R@1 per evaluation and final (target ≤ 2 min, R@1 ≥ the CPU run's 86.0).
4. ``paper_step`` — ``s4g-bench train`` at paper size: ConvNeXt-B (random init), ground 140×768, tile 384²,
                  batch 128, 12 workers: model step (bf16/NHWC, fp16+GradScaler, NCHW), s4g-train, the
                  reference loop; model inference vs DSS/eval embedding; DSS share at CVUSA size.
5. ``loader``   — CPU cost per training pair at paper size in one process: CPU path (normalise in the
                  loader), device path (uint8 out), with and without photometric augmentation.
6. ``decode``   — paper-size JPEGs (CVUSA 750² tiles, 1232×224 and VIGOR 2048×1024 panoramas): the
                  contract's CPU decoder (16 threads) vs nvJPEG (``data.decode=nvjpeg``), img/s and the
                  mean absolute difference in grey levels.
7. ``compile``  — s4g-train with ``train.compile`` at paper size: compile time and step (when time is left).

``python benchmarks/gpu/train_figures.py --out DIR`` writes ``DIR/train_figures.json`` and ``.md``.
``--smoke`` runs every stage on the CPU at toy sizes (seconds each): a check of the plumbing, not figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PAPER = ["--set", "model.backbone=convnext_base", "--set", "model.ground_size=[140,768]", "--set",
         "model.aerial_size=[384,384]", "--set", "model.polar_aerial=false", "--set", "train.batch_size=128",
         "--set", "data.num_workers=12", "--set", "eval.batch_size=256"]
SMOKE = os.environ.get("S4G_FIGURES_SMOKE") == "1"  # toy sizes on the CPU (--smoke)
if SMOKE:
    PAPER = ["--set", "model.backbone=convnext_atto", "--set", "model.ground_size=[32,128]", "--set",
             "model.aerial_size=[64,64]", "--set", "model.polar_aerial=false", "--set", "train.batch_size=16",
             "--set", "data.num_workers=2", "--set", "eval.batch_size=32", "--set", "data.synth.pairs=300",
             "--set", "data.aug.photometric=false"]
#: (stage, time limit s, rough duration s used to skip stages that no longer fit the budget)
STAGES = [("env", 60, 10), ("tests", 240, 70), ("main_job", 300, 120), ("paper_step", 420, 200),
          ("loader", 120, 40), ("decode", 150, 40), ("compile", 360, 200)]


def _sh(cmd: list[str], timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, f"timed out after {timeout:.0f} s\n{(exc.stdout or b'')[-4000:]!r}"
    return {"rc": rc, "wall_s": round(time.perf_counter() - t, 1), "tail": out[-4000:]}


# ---------------------------------------------------------------------------------------------- stages
def stage_env(work: Path, limit: float) -> dict[str, Any]:
    import torch

    import s4g_engine

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cpus": os.cpu_count(), "gpus": [], "s4g_engine": s4g_engine.__file__}
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["gpus"].append({"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                             "bf16": torch.cuda.is_bf16_supported()})
    try:
        info["build"] = s4g_engine.build_info().get("cuda")
    except Exception as exc:  # the figures are still useful without it
        info["build"] = f"build_info failed: {exc}"
    return info


def stage_tests(work: Path, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(REPO / "tests/test_gpu_path.py"),
           str(REPO / "tests/test_ddp.py")]
    return _sh(cmd, limit, cwd=work)  # from outside the checkout: the installed (CUDA) build is imported


def stage_main_job(work: Path, limit: float) -> dict[str, Any]:
    run = work / "run-main"
    cmd = [sys.executable, "-m", "s4g_train.trainer", "--preset", "synthetic", "--run-dir", str(run),
           "--set", f"data.root={work / 'data'}", "--set", "data.synth.options.workers=16"]
    cmd += ["--set", "train.device=cpu", "--set", "data.num_workers=2", "--set", "train.epochs=2", "--set",
            "data.synth.pairs=300", "--set", "eval.every=1"] if SMOKE else \
        ["--set", "train.device=cuda", "--set", "data.num_workers=6"]
    res = _sh(cmd, limit, cwd=work)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").is_file() else []
    res["evals"] = {r["epoch"]: r.get("R@1") for r in recs if r.get("event") == "eval"}
    res["final"] = next((r for r in recs if r.get("event") == "final"), None)
    res["epoch_s"] = [r.get("time_s") for r in recs if r.get("event") == "epoch"]
    res["dss_refresh_s"] = [r.get("dss_refresh_s") for r in recs if r.get("dss_refresh_s") is not None]
    res["cpu_reference"] = {"R@1": 86.0, "minutes": 7.8, "where": "benchmarks/train.md §0 (2-core CPU)"}
    return res


def _bench(work: Path, limit: float, name: str, extra: list[str]) -> dict[str, Any]:
    out = work / f"{name}.json"
    cmd = [sys.executable, "-m", "s4g_train.bench.train", "--preset", "synthetic", "--out", str(out),
           "--set", f"data.root={work / 'data'}", *PAPER, *extra]
    res = _sh(cmd, limit, cwd=work)
    if out.is_file():
        res["figures"] = json.loads(out.read_text())
        res["markdown"] = out.with_suffix(".md").read_text() if out.with_suffix(".md").is_file() else ""
    return res


def stage_paper_step(work: Path, limit: float) -> dict[str, Any]:
    return _bench(work, limit, "paper_step", ["--quick"] if SMOKE else ["--steps", "8", "--warmup", "3", "--variants"])


def stage_compile(work: Path, limit: float) -> dict[str, Any]:
    return _bench(work, limit, "compile", ["--steps", "2" if SMOKE else "6", "--warmup", "1" if SMOKE else "2",
                                           "--parts", "s4g", "--compile"])


def stage_loader(work: Path, limit: float) -> dict[str, Any]:
    """ms of one CPU core per training pair at paper size, per input path (single process, RAM cache)."""
    import torch

    from s4g_engine.datasets import load_split
    from s4g_train.config import AugConfig
    from s4g_train.data import PairedTrainDataset, build_contract
    from s4g_train.model import ModelConfig

    torch.set_num_threads(1)
    root = next((work / "data").glob("cvusa-*"))
    sp = load_split("cvusa", str(root), "train")
    n = min(16 if SMOKE else 256, len(sp.queries))
    mc = ModelConfig(backbone="convnext_base", ground_size=(140, 768), aerial_size=(384, 384))
    c = build_contract(mc, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic"})
    out: dict[str, Any] = {"pairs": n}
    for photo in (True, False):
        ds = PairedTrainDataset(sp.queries[:n], sp.references, sp.positive[:n], contract=c,
                                aug=AugConfig(photometric=photo, dropout_p=0.1), seed=0, cache=True)
        for mode in ("float", "stage") if photo else ("float", "raw"):
            ds.set_output(mode)
            t = time.perf_counter()
            for i in range(n):
                ds[(1, i)]
            ms = 1e3 * (time.perf_counter() - t) / n
            out[f"{'photometric' if photo else 'no_photometric'}/{mode}_ms_per_pair"] = ms
    out["note"] = "one core; a loader with W workers serves about W·1000/ms pairs/s"
    return out


def stage_decode(work: Path, limit: float) -> dict[str, Any]:
    """Contract decoder (PIL/libjpeg-turbo, 16 threads) vs nvJPEG on paper-size JPEGs."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    from s4g_engine.preprocess import ViewSpec
    from s4g_train.gpu_decode import load_stage_batch

    src = sorted((next((work / "data").glob("cvusa-*"))).rglob("*.jpg"))[:64]
    kinds = {"cvusa_tile_750": ((750, 750), (384, 384)), "cvusa_pano_1232x224": ((224, 1232), (140, 768)),
             "vigor_pano_2048x1024": ((1024, 2048), (320, 640))}
    out: dict[str, Any] = {}
    for kind, (file_hw, stage) in kinds.items():
        folder = work / "decode" / kind
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(8 if SMOKE else 192):
            p = folder / f"{i}.jpg"
            if not p.is_file():
                im = Image.open(src[i % len(src)]).convert("RGB").resize(file_hw[::-1], Image.Resampling.BICUBIC)
                im.save(p, quality=90)
            paths.append(str(p))
        spec = ViewSpec("v", stage, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), interpolation="bilinear")
        t = time.perf_counter()
        with ThreadPoolExecutor(16) as ex:
            ref = np.stack(list(ex.map(spec.load, paths)))
        pil = len(paths) / (time.perf_counter() - t)
        dev = "cpu" if SMOKE else "cuda"
        load_stage_batch(paths[:64], spec, device=dev)  # warm-up (nvJPEG handles, kernels)
        t = time.perf_counter()
        got = load_stage_batch(paths, spec, device=dev)
        nv = len(paths) / (time.perf_counter() - t)
        out[kind] = {"pil_16_threads_img_s": pil, "nvjpeg_img_s": nv,
                     "mean_abs_diff": float(np.abs(got.astype(np.int16) - ref).mean()),
                     "max_abs_diff": int(np.abs(got.astype(np.int16) - ref).max())}
    return out


STAGE_FNS = {"env": stage_env, "tests": stage_tests, "main_job": stage_main_job, "paper_step": stage_paper_step,
             "loader": stage_loader, "decode": stage_decode, "compile": stage_compile}


# ---------------------------------------------------------------------------------------------- report
def to_markdown(res: dict[str, Any]) -> str:
    lines = ["# s4g-train on the GPU: issue 11 figures", ""]
    env = res.get("env", {})
    for g in env.get("gpus", []):
        lines.append(f"GPU {g['name']} (sm {g['capability']}, {g['memory_gib']:.0f} GiB, bf16 {g['bf16']}), "
                     f"torch {env.get('torch')} CUDA {env.get('cuda')}, {env.get('cpus')} CPUs.")
    for name, r in res.items():
        if name in ("env", "budget_s"):
            continue
        lines += ["", f"## {name}", "", f"status: {r.get('status')}, {r.get('stage_s')} s"]
        if name == "main_job" and isinstance(r.get("evals"), dict):
            lines.append(f"wall {r.get('wall_s')} s (target ≤ 120 s incl. the world); R@1 per evaluation "
                         f"{r['evals']}; final {(r.get('final') or {}).get('R@1')} (CPU run: 86.0)")
        if r.get("markdown"):
            lines += ["", r["markdown"]]
        elif name in ("loader", "decode", "tests") or r.get("status") != "ok":
            body = {k: v for k, v in r.items() if k not in ("status", "stage_s")}
            lines += ["", "```", json.dumps(body, indent=1)[-3000:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from s4g_engine.fileio import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/s4g-train-figures"))
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all stages together")
    ap.add_argument("--stages", default=",".join(s for s, _, _ in STAGES))
    ap.add_argument("--smoke", action="store_true", help="every stage on the CPU at toy sizes (plumbing check)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ["S4G_FIGURES_SMOKE"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage:
        res = STAGE_FNS[args.stage](args.work, float(os.environ.get("S4G_STAGE_LIMIT", "300")))
        atomic_write_text(args.work / f"stage-{args.stage}.json", json.dumps(res, indent=1, default=str))
        return 0
    t0, res = time.perf_counter(), {"budget_s": args.budget}
    for name, limit, guess in STAGES:
        if name not in args.stages.split(","):
            continue
        left = args.budget - (time.perf_counter() - t0)
        if left < min(guess, limit):
            res[name] = {"status": f"skipped: {left:.0f} s left of the budget, the stage needs ~{guess} s"}
        else:
            lim = min(limit, left)
            env = dict(os.environ, S4G_STAGE_LIMIT=str(lim))
            r = _sh([sys.executable, __file__, "--out", str(args.out), "--work", str(args.work), "--stage", name],
                    lim + 15, cwd=args.work, env=env)
            f = args.work / f"stage-{name}.json"
            body = json.loads(f.read_text()) if f.is_file() else {}
            f.unlink(missing_ok=True)
            status = "ok" if r["rc"] == 0 and body.get("rc", 0) == 0 else f"failed (rc {r['rc']}/{body.get('rc')})"
            res[name] = {"status": status, "stage_s": r["wall_s"], **body,
                         **({"driver_tail": r["tail"]} if r["rc"] else {})}
        print(f"[train_figures] {name}: {res[name]['status']} ({time.perf_counter() - t0:.0f} s)", flush=True)
        atomic_write_text(args.out / "train_figures.json", json.dumps(res, indent=1, default=str))
        atomic_write_text(args.out / "train_figures.md", to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
