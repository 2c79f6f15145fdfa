"""Catalogue cases (see hostile_cases.py) for training configs and checkpoints, Parquet tile lists and
embedding-shard manifests, the service's request checks and settings, Milvus Lite paths, image paths and
modes, and the Localiser's ``k``."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers.hostile_cases import case
from s4g_engine import errors as E
from s4g_engine.datasets import _io as dio
from s4g_engine.serve.handlers import ApiError


# ------------------------------------------------------------------------------------- training configs
def _build(*overrides: tuple[str, str], config_file: Path | None = None) -> Any:
    pytest.importorskip("torch")
    from s4g_train.config import build_config
    return build_config("synthetic", None if config_file is None else str(config_file), list(overrides))


@case("config-set-lr-nan", E.InputError, "optim.lr", "expected a finite number", "'nan'", fault="silent")
def _(ctx): _build(("optim.lr", "nan"))


@case("config-set-epochs-inf", E.InputError, "train.epochs", "expected an integer", "inf", fault="crash")
def _(ctx): _build(("train.epochs", ".inf"))  # int(inf): OverflowError before


@case("config-set-amp-off-is-a-word", None, fault="unclear")
def _(ctx):
    cfg = _build(("train.amp", "off"), ("train.final_eval", "off"))  # YAML 1.1 reads both as False
    assert cfg.train.amp == "off" and type(cfg.train.amp) is str
    assert cfg.train.final_eval is False


@case("config-eval-batch-size-zero", E.InputError, "eval.batch_size=0", "expected an integer >= 1", fault="silent")
def _(ctx): _build(("eval.batch_size", "0"))  # accepted before: the run failed at its first evaluation


@case("config-yaml-python-tag-never-runs", E.FormatError, "not valid yaml", "python/object")
def _(ctx):
    marker = ctx.tmp / "ran"
    (ctx.tmp / "c.yaml").write_text(f"train:\n  name: !!python/object/apply:os.mkdir ['{marker}']\n")
    try:
        _build(config_file=ctx.tmp / "c.yaml")
    finally:
        assert not marker.exists()


# ------------------------------------------------------------------------------------------ checkpoints
def _load_ckpt(ctx: Any, payload: Any = None, raw: bytes | None = None) -> Any:
    torch = pytest.importorskip("torch")
    from s4g_train.checkpoint import load_model
    path = ctx.tmp / "c.pt"
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(payload, path)
    return load_model(path)


@case("checkpoint-is-a-folder", E.NotAFileError, "is a folder", "expected a checkpoint file", fault="unclear")
def _(ctx):
    pytest.importorskip("torch")
    from s4g_train.checkpoint import load_model
    load_model(ctx.tmp)


@case("checkpoint-empty-file", E.CorruptFileError, "0 bytes", "truncated")
def _(ctx): _load_ckpt(ctx, raw=b"")


@case("checkpoint-without-model-config", E.FormatError, "expected 'model_config' and 'model'", "nonetype",
      fault="crash")
def _(ctx): _load_ckpt(ctx, {"format": "s4g-checkpoint", "version": 1, "model": {}})  # KeyError before


@case("checkpoint-model-not-a-state-dict", E.FormatError, "expected 'model_config' and 'model'", "list",
      fault="crash")
def _(ctx): _load_ckpt(ctx, {"format": "s4g-checkpoint", "version": 1, "model_config": {}, "model": [1]})


@case("checkpoint-model-config-unknown-field", E.FormatError, "unknown modelconfig fields ['nope']",
      "expected the modelconfig", fault="crash")
def _(ctx): _load_ckpt(ctx, {"format": "s4g-checkpoint", "version": 1, "model_config": {"nope": 1}, "model": {}})


# ------------------------------------------------------------------------------------ Parquet tile lists
def _tile_list(ctx: Any, columns: dict[str, Any]) -> Any:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from s4g_engine.shards import read_tile_list
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(ctx.tmp / f"t{i}.png")
    pq.write_table(pa.table(columns), ctx.tmp / "l.parquet")
    return read_tile_list(ctx.tmp / "l.parquet", ctx.tmp)


@case("parquet-tile-list-is-a-folder", E.NotAFileError, "is a folder", "expected a parquet file", fault="unclear")
def _(ctx):
    pytest.importorskip("pyarrow")
    from s4g_engine.shards import read_tile_list
    (ctx.tmp / "d.parquet").mkdir()
    read_tile_list(ctx.tmp / "d.parquet", ctx.tmp)  # "does not exist" before


@case("parquet-tile-list-null-id-falls-back", None, fault="silent")
def _(ctx):
    import pyarrow as pa
    _paths, _coords, ids = _tile_list(ctx, {"image": ["t0.png", "t1.png"], "lat": [45.0, 45.1], "lon": [7.0, 7.1],
                                            "id": pa.array([None, "b"], pa.string())})
    assert ids == ["t0.png", "b"], ids  # the id 'None' before


@case("parquet-tile-list-null-image", E.FormatError, "l.parquet row 1", "empty (null)", fault="unclear")
def _(ctx):
    import pyarrow as pa
    _tile_list(ctx, {"image": pa.array(["t0.png", None], pa.string()), "lat": [45.0, 45.1], "lon": [7.0, 7.1]})


@case("parquet-tile-list-lat-text", E.FormatError, "l.parquet", "expected coords as numbers", "'north'",
      fault="unclear")
def _(ctx): _tile_list(ctx, {"image": ["t0.png"], "lat": ["north"], "lon": [7.0]})


@case("parquet-tile-list-boolean-lat", E.FormatError, "holds booleans", "expected lat in degrees", fault="silent")
def _(ctx): _tile_list(ctx, {"image": ["t0.png"], "lat": [True], "lon": [7.0]})  # read as 1.0° before


@case("parquet-tile-list-dotdot", dio.PathEscapeError, "row 0", "'../../etc/passwd' escapes")
def _(ctx): _tile_list(ctx, {"image": ["../../etc/passwd"], "lat": [45.0], "lon": [7.0]})


# ------------------------------------------------------------------------------ embedding-shard manifests
def _manifest(ctx: Any, **change: Any) -> Any:
    from s4g_engine.shards import Manifest
    doc = {"format": "s4g-embedding-shards", "version": 1, "job": {"embed_dim": 4}, "shards": []}
    doc.update(change)
    folder = ctx.tmp / "shards"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(doc))
    return Manifest.read(folder)


@case("shard-manifest-file-outside-folder", E.CorruptFileError, "'../secret.parquet'",
      "expected 'shard-000000.parquet'", fault="loss")
def _(ctx):
    pytest.importorskip("pyarrow")
    from s4g_engine.shards import sha256_bytes, shard_bytes
    data = shard_bytes(np.eye(2, 4, dtype=np.float32), np.zeros((2, 2)), ["a", "b"])
    (ctx.tmp / "secret.parquet").write_bytes(data)  # a manifest listing it with its true sha256 read it before
    man = _manifest(ctx, shards=[{"shard": 0, "file": "../secret.parquet", "sha256": sha256_bytes(data), "rows": 2,
                                  "start": 0, "stop": 2}])
    list(man.iter_shards(1))


@case("shard-manifest-entry-not-an-object", E.CorruptFileError, "shards[0]", "expected an object", "int",
      fault="crash")
def _(ctx): _manifest(ctx, shards=[1])  # TypeError before


@case("shard-manifest-without-job", E.CorruptFileError, "expected an object 'job'", "nonetype", fault="crash")
def _(ctx): _manifest(ctx, job=None)  # KeyError / TypeError before


# ---------------------------------------------------------------------------------------------- images
def _rgb(image: Any) -> np.ndarray:
    from s4g_engine.preprocess import to_uint8_rgb
    return to_uint8_rgb(image)


@case("image-path-with-nul-byte", E.InputError, "cannot be opened", "embedded null byte", "expected the path",
      fault="crash")
def _(ctx): _rgb("tile\x00.jpg")  # a bare ValueError before


@case("image-zero-byte-file", E.CorruptFileError, "cannot decode", "empty.jpg")
def _(ctx):
    (ctx.tmp / "empty.jpg").write_bytes(b"")
    _rgb(ctx.tmp / "empty.jpg")


@case("image-jpeg-declares-65000x65000", E.LimitError, "4225000000 pixels", "smaller image")
def _(ctx):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    struct.pack_into(">HH", data, sof + 5, 65000, 65000)
    _rgb(bytes(data))


@case("image-16bit-grey-png-ok", None)
def _(ctx):
    grey = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 85 % 65536).astype(np.uint16)
    Image.fromarray(grey).save(ctx.tmp / "g16.png")
    want = np.repeat((grey >> 8).astype(np.uint8)[:, :, None], 3, axis=2)  # the high byte, as grey RGB
    np.testing.assert_array_equal(_rgb(ctx.tmp / "g16.png"), want)


# -------------------------------------------------------------------------------------- Milvus Lite paths
@case("index-load-missing-milvus-db-creates-nothing", E.MissingFileError, "gallery.db", "does not exist",
      fault="unclear")
def _(ctx):
    from s4g_engine.index import ReferenceIndex
    try:
        ReferenceIndex.load(ctx.tmp / "gallery.db")  # Milvus Lite would create an empty gallery file
    finally:
        assert not (ctx.tmp / "gallery.db").exists()


# ------------------------------------------------------------------------------------------- the service
def _api(status: int, fn: Any) -> None:
    try:
        fn()
    except ApiError as exc:
        assert exc.status == status, (exc.status, exc.detail)
        raise


@case("serve-content-length-negative", ApiError, "'-5'", "expected a non-negative integer", fault="silent")
def _(ctx):
    from s4g_engine.serve.handlers import check_content_length
    _api(400, lambda: check_content_length({"content-length": "-5"}))


@case("serve-tile-symlink-out-of-folder", ApiError, "no tile image 'link.png'")
def _(ctx):
    from s4g_engine.serve.handlers import thumbnail
    (ctx.tmp / "tiles").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ctx.tmp / "secret.png")
    os.symlink(ctx.tmp / "secret.png", ctx.tmp / "tiles" / "link.png")
    _api(404, lambda: thumbnail(str(ctx.tmp / "tiles"), "link.png", 32))


@case("serve-config-wait-not-a-number", E.InputError, "max_wait_ms", "expected a number > 0", "str 'fast'",
      fault="crash")
def _(ctx):
    from s4g_engine.serve.config import ServeConfig
    ServeConfig(model="m", index="i", max_wait_ms="fast")  # type: ignore[arg-type]


@case("serve-config-port-string", E.InputError, "port", "expected an integer", "'80'", fault="crash")
def _(ctx):
    from s4g_engine.serve.config import ServeConfig
    ServeConfig(model="m", index="i", port="80")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- localiser
@case("localise-k-zero", E.InputError, "k must be an integer in [1, 30]", "got 0")
def _(ctx): ctx.loc.localise(ctx.tiles[:1], k=0)
