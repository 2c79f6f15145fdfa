"""Graceful shutdown of ``s4g-serve``: SIGTERM while a request is in flight lets it finish, then the process
exits 0. The last test of the server shared with tests/test_serve.py and tests/test_serve_browser.py (this
file's name sorts after theirs), so that one server start serves all three."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 's4g[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install 's4g[test]')")

from helpers.gallery import smooth_image  # noqa: E402
from helpers.server import shared_server  # noqa: E402


@pytest.fixture(scope="module")
def server():
    return shared_server()


def _jpeg(w: int, h: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    smooth_image(np.random.default_rng(seed), h, w).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_graceful_shutdown_finishes_the_request_in_flight(server) -> None:
    """SIGTERM arrives while a request's body is still being uploaded."""
    photos = [("image", (f"p{i}.jpg", _jpeg(640, 480, seed=i), "image/jpeg")) for i in range(6)]
    prepared = httpx.Request("POST", server.url + "/v1/localise", params={"k": 3}, files=photos)
    body = prepared.read()
    sent_half = threading.Event()

    def slow_body():
        yield body[: len(body) // 2]
        sent_half.set()
        time.sleep(1.5)  # SIGTERM is sent meanwhile
        yield body[len(body) // 2:]

    result: dict = {}

    def upload() -> None:
        headers = {"content-type": prepared.headers["content-type"], "content-length": str(len(body))}
        try:
            result["r"] = httpx.post(server.url + "/v1/localise", params={"k": 3}, content=slow_body(),
                                     headers=headers, timeout=120)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["err"] = exc

    t = threading.Thread(target=upload)
    t.start()
    assert sent_half.wait(60)
    time.sleep(0.2)
    t_stop = time.monotonic()
    rc = server.stop()
    t.join(120)
    assert "err" not in result, result.get("err")
    assert result["r"].status_code == 200, result["r"].text
    assert len(result["r"].json()["results"]) == 6
    assert rc == 0, server.log.read_text(errors="replace")[-2000:]
    assert time.monotonic() - t_stop < 90
    log = server.log.read_text(errors="replace")
    assert "s4g-serve: shutting down" in log and "s4g-serve: stopped" in log
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)
