"""``s4g-serve``: start the localisation service (Ray Serve), stop it gracefully on SIGTERM / SIGINT.

``s4g-serve --model DIR --index FILE|URI --port N [--max-batch 16] [--max-wait-ms 5] [--replicas 1]
[--tiles DIR] [--address RAY_ADDRESS]``

Without ``--address`` a local Ray is started in this process. On SIGTERM or Ctrl-C the service stops
accepting work, lets the requests in flight finish (up to the replicas' graceful-shutdown timeout), shuts
Ray Serve and Ray down and exits with 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from s4g_engine.console import add_debug_flag, cli_main
from s4g_engine.errors import DependencyError, MissingFileError
from s4g_engine.logs import setup_logging

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4g-serve", description="Serve s4g localisation over HTTP (Ray Serve)")
    p.add_argument("--model", required=True, help="exported model bundle folder")
    p.add_argument("--index", required=True, help="index file (.npz) or Milvus URI (tiles.db, http://host:19530)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, help="most images per batch across requests")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino", "tensorrt"),
                   help="encoder runtime (auto: chosen by calibration on the replica's machine)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16", "int8"))
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request time limit (504 after it)")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--max-k", type=int, default=100)
    p.add_argument("--tiles", default=None, help="folder of the gallery's tiles, named by their ids (thumbnails)")
    p.add_argument("--address", default=None, help="join a running Ray cluster instead of starting one")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("-v", "--verbose", action="store_true")
    add_debug_flag(p)
    return p


def _imports() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise DependencyError(f"s4g-serve needs Ray Serve ({exc}); install the serve extra: pip install "
                              "'s4g[serve]'") from exc
    return ray, serve


def start(cfg: Any, *, address: str | None = None, ray_cpus: int | None = None) -> tuple[Any, Any]:
    """Start Ray (or join ``address``), Ray Serve's HTTP proxy and the deployment; returns ``(ray, serve)``."""
    ray, serve = _imports()
    from s4g_engine.serve.app import application

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 1024 * 1024)
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s + 5},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(application(cfg), name="s4g", route_prefix="/", blocking=False)
    return ray, serve


def stop(ray: Any, serve: Any) -> None:
    """Graceful: the application is deleted first, while the HTTP proxy still runs, so that its replicas take
    no new requests and finish those in flight (``graceful_shutdown_timeout_s``); then Serve and Ray stop."""
    serve.delete("s4g", _blocking=True)
    serve.shutdown()
    ray.shutdown()


@cli_main("s4g-serve")
def main(argv: list[str] | None = None) -> int:
    from s4g_engine.serve.config import ServeConfig

    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    for what, path in (("--model", args.model), ("--tiles", args.tiles)):
        if path and not Path(path).is_dir():
            raise MissingFileError(f"{what} {path!r} is not a folder")
    index = args.index if "://" in args.index else str(Path(args.index).resolve())
    cfg = ServeConfig(model=str(Path(args.model).resolve()), index=index, host=args.host, port=args.port,
                      max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, replicas=args.replicas,
                      cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                      device=args.device, backend=args.backend, precision=args.precision,
                      request_timeout_s=args.timeout_s, max_images=args.max_images,
                      max_k=args.max_k, tiles=str(Path(args.tiles).resolve()) if args.tiles else None)
    t0 = time.perf_counter()
    ray, serve = start(cfg, address=args.address, ray_cpus=args.ray_cpus)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(sig, lambda *_: stopping.set())
    print(f"s4g-serve: listening on http://{cfg.host}:{cfg.port} (ready in {time.perf_counter() - t0:.1f} s)",
          flush=True)
    stopping.wait()
    print("s4g-serve: shutting down (finishing requests in flight)", flush=True)
    stop(ray, serve)
    print("s4g-serve: stopped", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m s4g_engine.serve.cli` (before the script is installed)
    raise SystemExit(main())
