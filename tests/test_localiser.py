"""Localiser: embeddings equal the eager model on a plain reference preprocessing; inputs of every kind;
clear errors; 8-thread consistency; the gallery is embedded once; kill -9 during save_index is harmless."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from helpers.torch_bundle import AERIAL, GROUND, make_tiny_bundle  # noqa: E402
from s4g_engine import Localiser, LocaliseResult  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("loc") / "tiny"
    model, cfg = make_tiny_bundle(out)
    return out, model, cfg


@pytest.fixture(scope="module")
def loc(bundle):
    # fp32: these tests compare with the eager model at cosine 0.9999 (reduced precision: tests/test_backends.py)
    with Localiser.from_dir(bundle[0], device="cpu", precision="fp32", batch_size=4, decode_threads=2) as loc:
        yield loc


def _imgs(seed: int, n: int, h: int = 60, w: int = 150) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _reference_embed(model, images, size, cfg_view) -> np.ndarray:
    """Plain reference: PIL resize with the configured filter, float64 normalisation, eager torch fp32."""
    filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[cfg_view["interpolation"]]
    xs = []
    for im in images:
        r = np.asarray(Image.fromarray(im).resize((size[1], size[0]), filt, reducing_gap=3.0), dtype=np.float64)
        xs.append(((r / 255.0 - np.array(cfg_view["mean"])) / np.array(cfg_view["std"])).transpose(2, 0, 1))
    with torch.no_grad():
        return model.embed(torch.tensor(np.stack(xs), dtype=torch.float32)).double().numpy()


def test_embeddings_match_eager_model(loc, bundle):
    _, model, cfg = bundle
    g, a = _imgs(0, 9), _imgs(1, 6, 100, 100)  # 9 = two full batches of 4 + a partial one
    eg, ea = loc.embed_ground(g), loc.embed_aerial(a)
    assert eg.shape == (9, 64) and eg.dtype == np.float32 and ea.shape == (6, 64)
    for emb, ref in ((eg, _reference_embed(model, g, GROUND, cfg["views"]["ground"])),
                     (ea, _reference_embed(model, a, AERIAL, cfg["views"]["aerial"]))):
        cos = (emb.astype(np.float64) * ref).sum(1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_every_input_kind_gives_the_same_embedding(loc, tmp_path):
    img = _imgs(2, 1)[0]
    Image.fromarray(img).save(tmp_path / "x.png")
    ref = loc.embed_ground([img])
    for variant in (img, [img], Image.fromarray(img), str(tmp_path / "x.png"), tmp_path / "x.png", img[None]):
        np.testing.assert_array_equal(loc.embed_ground(variant), ref)
    # non-contiguous views are fine
    big = np.ascontiguousarray(np.concatenate([img, img], axis=1))
    np.testing.assert_allclose(loc.embed_ground(big[:, ::2]), loc.embed_ground(np.ascontiguousarray(big[:, ::2])))


def test_grey_rgba_palette_and_16bit_images(loc, tmp_path):
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (40, 90), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    ref = loc.embed_ground(rgb)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    Image.fromarray(np.dstack([rgb, np.full_like(grey, 7)]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # 16-bit grey PNG
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    for x in (grey, grey[:, :, None], np.dstack([rgb, np.full_like(grey, 7)]), str(tmp_path / "g.png"),
              str(tmp_path / "rgba.png"), str(tmp_path / "g16.png"), grey.astype(np.uint16) * 257,
              Image.fromarray(grey, "L").convert("P")):
        np.testing.assert_allclose(loc.embed_ground(x), ref, atol=1e-6)


def test_corrupt_truncated_and_missing_files(loc, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_imgs(4, 1)[0]).save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    for name in ("trunc.jpg", "junk.png"):
        with pytest.raises(ValueError, match=f"cannot decode image.*{name}"):
            loc.embed_ground([_imgs(5, 1)[0], str(tmp_path / name)])
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        loc.embed_aerial(str(tmp_path / "nope.jpg"))


@pytest.mark.parametrize("bad,err,match", [
    ([], ValueError, "empty batch"),
    (np.zeros((10, 10, 5), np.uint8), ValueError, r"shape \(H, W\)"),
    (np.zeros((2, 2, 10, 10, 3), np.uint8), ValueError, "shape"),
    (np.zeros((10, 10, 3), np.float32), ValueError, "uint8"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "empty side"),
    (12345, TypeError, "image path"),
])
def test_bad_images_raise_clear_errors(loc, bad, err, match):
    with pytest.raises(err, match=match):
        loc.embed_ground(bad)


def test_index_localise_round_trip(bundle, tmp_path):
    out, _, _ = bundle
    loc = Localiser.from_dir(out, device="cpu", batch_size=8)
    tiles = _imgs(6, 30, 64, 64)
    rng = np.random.default_rng(6)
    coords = np.c_[rng.uniform(40, 41, 30), rng.uniform(-74, -73, 30)]
    with pytest.raises((ValueError, RuntimeError), match="index is empty"):  # StateError is a RuntimeError
        loc.localise(_imgs(7, 1))
    assert loc.index_references(tiles[:20], coords[:20], ids=[f"t{i}" for i in range(20)]) == 20
    assert loc.index_references(tiles[20:], coords[20:], ids=[f"t{i}" for i in range(20, 30)]) == 30
    # the ground view of the same model on the same picture: each tile is its own nearest neighbour
    loc.index.add(loc.embed_ground(tiles[:5]), coords[:5], ids=[f"g{i}" for i in range(5)])
    res = loc.localise(tiles[:5], k=3)
    assert isinstance(res, LocaliseResult)
    assert res.scores.shape == (5, 3) and res.indices.shape == (5, 3) and res.coords.shape == (5, 3, 2)
    np.testing.assert_array_equal(res.indices[:, 0], np.arange(30, 35))
    assert [r[0] for r in res.ids] == [f"g{i}" for i in range(5)]
    np.testing.assert_allclose(res.scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(res.scores, axis=1) <= 1e-7).all()
    np.testing.assert_array_equal(res.coords[:, 0], coords[:5])
    assert {"decode_s", "encode_s", "search_s", "total_s"} <= set(res.timings)
    gj = res.to_geojson(["a", "b", "c", "d", "e"])
    p0 = gj["features"][0]
    assert p0["geometry"]["coordinates"] == [coords[0, 1], coords[0, 0]]  # GeoJSON is [lon, lat]
    assert p0["properties"]["rank"] == 1 and p0["properties"]["query"] == "a"
    # save / load round trip on a fresh Localiser
    loc.save_index(tmp_path / "idx.npz")
    loc2 = Localiser.from_dir(out, device="cpu")
    assert loc2.load_index(tmp_path / "idx.npz") == 35
    res2 = loc2.localise(tiles[:5], k=3)
    np.testing.assert_array_equal(res2.indices, res.indices)
    assert res2.ids == res.ids


def test_localise_errors(bundle):
    loc = Localiser.from_dir(bundle[0], device="cpu")
    rng = np.random.default_rng(8)
    tiles = _imgs(8, 4, 48, 48)
    good = np.c_[rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 4)]
    nan = good.copy()
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        loc.index_references(tiles, nan)
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        loc.index_references(tiles, good[:3])
    with pytest.raises(ValueError, match="ids"):
        loc.index_references(tiles, good, ids=["a"])
    with pytest.raises(ValueError, match="empty batch"):
        loc.index_references([], np.zeros((0, 2)))
    assert len(loc.index) == 0  # nothing half-added
    loc.index_references(tiles, good)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
        loc.localise(tiles[:1], k=5)
    with pytest.raises(ValueError, match="k must be"):
        loc.localise(tiles[:1], k=0)
    with pytest.raises(ValueError, match="empty batch"):
        loc.localise([], k=1)


def test_the_gallery_is_embedded_once(bundle):
    loc = Localiser.from_dir(bundle[0], device="cpu")
    calls = {"ground": 0, "aerial": 0}
    for view in ("ground", "aerial"):
        enc = loc.encoders[view]

        def counting(batch, _enc=enc, _view=view):
            calls[_view] += 1
            return _enc(batch)

        loc.encoders[view] = counting
    loc.index_references(_imgs(9, 6, 48, 48), np.zeros((6, 2)))
    assert calls["aerial"] == 1
    for _ in range(3):
        loc.localise(_imgs(10, 2), k=2)
    assert calls == {"ground": 3, "aerial": 1}


def test_eight_threads_give_the_sequential_answers(bundle):
    loc = Localiser.from_dir(bundle[0], device="cpu", batch_size=3, decode_threads=3)
    rng = np.random.default_rng(11)
    loc.index_references(_imgs(11, 40, 48, 48), np.c_[rng.uniform(-5, 5, 40), rng.uniform(-5, 5, 40)])
    queries = [_imgs(100 + i, 1 + i % 4) for i in range(16)]
    seq = [loc.localise(q, k=5) for q in queries]
    results: dict[int, LocaliseResult] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(t, 16, 8):
                for _ in range(2):
                    results[i] = loc.localise(queries[i], k=5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, r in enumerate(seq):
        np.testing.assert_array_equal(results[i].indices, r.indices)
        np.testing.assert_array_equal(results[i].scores, r.scores)
        assert results[i].ids == r.ids


def test_bundle_files_are_verified(bundle, tmp_path):
    import shutil

    src = bundle[0]
    bad = tmp_path / "tampered"
    shutil.copytree(src, bad)
    data = bytearray((bad / "ground.onnx").read_bytes())
    data[-10] ^= 1
    (bad / "ground.onnx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="ground.onnx has sha256.*re-export"):
        Localiser.from_dir(bad)
    missing = tmp_path / "missing"
    shutil.copytree(src, missing)
    (missing / "aerial.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="aerial.onnx.*missing"):
        Localiser.from_dir(missing)
    with pytest.raises(FileNotFoundError, match="s4g-export"):
        Localiser.from_dir(tmp_path / "nothing")


def test_index_from_another_model_is_refused(bundle, tmp_path):
    loc = Localiser.from_dir(bundle[0], device="cpu")
    loc.index_references(_imgs(12, 3, 48, 48), np.zeros((3, 2)))
    loc.save_index(tmp_path / "a.npz")
    make_tiny_bundle(tmp_path / "other", seed=5)
    other = Localiser.from_dir(tmp_path / "other", device="cpu")
    with pytest.raises(ValueError, match="built by model.*rebuild"):
        other.load_index(tmp_path / "a.npz")


def test_kill_9_during_save_index_keeps_the_previous_file(bundle, tmp_path):
    """A child process rewrites the index in a loop; SIGKILL it mid-write; the file must still load."""
    path = tmp_path / "gallery.npz"
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from s4g_engine import Localiser
        loc = Localiser.from_dir({str(bundle[0])!r}, device="cpu")
        rng = np.random.default_rng(0)
        n = 60000
        e = rng.standard_normal((n, 64)).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        loc.index.add(e, np.zeros((n, 2)), ids=[f"r{{i}}" for i in range(n)])
        i = 0
        while True:
            loc.index._coords[:, 0] = i % 90  # every version differs
            loc.save_index({str(path)!r})
            i += 1
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first complete save (skip lines an editable-install rebuild prints)
        while line and not line.strip().isdigit():
            line = proc.stdout.readline()
        assert line.strip() == "1", line
        time.sleep(0.137)  # somewhere inside a later save
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    loc = Localiser.from_dir(bundle[0], device="cpu")
    assert loc.load_index(path) == 60000
    c = loc.index.coords[:, 0]
    assert (c == c[0]).all()  # one complete version, not a mix


def _numpy_polar(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """docs/METHOD.md §9 written out in float64 NumPy: bilinear, zero outside the tile."""
    a = img.shape[0]
    src = img.astype(np.float64)
    i, j = np.arange(h)[:, None], np.arange(w)[None, :]
    r = (a / 2) * (h - 1 - i) / h
    row, col = a / 2 + r * np.cos(2 * np.pi * j / w), a / 2 - r * np.sin(2 * np.pi * j / w)
    r0, c0 = np.floor(row).astype(int), np.floor(col).astype(int)
    fr, fc = row - r0, col - c0
    out = np.zeros((h, w, 3))
    for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < a) & (cc >= 0) & (cc < a)
        out += np.where(ok[..., None], src[np.clip(rr, 0, a - 1), np.clip(cc, 0, a - 1)], 0) * wgt[..., None]
    return out


def test_polar_aerial_model_matches_a_numpy_reference(tmp_path):
    model, cfg = make_tiny_bundle(tmp_path / "polar", polar=True)
    v = cfg["views"]["aerial"]
    h, w = v["polar"]["height"], v["polar"]["width"]
    src = tuple(v["polar"]["source_size"])
    loc = Localiser.from_dir(tmp_path / "polar", device="cpu")
    tiles = _imgs(20, 3, 90, 90)
    filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[v["interpolation"]]
    xs = []
    for t in tiles:
        r = np.asarray(Image.fromarray(t).resize((src[1], src[0]), filt, reducing_gap=3.0))
        p = _numpy_polar(r, h, w) / 255.0
        xs.append(((p - np.array(v["mean"])) / np.array(v["std"])).transpose(2, 0, 1))
    with torch.no_grad():
        ref = model.embed(torch.tensor(np.stack(xs), dtype=torch.float32)).double().numpy()
    emb = loc.embed_aerial(tiles).astype(np.float64)
    assert ((emb * ref).sum(1) / np.linalg.norm(ref, axis=1)).min() >= 0.9999


def test_pipelined_localise_equals_the_sequential_path(bundle, tmp_path):
    """Overlapping decode/preprocess/encode/search changes nothing: same ids, scores, coords, and the same
    error (the first bad image in input order) when an image in the middle of a batch is bad."""
    out, _, _ = bundle
    rng = np.random.default_rng(21)
    tiles = _imgs(22, 30, 64, 64)
    coords = np.c_[rng.uniform(40, 41, 30), rng.uniform(-74, -73, 30)]
    queries: list = [*_imgs(23, 4, *GROUND), *_imgs(24, 3, 70, 200)]
    for i, im in enumerate(_imgs(25, 4, 64, 192)):
        p = tmp_path / f"q{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(im).save(p)
        queries.append(str(p))
    buf = io.BytesIO()
    Image.fromarray(_imgs(26, 1)[0]).save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with Localiser.from_dir(out, device="cpu", precision="fp32", batch_size=4, decode_threads=2) as loc:
        loc.index_references(tiles, coords, ids=[f"t{i}" for i in range(30)])
        seq = loc.localise(queries, k=4, pipelined=False)
        for _ in range(2):
            pip = loc.localise(queries, k=4)
            np.testing.assert_array_equal(pip.indices, seq.indices)
            np.testing.assert_array_equal(pip.scores, seq.scores)
            np.testing.assert_array_equal(pip.coords, seq.coords)
            assert pip.ids == seq.ids and len(pip.ids) == len(queries)
        assert {"decode_s", "encode_s", "search_s", "other_s", "total_s", "decode_work_s",
                "preprocess_work_s"} <= set(pip.timings)
        assert pip.timings["total_s"] >= pip.timings["encode_s"] + pip.timings["search_s"]
        for bad, err in ((str(tmp_path / "trunc.jpg"), ValueError), (str(tmp_path / "nope.jpg"), FileNotFoundError),
                         (np.zeros((10, 10, 3), np.float32), ValueError)):
            mixed = queries[:6] + [bad] + queries[6:9] + [str(tmp_path / "nope2.jpg")]  # 7th of 12: 2nd batch
            got = []
            for pipelined in (True, False):
                with pytest.raises(err) as info:
                    loc.localise(mixed, k=4, pipelined=pipelined)
                got.append((type(info.value), str(info.value)))
            assert got[0] == got[1] and "nope2" not in got[0][1]
        again = loc.localise(queries, k=4)  # the pipeline is intact after the errors
        np.testing.assert_array_equal(again.indices, seq.indices)
        assert again.ids == seq.ids


def test_ids_of_missing_candidates_are_empty(bundle):
    out, _, _ = bundle
    with Localiser.from_dir(out, device="cpu", precision="fp32", batch_size=4) as loc:
        loc.index_references(_imgs(27, 6, 64, 64), np.c_[np.linspace(1, 2, 6), np.linspace(3, 4, 6)],
                             ids=list("abcdef"))
        table = loc._id_table(loc.index)
        assert table[np.array([[0, -1], [5, 2]])].tolist() == [["a", ""], ["f", "c"]]
        loc.index_references(_imgs(28, 1, 64, 64), [[1.5, 3.5]], ids=["g"])  # the table follows the index
        assert loc._id_table(loc.index)[[6, -1]].tolist() == ["g", ""]


@pytest.mark.parametrize("draft", [(32, 128), (16, 16), (200, 200), None], ids=str)
def test_fast_jpeg_decode_is_bit_identical_to_pillow(tmp_path, monkeypatch, draft):
    """JPEG files decode through libjpeg-turbo directly (simplejpeg) at Pillow's draft scale: the pixels must
    be exactly Pillow's, for every subsampling, progressive files, grey, all 8 EXIF orientations and odd
    sizes; what the fast path does not handle (CMYK, XMP orientation, truncation) goes to Pillow."""
    from s4g_engine import preprocess

    if preprocess._simplejpeg() is None:
        pytest.skip("simplejpeg is not installed (part of the engine extra)")
    rng = np.random.default_rng(30)
    y, x = np.mgrid[0:300, 0:700]
    base = np.stack([np.sin(x / 17.0), np.cos(y / 11.0), np.sin((x + y) / 23.0)], -1) * 90 + 128
    smooth = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    cases = []
    for i, (h, w, kw) in enumerate([(67, 259, {}), (300, 700, {"subsampling": 0}), (250, 610, {"subsampling": 1}),
                                    (121, 333, {"progressive": True}), (9, 13, {}), (64, 64, {"quality": 60})]):
        p = tmp_path / f"c{i}.jpg"
        Image.fromarray(smooth[:h, :w]).save(p, quality=kw.pop("quality", 90), **kw)
        cases.append((p, True))
    Image.fromarray(smooth[:150, :400, 0]).save(tmp_path / "grey.jpg")
    cases.append((tmp_path / "grey.jpg", True))
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        Image.fromarray(smooth[:90, :260]).save(tmp_path / f"o{o}.jpg", exif=exif.tobytes())
        cases.append((tmp_path / f"o{o}.jpg", True))
    Image.fromarray(smooth[:80, :200]).convert("CMYK").save(tmp_path / "cmyk.jpg")
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    Image.fromarray(smooth[:80, :200]).save(tmp_path / "xmp.jpg", xmp=xmp)
    cases += [(tmp_path / "cmyk.jpg", False), (tmp_path / "xmp.jpg", False)]
    fast = {p: preprocess._open(p, draft, None, "bilinear") for p, _ in cases}
    for p, handled in cases:
        assert (preprocess._fast_jpeg(p, draft) is not None) == handled, p.name
    data = {p: p.read_bytes() for p, _ in cases}  # encoded bytes (as a web service holds them) take the same path
    assert all((preprocess._fast_jpeg(data[p], draft) is not None) == handled for p, handled in cases)
    fast_bytes = {p: preprocess._open(data[p], draft, None, "bilinear") for p, _ in cases}
    monkeypatch.setattr(preprocess, "_simplejpeg", lambda: None)  # Pillow only
    for p, _ in cases:
        ref = preprocess._open(p, draft, None, "bilinear")
        assert fast[p].shape == ref.shape and fast[p].dtype == np.uint8, p.name
        np.testing.assert_array_equal(fast[p], ref, err_msg=p.name)
        np.testing.assert_array_equal(fast_bytes[p], ref, err_msg=p.name)
