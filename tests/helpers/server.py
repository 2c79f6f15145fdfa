"""A real ``s4g-serve`` process for the service tests (own Ray, loopback only), shared by the test modules of
one pytest run and stopped at exit; a test that stops it (graceful shutdown) makes the next user start anew."""

from __future__ import annotations

import atexit
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from helpers.gallery import MODEL, make_gallery, make_queries

#: Limits of the test server (environment of s4g_engine.limits): small, so that tests can exceed them cheaply.
LIMITS = {"S4G_LIMIT_MAX_IMAGE_PIXELS": "1000000", "S4G_LIMIT_MAX_REQUEST_BYTES": "4000000"}
MAX_IMAGES = 20
#: The encoder pinned on both sides of a comparison (``auto`` may choose per batch size, see ServeConfig).
ENCODER = ["--backend", "onnxruntime", "--precision", "fp32"]
N_TILES = 60


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    root: Path
    index: Path
    tiles: Path
    queries: list[Path]
    log: Path
    stopped: bool = field(default=False)

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM (a graceful shutdown) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        self.stopped = True
        try:  # Ray helpers the server left behind in its session, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return rc


_shared: dict[str, Server] = {}
_data: dict[str, tuple[Path, Path, Path, list[Path]]] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gallery() -> tuple[Path, Path, Path, list[Path]]:
    """Tiles (ids = file names, so the service can show thumbnails), their index, and query photos."""
    if "g" not in _data:
        from s4g_engine.cli import index_main

        root = Path(tempfile.mkdtemp(prefix="s4g-serve-test-"))
        tiles, csv_path = make_gallery(root, N_TILES, seed=11)
        rows = list(csv.reader(csv_path.open(encoding="utf-8")))
        with open(root / "tiles_by_name.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(r[:3] for r in rows)
        index = root / "gallery.npz"
        assert index_main(["build", "--model", str(MODEL), "--images", str(tiles), "--coords",
                           str(root / "tiles_by_name.csv"), "--out", str(index), "--device", "cpu"]) == 0
        _data["g"] = (root, index, tiles, make_queries(root / "queries", 12, seed=4))
    return _data["g"]


def shared_server(max_batch: int = 8) -> Server:
    srv = _shared.get("s")
    if srv is not None and not srv.stopped and srv.proc.poll() is None:
        return srv
    root, index, tiles, queries = _gallery()
    port = _free_port()
    log = root / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "s4g_engine.serve.cli", "--model", str(MODEL), "--index", str(index), "--port",
           str(port), "--tiles", str(tiles), "--max-batch", str(max_batch), "--max-wait-ms", "20", "--ray-cpus", "2",
           "--max-images", str(MAX_IMAGES), "--device", "cpu", *ENCODER]
    env = {**os.environ, **LIMITS}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    srv = Server(proc, f"http://127.0.0.1:{port}", root, index, tiles, queries, log)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"s4g-serve exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(srv.url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        srv.stop(10)
        raise RuntimeError(f"s4g-serve did not become ready in 240 s:\n{log.read_text(errors='replace')[-3000:]}")
    _shared["s"] = srv
    atexit.register(srv.stop)
    return srv
