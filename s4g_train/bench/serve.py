"""``s4g-bench serve``: ``s4g-serve`` under a bounded local load (loopback only): p50/p99 latency, throughput
and errors vs max batch size, and the service's memory across two equal rounds (growth = leak suspicion).

``s4g-bench serve --max-batch 1 4 16 --concurrency 16 --requests 400``
``s4g-bench serve --quick``   (max batch 1 and 8, 60 requests per round)
``s4g-bench serve --compare-litserve``   (the same load against LitServe, back to back: the framework choice)

Each setting starts its own ``s4g-serve`` process (own local Ray) on 127.0.0.1 over a synthetic gallery,
sends a warm-up, then two rounds of ``--requests`` requests from ``--concurrency`` client threads (a bounded
count, with a time cap), and stops the service with SIGTERM (its exit code is recorded). Memory is the sum
of the resident sizes of the service's processes (its session: driver, Ray, proxy, replicas).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.logs import setup_logging
from s4g_train.bench.hygiene import RunGuard, write_results

log = logging.getLogger(__name__)
MODEL = Path(__file__).resolve().parents[2] / "models" / "s4g-synthetic"


def _image(rng: np.random.Generator, h: int, w: int, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(buf, format=fmt)
    return buf.getvalue()


def make_index(model: Path, n: int, folder: Path) -> Path:
    """A gallery of ``n`` synthetic tiles indexed with ``model`` (the service's input)."""
    from s4g_engine.localiser import Localiser

    rng = np.random.default_rng(0)
    tiles = [_image(rng, 96, 96) for _ in range(n)]
    coords = np.stack([47 + rng.uniform(0, 0.1, n), 8 + rng.uniform(0, 0.1, n)], 1)
    out = folder / "gallery.npz"
    with Localiser.from_dir(model, device="cpu") as loc:
        loc.index_references(tiles, coords, [f"t{i}" for i in range(n)])
        loc.save_index(out)
    return out


def session_rss_mb(sid: int) -> float:
    """Resident memory (MB) of every process in session ``sid`` (Linux /proc)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getsid(int(pid)) != sid:
                continue
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            continue
    return total / 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: argparse.Namespace, index: Path, max_batch: int, log_path: Path,
           framework: str = "ray-serve") -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    if framework == "litserve":
        cmd = [sys.executable, "-m", "s4g_train.bench.serve_litserve", str(args.model), str(index), str(port),
               str(max_batch), str(args.max_wait_ms)]
    else:
        cmd = [sys.executable, "-m", "s4g_engine.serve.cli", "--model", str(args.model), "--index", str(index),
               "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--replicas", str(args.replicas), "--device", "cpu", "--max-images", "64", "--backend",
               "onnxruntime", "--precision", "fp32"]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"s4g-serve did not start; see {log_path}")


def _round(url: str, photos: list[bytes], n: int, conc: int, per_req: int, cap_s: float) -> dict[str, Any]:
    import httpx

    stop_at = time.monotonic() + cap_s

    def one(i: int, client: httpx.Client) -> tuple[float, bool]:
        if time.monotonic() > stop_at:
            return float("nan"), False
        files = [("image", (f"q{i}_{j}.jpg", photos[(i + j) % len(photos)], "image/jpeg")) for j in range(per_req)]
        t = time.perf_counter()
        try:
            ok = client.post(url + "/v1/localise", params={"k": 5}, files=files, timeout=60).status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - t, ok

    clients = [httpx.Client() for _ in range(conc)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        res = list(pool.map(lambda i: one(i, clients[i % conc]), range(n)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    lat = np.array([r[0] for r in res if np.isfinite(r[0])])
    ok = sum(r[1] for r in res)
    return {"requests": len(lat), "errors": int(len(lat) - ok), "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "requests_per_s": len(lat) / wall,
            "images_per_s": len(lat) * per_req / wall}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="s4g-bench-serve-"))
    index = Path(args.index) if args.index else make_index(Path(args.model), args.tiles, work)
    rng = np.random.default_rng(1)
    photos = [_image(rng, 128, 512) for _ in range(32)]
    rows = []
    settings = [(fw, mb) for mb in args.max_batch for fw in (["ray-serve", "litserve"] if args.compare_litserve
                                                              else ["ray-serve"])]
    for fw, mb in settings:
        proc, url = _start(args, index, mb, work / f"serve-{fw}-{mb}.log", fw)
        try:
            _round(url, photos, 2 * args.concurrency, args.concurrency, args.images_per_request, args.cap_s)
            rss0 = session_rss_mb(proc.pid)
            r1 = _round(url, photos, args.requests, args.concurrency, args.images_per_request, args.cap_s)
            rss1 = session_rss_mb(proc.pid)
            r2 = _round(url, photos, args.requests, args.concurrency, args.images_per_request, args.cap_s)
            rss2 = session_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(120)
            try:  # workers the server left behind in its session (LitServe's worker processes survive SIGTERM)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        row = {"framework": fw, "max_batch": mb, **r2, "errors": r1["errors"] + r2["errors"], "round1": r1,
               "rss_mb_after_warmup": rss0, "rss_mb_after_round1": rss1, "rss_mb_after_round2": rss2,
               "rss_growth_round2_mb": rss2 - rss1, "exit_code": rc}
        rows.append(row)
        log.info("%-9s max batch %-3d  p50 %7.1f ms  p99 %7.1f ms  %6.1f req/s  errors %d  RSS %.0f → %.0f MB  "
                 "exit %d", fw, mb, row["p50_ms"], row["p99_ms"], row["requests_per_s"], row["errors"], rss1, rss2, rc)
    return {"bench": "serve", "concurrency": args.concurrency, "requests_per_round": args.requests,
            "images_per_request": args.images_per_request, "max_wait_ms": args.max_wait_ms, "replicas": args.replicas,
            "rows": rows, "command": "s4g-bench serve " + " ".join(args.argv)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s4g-bench serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--index", default=None, help="gallery index (default: a synthetic one of --tiles tiles)")
    p.add_argument("--tiles", type=int, default=500)
    p.add_argument("--max-batch", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=400, help="requests per round (two rounds per setting)")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--cap-s", type=float, default=300.0, help="time cap of one round")
    p.add_argument("--compare-litserve", action="store_true",
                   help="also run the same load against a LitServe server of the same Localiser, back to back")
    p.add_argument("--quick", action="store_true", help="smoke run: max batch 1 and 8, 60 requests per round")
    p.add_argument("--out", default="bench_results/serve.json")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.quick:
        args.max_batch, args.requests, args.concurrency, args.tiles = [1, 8], 60, 8, 100
    setup_logging(plain=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    guard = RunGuard.start(os.cpu_count())
    res = run(args)
    guard.finish(res)
    write_results(Path(args.out), res)
    print("| framework | max batch | p50 ms | p99 ms | requests/s | errors | RSS MB after round 1 → 2 | exit |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for r in res["rows"]:
        print(f"| {r['framework']} | {r['max_batch']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['requests_per_s']:.1f} | {r['errors']} | "
              f"{r['rss_mb_after_round1']:.0f} → {r['rss_mb_after_round2']:.0f} | {r['exit_code']} |")
    print(f"wrote {args.out}")
    return 0
