"""Catalogue cases (see hostile_cases.py) for images, the Localiser's inputs and state, the kernel façade,
CSV files and dataset readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from helpers.hostile_cases import case, jpeg_bytes, png_declaring
from s4g_engine import errors as E
from s4g_engine.datasets import _io as dio


# ---------------------------------------------------------------------------------------------- images
def _rgb(image: Any) -> np.ndarray:
    from s4g_engine.preprocess import to_uint8_rgb
    return to_uint8_rgb(image)


@case("image-png-declares-12000x12000", E.LimitError, "12000×12000", "max_image_pixels", fault="unclear")
def _(ctx):
    (ctx.tmp / "bomb.png").write_bytes(png_declaring(12000, 12000))
    _rgb(ctx.tmp / "bomb.png")


@case("image-png-declares-20000x20000", E.LimitError, "400000000 pixels", "smaller image", fault="crash")
def _(ctx): _rgb(png_declaring(20000, 20000))


@case("image-bytes-declares-12000x12000", E.LimitError, "image bytes", "max_image_pixels", fault="crash")
def _(ctx): _rgb(png_declaring(12000, 12000))


@case("image-file-over-byte-limit", E.LimitError, "max_image_bytes", fault="silent")
def _(ctx):
    from s4g_engine.limits import limits_override
    (ctx.tmp / "a.jpg").write_bytes(jpeg_bytes())
    with limits_override(max_image_bytes=100):
        _rgb(ctx.tmp / "a.jpg")


@case("image-is-a-folder", E.NotAFileError, "is a folder", "expected an image file", fault="unclear")
def _(ctx): _rgb(ctx.tmp)


@case("image-missing", E.MissingFileError, "does not exist", "expected an image file")
def _(ctx): _rgb(ctx.tmp / "none.jpg")


@case("image-is-a-device", E.InputError, "not a regular file", "/dev/null", fault="unclear")
def _(ctx): _rgb("/dev/null")


@case("image-text-file", E.CorruptFileError, "cannot decode", "not an image")
def _(ctx):
    (ctx.tmp / "x.png").write_text("hello")
    _rgb(ctx.tmp / "x.png")


@case("image-truncated-jpeg", E.CorruptFileError, "cannot decode", "truncated")
def _(ctx):
    (ctx.tmp / "t.jpg").write_bytes(jpeg_bytes(200, 300)[:600])
    _rgb(ctx.tmp / "t.jpg")


@case("image-empty-bytes", E.CorruptFileError, "empty image bytes", "expected the content", fault="crash")
def _(ctx): _rgb(b"")


@case("image-garbage-bytes", E.CorruptFileError, "image bytes (7 bytes)", "not an image", fault="crash")
def _(ctx): _rgb(b"garbage")


@case("image-encoded-bytes-accepted", None, fault="crash")
def _(ctx):
    data = jpeg_bytes(24, 40)
    (ctx.tmp / "a.jpg").write_bytes(data)
    np.testing.assert_array_equal(_rgb(data), _rgb(ctx.tmp / "a.jpg"))
    np.testing.assert_array_equal(_rgb(bytearray(data)), _rgb(memoryview(data)))
    emb = ctx.loc.embed_ground([data, str(ctx.tmp / "a.jpg")])
    np.testing.assert_array_equal(emb[0], emb[1])


@case("image-channels-first-3xHx3", E.InputError, "looks channels-first", "np.transpose", fault="silent")
def _(ctx): _rgb(np.zeros((3, 50, 3), np.uint8))


@case("image-channels-first-3xHxW", E.InputError, "looks channels-first", "(3, 40, 60)", fault="unclear")
def _(ctx): _rgb(np.zeros((3, 40, 60), np.uint8))


@case("image-float-array", E.InputError, "expected a uint8", "float32")
def _(ctx): _rgb(np.zeros((8, 8, 3), np.float32))


@case("image-wrong-type", E.InputTypeError, "expected an image path", "int", fault="clear")
def _(ctx): _rgb(5)


@case("image-5-channels", E.InputError, "(h, w, 3)", "(8, 8, 5)")
def _(ctx): _rgb(np.zeros((8, 8, 5), np.uint8))


# ------------------------------------------------------------------------------------------- localiser
@case("localise-after-close", E.StateError, "was closed", "expected an open one", fault="unclear")
def _(ctx):
    from s4g_engine import Localiser
    loc = Localiser.from_dir(ctx.bundle, device="cpu", backend="onnxruntime", precision="fp32")
    loc.close()
    loc.localise(ctx.tiles[:1])


@case("localise-k-beyond-index", E.InputError, "k must be an integer in [1, 30]", "40")
def _(ctx): ctx.loc.localise(ctx.tiles[:1], k=40)


@case("localise-empty-list", E.InputError, "empty batch", "expected at least one image")
def _(ctx): ctx.loc.localise([], k=1)


@case("localiser-batch-size-zero", E.InputError, "batch_size", "got 0")
def _(ctx):
    from s4g_engine import Localiser
    Localiser.from_dir(ctx.bundle, device="cpu", backend="onnxruntime", batch_size=0)


@case("localiser-batch-size-over-limit", E.LimitError, "max_batch", "1000000000", fault="silent")
def _(ctx):
    from s4g_engine import Localiser
    Localiser.from_dir(ctx.bundle, device="cpu", backend="onnxruntime", batch_size=10**9)


@case("index-references-ids-bare-string", E.InputError, "single string 'ab'", fault="silent")
def _(ctx): ctx.loc.index_references(ctx.tiles[:2], np.zeros((2, 2)), ids="ab")


@case("index-references-coords-lon-first", E.InputError, "out of range", "(lat, lon)")
def _(ctx): ctx.loc.index_references(ctx.tiles[:1], [[145.0, 7.0]])


# ---------------------------------------------------------------------------------------------- kernels
def _q(n: int = 3, d: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


@case("topk-k-1e9", E.LimitError, "k=1000000000", "max_k", fault="crash")
def _(ctx):
    from s4g_engine import topk_similarity
    topk_similarity(_q(), _q(100), 10**9)


@case("topk-results-over-limit", E.LimitError, "max_topk_results", fault="crash")
def _(ctx):
    from s4g_engine import topk_similarity
    from s4g_engine.limits import limits_override
    with limits_override(max_topk_results=100):
        topk_similarity(_q(50), _q(100), 10)


@case("topk-k-zero", ValueError, "k must be >= 1", "0")
def _(ctx):
    from s4g_engine import topk_similarity
    topk_similarity(_q(), _q(), 0)


@case("topk-nan-queries", ValueError, "nan/inf")
def _(ctx):
    from s4g_engine import topk_similarity
    q = _q()
    q[0, 0] = np.nan
    topk_similarity(q, _q(), 1)


@case("topk-dim-mismatch", ValueError, "same dimension", "(3, 8)")
def _(ctx):
    from s4g_engine import topk_similarity
    topk_similarity(_q(), _q(4, 5), 1)


@case("polar-non-square", ValueError, "square tiles", "10×12")
def _(ctx):
    from s4g_engine import polar_transform
    polar_transform(np.zeros((10, 12, 3), np.uint8), 8, 16)


# ----------------------------------------------------------------------------------------------- CSV
def _csv(ctx: Any, text: str | bytes, *, images: bool = True) -> Any:
    from s4g_engine.coords_csv import read_coords_csv
    if images:
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(ctx.tmp / f"t{i}.png")
    p = ctx.tmp / "coords.csv"
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return read_coords_csv(p, ctx.tmp)


@case("csv-utf8-bom-ok", None, fault="unclear")
def _(ctx):
    paths, coords, ids = _csv(ctx, "\ufeffimage,lat,lon\nt0.png,45.1,7.2\nt1.png,45.2,7.3\n")
    assert ids == ["t0.png", "t1.png"] and coords.shape == (2, 2)


@case("csv-latin1", dio.MalformedRowError, "coords.csv:3", "not utf-8", fault="unclear")
def _(ctx): _csv(ctx, "image,lat,lon,id\nt0.png,45,7,a\nt1.png,45,7,caf\xe9\n".encode("latin-1"))


@case("csv-utf16", dio.MalformedRowError, "coords.csv:1", "utf-16", fault="unclear")
def _(ctx): _csv(ctx, "image,lat,lon\nt0.png,45,7\n".encode("utf-16"))


@case("csv-missing-columns", E.FormatError, "lacks column(s) ['lat', 'lon']", "'image,lat,lon[,id]'")
def _(ctx): _csv(ctx, "name,x,y\nt0.png,1,2\n")


@case("csv-empty", E.FormatError, "header row is missing", fault="unclear")
def _(ctx): _csv(ctx, "")


@case("csv-lat-not-a-number", dio.MalformedRowError, "coords.csv:2", "'north'")
def _(ctx): _csv(ctx, "image,lat,lon\nt0.png,north,7\n")


@case("csv-lat-nan", dio.MalformedRowError, "coords.csv:2", "nan")
def _(ctx): _csv(ctx, "image,lat,lon\nt0.png,nan,7\n")


@case("csv-lat-999", dio.MalformedRowError, "coords.csv:3", "[-90, 90]", fault="unclear")
def _(ctx): _csv(ctx, "image,lat,lon\nt0.png,45,7\nt1.png,999,7\n")


@case("csv-short-row", dio.MalformedRowError, "coords.csv:2", "3 fields", fault="crash")
def _(ctx): _csv(ctx, "image,lat,lon\nt0.png,45\n")


@case("csv-image-dotdot", dio.PathEscapeError, "coords.csv:2", "escapes", fault="loss")
def _(ctx): _csv(ctx, "image,lat,lon\n../../etc/passwd,45,7\n")


@case("csv-image-absolute", dio.PathEscapeError, "absolute path", "/etc/passwd", fault="loss")
def _(ctx): _csv(ctx, "image,lat,lon\n/etc/passwd,45,7\n")


@case("csv-image-missing", E.MissingFileError, "coords.csv:2", "nope.png")
def _(ctx): _csv(ctx, "image,lat,lon\nnope.png,45,7\n")


@case("csv-image-is-folder", E.NotAFileError, "coords.csv:2", "is a folder", fault="unclear")
def _(ctx):
    (ctx.tmp / "sub").mkdir()
    _csv(ctx, "image,lat,lon\nsub,45,7\n")


@case("csv-no-rows", E.FormatError, "lists no images", "one row per tile")
def _(ctx): _csv(ctx, "image,lat,lon\n\n")


# ------------------------------------------------------------------------------------------- datasets
def _cvusa(ctx: Any) -> Path:
    from helpers.layouts import make_cvusa
    return make_cvusa(ctx.tmp / "CVUSA", n_train=3, n_test=2)


@case("cvusa-split-bom-ok", None, fault="unclear")
def _(ctx):
    from s4g_engine.datasets import load_split
    root = _cvusa(ctx)
    f = root / "splits" / "val-19zl.csv"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert load_split("cvusa", root, "test").num_queries == 2


@case("cvusa-gps-bom-ok", None, fault="crash")
def _(ctx):
    from s4g_engine.datasets import load_split
    root = _cvusa(ctx)
    f = root / "split_locations" / "all.csv"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert np.isfinite(load_split("cvusa", root, "test").reference_gps).all()


@case("cvusa-split-latin1", dio.MalformedRowError, "val-19zl.csv:1", "not utf-8", fault="unclear")
def _(ctx):
    from s4g_engine.datasets import load_split
    root = _cvusa(ctx)
    (root / "splits" / "val-19zl.csv").write_bytes(b"bingmap/19/caf\xe9.jpg,streetview/x.jpg,a.png\n")
    load_split("cvusa", root, "test")


@case("cvusa-split-path-escape", dio.PathEscapeError, "escapes the dataset root", "'..'", fault="clear")
def _(ctx):
    from s4g_engine.datasets import load_split
    root = _cvusa(ctx)
    (root / "splits" / "val-19zl.csv").write_text("../../x/0000001.jpg,streetview/panos/0000001.jpg,a.png\n")
    load_split("cvusa", root, "test")


@case("cvusa-gps-row-malformed", dio.MalformedRowError, "all.csv:2", "≥4 comma-separated numbers")
def _(ctx):
    from s4g_engine.datasets import load_split
    root = _cvusa(ctx)
    f = root / "split_locations" / "all.csv"
    lines = f.read_text().splitlines()
    lines[1] = "a,b"
    f.write_text("\n".join(lines) + "\n")
    load_split("cvusa", root, "test")


@case("dataset-unknown-name", E.InputError, "unknown dataset 'cvusb'", "expected one of")
def _(ctx):
    from s4g_engine.datasets import load_split
    load_split("cvusb", ctx.tmp, "test")


@case("dataset-root-missing", E.MissingFileError, "is not a directory", "dataset folder")
def _(ctx):
    from s4g_engine.datasets import load_split
    load_split("cvusa", ctx.tmp / "none", "test")


@case("dataset-unknown-option", E.InputError, "unexpected options ['utm_zone']", "allowed", fault="clear")
def _(ctx):
    from s4g_engine.datasets import load_split
    load_split("cvusa", _cvusa(ctx), "test", utm_zone=55)


@case("vigor-meta-json-bad", E.FormatError, "metres_per_pixel", "positive number")
def _(ctx):
    from helpers.layouts import make_vigor
    from s4g_engine.datasets import load_split
    root = make_vigor(ctx.tmp / "VIGOR", grid=3, panos_per_city=2)
    (root / "meta.json").write_text('{"metres_per_pixel": "wide"}')
    load_split("vigor-same", root, "test")


@case("cvact-mat-not-matlab", E.CorruptFileError, "cannot read as a matlab file", "re-download", fault="clear")
def _(ctx):
    from s4g_engine.datasets import load_split
    (ctx.tmp / "ACT_data.mat").write_bytes(b"definitely not MATLAB" * 20)
    load_split("cvact", ctx.tmp, "test")


@case("university-class-folder-not-number", E.FormatError, "is not a number", "zero-padded integers")
def _(ctx):
    from helpers.layouts import make_university
    from s4g_engine.datasets import load_split
    root = make_university(ctx.tmp / "U", n_train_classes=2, n_test_classes=2, drones_per_class=1)
    (root / "test" / "query_drone" / "abc").mkdir()
    load_split("university-d2s", root, "test")


@case("metrics-jsonl-line-not-json", E.FormatError, "m.jsonl:2", "one json object per line")
def _(ctx):
    import pytest
    plots = pytest.importorskip("s4g_train.plots")
    (ctx.tmp / "m.jsonl").write_text('{"event": "epoch"}\n{oops\n')
    plots.read_metrics(ctx.tmp / "m.jsonl")


@case("synth-force-over-foreign-folder-keeps-it", E.OutputExistsError, "not an s4g-synth dataset",
      "never other data", fault="loss")
def _(ctx):
    from s4g_synth import generate_dataset
    (ctx.tmp / "mine").mkdir()
    (ctx.tmp / "mine" / "thesis.txt").write_text("precious")
    try:
        generate_dataset("cvusa", ctx.tmp / "mine", pairs=2, force=True, workers=1, tile_size=32,
                         pano_size=(16, 64), district_m=300.0, contact_pairs=0)
    finally:
        assert (ctx.tmp / "mine" / "thesis.txt").read_text() == "precious"
