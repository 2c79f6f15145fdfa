"""``s4g-serve`` as a real process (Ray Serve, loopback only): concurrent requests give the answers of
``Localiser.localise``; bad requests get 4xx that say what was wrong; oversized images are refused from their
header, before decoding. (Graceful shutdown: tests/test_serve_shutdown.py, the last user of the shared server.)"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 's4g[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install 's4g[test]')")

from helpers.gallery import MODEL  # noqa: E402
from helpers.server import MAX_IMAGES, shared_server  # noqa: E402
from s4g_engine.localiser import Localiser  # noqa: E402


@pytest.fixture(scope="module")
def server():
    return shared_server()


def _post(url: str, files: list[tuple[str, bytes]], params: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/localise", files=[("image", (n, d, "application/octet-stream")) for n, d in files],
                      params=params or {}, timeout=120, **kw)


def test_concurrent_requests_match_localiser(server) -> None:
    qs = server.queries
    with Localiser.from_dir(MODEL, device="cpu", backend="onnxruntime", precision="fp32") as loc:
        loc.load_index(server.index)
        want = loc.localise([str(p) for p in qs], k=7)
    # 12 photos in 8 concurrent requests of 1-2 images and different k: they share batches in the service.
    groups = [[0], [1, 2], [3], [4, 5], [6], [7, 8], [9], [10, 11]]
    ks = [7, 3, 5, 1, 7, 2, 6, 4]

    def ask(g_k: tuple[list[int], int]) -> tuple[list[int], int, dict]:
        g, k = g_k
        r = _post(server.url, [(qs[i].name, qs[i].read_bytes()) for i in g], {"k": k})
        assert r.status_code == 200, r.text
        return g, k, r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, zip(groups, ks)))
    for g, k, body in answers:
        assert body["k"] == k and len(body["results"]) == len(g)
        for i, res in zip(g, body["results"]):
            assert res["image"] == qs[i].name
            got = res["candidates"]
            assert [c["id"] for c in got] == want.ids[i][:k]
            assert [c["rank"] for c in got] == list(range(1, k + 1))
            assert np.array_equal(np.float32([c["score"] for c in got]), want.scores[i, :k])  # bit for bit
            assert np.array_equal([[c["lat"], c["lon"]] for c in got], want.coords[i, :k])


def test_geojson_and_the_other_endpoints(server) -> None:
    q = server.queries[0]
    r = _post(server.url, [(q.name, q.read_bytes())], {"k": 2, "format": "geojson"})
    assert r.status_code == 200
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and [f["properties"]["rank"] for f in fc["features"]] == [1, 2]
    lon, lat = fc["features"][0]["geometry"]["coordinates"]
    assert -180 <= lon <= 180 and -90 <= lat <= 90
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["ready"] is True and ready["gallery"] == 60
    g = httpx.get(server.url + "/v1/gallery").json()
    assert g["count"] == 60 and len(g["points"]) == 60 and g["bounds"][0] <= g["bounds"][2]
    thumb = httpx.get(server.url + "/v1/tiles/" + g["ids"][0])
    assert thumb.status_code == 200 and thumb.content[:4] == b"\x89PNG"
    assert httpx.get(server.url + "/v1/tiles/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert "<svg" in httpx.get(server.url + "/").text


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w×h pixels and whose pixel data is garbage: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"not zlib data") + chunk(b"IEND", b""))


@pytest.mark.parametrize("case, status, words", [
    ("no image", 422, "no image in the request"),
    ("k=0", 422, "k must be in [1, 60]"),
    ("k=abc", 422, "k must be an integer"),
    ("k too large", 422, "k must be in [1, 60]"),
    ("format=xml", 422, "format must be one of"),
    ("not an image", 415, "not an image"),
    ("too many images", 413, f"more than max_images={MAX_IMAGES}"),
    ("too many pixels", 413, "max_image_pixels=1,000,000 (checked before decoding)"),
    ("request too large", 413, "max_request_bytes=4,000,000"),
])
def test_bad_requests_get_a_4xx_that_says_why(server, case: str, status: int, words: str) -> None:
    q = server.queries[0].read_bytes()
    if case == "no image":
        r = httpx.post(server.url + "/v1/localise", data={"k": "3"}, timeout=60)
    elif case.startswith("k") or case.startswith("format"):
        param = {"k=0": {"k": 0}, "k=abc": {"k": "abc"}, "k too large": {"k": 61}, "format=xml": {"format": "xml"}}
        r = _post(server.url, [("q.jpg", q)], param[case])
    elif case == "not an image":
        r = _post(server.url, [("notes.txt", b"just some text, not an image")])
    elif case == "too many images":
        r = _post(server.url, [("q.jpg", q)] * (MAX_IMAGES + 1))
    elif case == "too many pixels":
        r = _post(server.url, [("huge.png", _png_header_only(5_000, 4_000))])  # 20 MP declared, 70 bytes sent
    else:
        r = _post(server.url, [("big.bin", b"\0" * 4_100_000)])
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.json()
    assert httpx.get(server.url + "/healthz").status_code == 200  # the service is still up
