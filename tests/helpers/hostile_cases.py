"""The cases of the hostile-input catalogue (tests/test_hostile_inputs.py), one per row.

A case runs one action against a small, healthy world (a torch-free ONNX bundle, a saved index, tiles, a
dataset) after making exactly one thing wrong, and names the exact error class it must raise and words the
message must contain (what was expected, what came). ``exc=None`` cases must *work* (their action asserts the
result: a silently wrong result fails). ``fault`` records how the case behaved before issue 15 (clear,
unclear, crash, silent, loss), for the report.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from helpers.onnx_bundle import onnx_model_bytes, relist, write_config
from s4g_engine import errors as E


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Any], Any]
    exc: type[BaseException] | None
    says: tuple[str, ...]
    fault: str


CASES: list[Case] = []


def case(id: str, exc: type[BaseException] | None, *says: str, fault: str = "clear") -> Callable:
    def reg(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        CASES.append(Case(id, fn, exc, tuple(says), fault))
        return fn
    return reg


def png_declaring(w: int, h: int) -> bytes:
    """A ~100-byte PNG whose header declares w×h pixels (one scanline of data: a decompression bomb)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (3 * w + 1))) \
        + chunk(b"IEND", b"")


def jpeg_bytes(h: int = 24, w: int = 40, seed: int = 0) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- bundles
def _cfg(ctx: Any) -> tuple[Path, dict]:
    root = ctx.bundle_copy()
    return root, json.loads((root / "config.json").read_text())


def _load(ctx: Any, root: Path) -> Any:
    from s4g_engine.bundle import read_bundle_config
    return read_bundle_config(root)


def _open(ctx: Any, root: Path) -> Any:
    from s4g_engine import Localiser
    loc = Localiser.from_dir(root, device="cpu", backend="onnxruntime", precision="fp32")
    loc.close()


@case("bundle-missing-folder", E.MissingFileError, "does not exist", "s4g-export")
def _(ctx): _load(ctx, ctx.tmp / "nope")


@case("bundle-is-a-file", E.MissingFileError, "is not a folder")
def _(ctx):
    (ctx.tmp / "f").write_text("x")
    _load(ctx, ctx.tmp / "f")


@case("bundle-config-missing", E.MissingFileError, "config.json", "s4g-export")
def _(ctx):
    root, _c = _cfg(ctx)
    (root / "config.json").unlink()
    _load(ctx, root)


@case("bundle-config-not-json", E.FormatError, "expected utf-8 json", "parse error", fault="unclear")
def _(ctx):
    root, _c = _cfg(ctx)
    (root / "config.json").write_text("{not json")
    _load(ctx, root)


@case("bundle-config-latin1", E.FormatError, "expected utf-8 json", fault="unclear")
def _(ctx):
    root, _c = _cfg(ctx)
    (root / "config.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    _load(ctx, root)


@case("bundle-config-bom-ok", None)
def _(ctx):
    root, _c = _cfg(ctx)
    (root / "config.json").write_bytes(b"\xef\xbb\xbf" + (root / "config.json").read_bytes())
    assert _load(ctx, root)["embed_dim"] == 16


@case("bundle-config-is-a-list", E.FormatError, "expected a json object", "list", fault="crash")
def _(ctx):
    root, _c = _cfg(ctx)
    write_config(root, [1, 2])  # type: ignore[arg-type]
    _load(ctx, root)


@case("bundle-wrong-format", E.FormatError, "expected format 's4g-bundle'", "'x'")
def _(ctx):
    root, c = _cfg(ctx)
    c["format"] = "x"
    write_config(root, c)
    _load(ctx, root)


@case("bundle-no-fingerprint", E.FormatError, "missing key 'fingerprint'")
def _(ctx):
    root, c = _cfg(ctx)
    del c["fingerprint"]
    write_config(root, c)
    _load(ctx, root)


@case("bundle-embed-dim-string", E.FormatError, "embed_dim must be an integer", "'16'", fault="crash")
def _(ctx):
    root, c = _cfg(ctx)
    c["embed_dim"] = "16"
    write_config(root, c)
    _load(ctx, root)


@case("bundle-files-is-a-list", E.FormatError, "'files' must be an object", "list", fault="crash")
def _(ctx):
    root, c = _cfg(ctx)
    c["files"] = ["ground.onnx"]
    write_config(root, c)
    _load(ctx, root)


@case("bundle-file-without-sha256", E.FormatError, "64-hex-digit 'sha256'", fault="unclear")
def _(ctx):
    root, c = _cfg(ctx)
    c["files"]["ground.onnx"] = {"bytes": 3}
    write_config(root, c)
    _load(ctx, root)


@case("bundle-files-dotdot-passwd", E.FormatError, "climbs out of the bundle", "../../../../etc/passwd", fault="loss")
def _(ctx):
    root, c = _cfg(ctx)
    c["files"]["../../../../etc/passwd"] = {"sha256": "0" * 64}
    write_config(root, c)
    _load(ctx, root)


@case("bundle-files-absolute", E.FormatError, "not a relative posix path", "/etc/hostname", fault="loss")
def _(ctx):
    root, c = _cfg(ctx)
    c["files"]["/etc/hostname"] = {"sha256": "0" * 64}
    write_config(root, c)
    _load(ctx, root)


@case("bundle-symlink-out", E.FormatError, "outside the bundle", "symlink", fault="loss")
def _(ctx):
    root, c = _cfg(ctx)
    secret = ctx.tmp / "secret.bin"
    secret.write_bytes(b"private")
    os.symlink(secret, root / "extra.bin")
    c["files"]["extra.bin"] = {"sha256": "0" * 64}
    write_config(root, c)
    _load(ctx, root)


@case("bundle-view-without-fp32", E.FormatError, "expected an 'fp32' entry", "['fp16']", fault="crash")
def _(ctx):
    root, c = _cfg(ctx)
    c["views"]["ground"]["files"] = {"fp16": "ground.onnx"}
    write_config(root, c)
    _load(ctx, root)


@case("bundle-view-file-not-listed", E.FormatError, "not listed under 'files'", "cannot be verified", fault="loss")
def _(ctx):
    root, c = _cfg(ctx)
    shutil.copy(root / "ground.onnx", root / "other.onnx")
    c["views"]["ground"]["files"]["fp32"] = "other.onnx"
    write_config(root, c)
    _load(ctx, root)


@case("bundle-files-empty", E.FormatError, "not listed under 'files'", fault="loss")
def _(ctx):
    root, c = _cfg(ctx)
    c["files"] = {}
    write_config(root, c)
    _load(ctx, root)


@case("bundle-listed-file-missing", E.MissingFileError, "'aerial.onnx'", "missing")
def _(ctx):
    root, _c = _cfg(ctx)
    (root / "aerial.onnx").unlink()
    _load(ctx, root)


@case("bundle-listed-file-is-folder", E.NotAFileError, "not a regular file", fault="unclear")
def _(ctx):
    root, _c = _cfg(ctx)
    (root / "aerial.onnx").unlink()
    (root / "aerial.onnx").mkdir()
    _load(ctx, root)


@case("bundle-sha256-mismatch", E.CorruptFileError, "sha256", "config.json expects")
def _(ctx):
    root, _c = _cfg(ctx)
    data = bytearray((root / "aerial.onnx").read_bytes())
    data[-5] ^= 1
    (root / "aerial.onnx").write_bytes(bytes(data))
    _load(ctx, root)


@case("bundle-truncated-file", E.CorruptFileError, "bytes", "truncated", fault="unclear")
def _(ctx):
    root, _c = _cfg(ctx)
    data = (root / "aerial.onnx").read_bytes()
    (root / "aerial.onnx").write_bytes(data[:100])
    _load(ctx, root)


@case("bundle-weights-swapped-fingerprint-kept", E.CorruptFileError, "fingerprint", "weights", fault="silent")
def _(ctx):
    root, c = _cfg(ctx)
    old_fp = c["fingerprint"]
    (root / "ground.onnx").write_bytes(onnx_model_bytes(16, 32, 16, seed=99))
    c = relist(root, c)
    c["fingerprint"] = old_fp  # sha256s updated, fingerprint left unchanged
    write_config(root, c)
    _load(ctx, root)


@case("bundle-polar-source-size-0", E.FormatError, "polar source_size", "positive sides", fault="crash")
def _(ctx):
    root, c = _cfg(ctx)
    c["views"]["aerial"]["polar"] = {"height": 16, "width": 16, "source_size": [0, 0]}
    write_config(root, c)
    _load(ctx, root)


@case("bundle-negative-input-size", E.FormatError, "input_size must be [h, w]", "-16")
def _(ctx):
    root, c = _cfg(ctx)
    c["views"]["ground"]["input_size"] = [-16, 32]
    write_config(root, c)
    _load(ctx, root)


@case("bundle-std-zero", E.FormatError, "std must be > 0", "0.0")
def _(ctx):
    root, c = _cfg(ctx)
    c["views"]["ground"]["std"] = [0, 1, 1]
    write_config(root, c)
    _load(ctx, root)


@case("bundle-views-without-aerial", E.FormatError, "'ground' and 'aerial'", "['ground']", fault="crash")
def _(ctx):
    root, c = _cfg(ctx)
    del c["views"]["aerial"]
    write_config(root, c)
    _load(ctx, root)


@case("bundle-config-over-limit", E.LimitError, "max_text_bytes", fault="unclear")
def _(ctx):
    from s4g_engine.limits import limits_override
    root, _c = _cfg(ctx)
    with limits_override(max_text_bytes=64):
        _load(ctx, root)


@case("bundle-graph-not-onnx", E.CorruptFileError, "cannot load the ground model", "expected an onnx graph",
      fault="crash")
def _(ctx):
    root, c = _cfg(ctx)
    (root / "ground.onnx").write_bytes(b"this is not a protobuf" * 10)
    relist(root, c)
    _open(ctx, root)


@case("bundle-graph-input-size-disagrees", E.FormatError, "takes input", "data contract says (batch, 3, 16, 32)",
      fault="unclear")
def _(ctx):
    root, c = _cfg(ctx)
    (root / "ground.onnx").write_bytes(onnx_model_bytes(8, 8, 16, seed=1))
    relist(root, c)
    _open(ctx, root)


@case("bundle-graph-embed-dim-disagrees", E.FormatError, "'embedding' output has shape", "embed_dim 16",
      fault="unclear")
def _(ctx):
    root, c = _cfg(ctx)
    (root / "ground.onnx").write_bytes(onnx_model_bytes(16, 32, 8, seed=1))
    relist(root, c)
    _open(ctx, root)


# --------------------------------------------------------------------------------------------- indexes
def _load_index(ctx: Any, path: Path, **kw: Any) -> Any:
    from s4g_engine.index import ReferenceIndex
    return ReferenceIndex.load(path, **kw)


def _rewrite(ctx: Any, **change: Any) -> Path:
    """A copy of the saved index with members replaced (None: removed) or ``meta`` keys changed."""
    with np.load(ctx.index_file, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(bytes(data["meta"]))
    for k, v in change.pop("meta", {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    data["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    for k, v in change.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    out = ctx.tmp / "changed.npz"
    np.savez(out, **data)
    return out


@case("index-missing", E.MissingFileError, "does not exist", "s4g-index build")
def _(ctx): _load_index(ctx, ctx.tmp / "none.npz")


@case("index-is-a-folder", E.NotAFileError, "is a folder", fault="unclear")
def _(ctx): _load_index(ctx, ctx.tmp)


@case("index-is-a-npy", E.FormatError, "expected a .npz", "a single .npy array", fault="crash")
def _(ctx):
    np.save(ctx.tmp / "emb.npy", np.zeros((3, 16), np.float32))
    _load_index(ctx, ctx.tmp / "emb.npy")


@case("index-is-text", E.FormatError, "not an s4g index", "a file starting with")
def _(ctx):
    (ctx.tmp / "t.npz").write_text("hello")
    _load_index(ctx, ctx.tmp / "t.npz")


@case("index-truncated", E.CorruptFileError, "corrupt or truncated", "rebuild")
def _(ctx):
    data = ctx.index_file.read_bytes()
    (ctx.tmp / "t.npz").write_bytes(data[: len(data) // 2])
    _load_index(ctx, ctx.tmp / "t.npz")


@case("index-bit-flip", E.CorruptFileError, "corrupt or truncated")
def _(ctx):
    data = bytearray(ctx.index_file.read_bytes())
    data[len(data) // 3] ^= 0xFF
    (ctx.tmp / "t.npz").write_bytes(bytes(data))
    _load_index(ctx, ctx.tmp / "t.npz")


@case("index-without-count", E.FormatError, "meta.count must be an integer", "none", fault="crash")
def _(ctx): _load_index(ctx, _rewrite(ctx, meta={"count": None}))


@case("index-count-is-string", E.FormatError, "meta.count must be an integer", "'30'", fault="crash")
def _(ctx): _load_index(ctx, _rewrite(ctx, meta={"count": "30"}))


@case("index-meta-not-json", E.CorruptFileError, "'meta' is not utf-8 json", fault="unclear")
def _(ctx): _load_index(ctx, _bad_meta(ctx))


def _bad_meta(ctx: Any) -> Path:
    with np.load(ctx.index_file, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["meta"] = np.frombuffer(b"\xff{oops", np.uint8)
    np.savez(ctx.tmp / "m.npz", **data)
    return ctx.tmp / "m.npz"


@case("index-foreign-format", E.FormatError, "not an s4g index", "expected 's4g-index'")
def _(ctx): _load_index(ctx, _rewrite(ctx, meta={"format": "other"}))


@case("index-count-disagrees", E.CorruptFileError, "meta.count says 31", "coords (30, 2)", fault="clear")
def _(ctx): _load_index(ctx, _rewrite(ctx, meta={"count": 31}))


@case("index-nan-coords", E.CorruptFileError, "invalid coordinates", "nan", fault="silent")
def _(ctx):
    with np.load(ctx.index_file) as z:
        c = z["coords"].copy()
    c[4, 0] = np.nan
    _load_index(ctx, _rewrite(ctx, coords=c))


@case("index-lat-999", E.CorruptFileError, "invalid coordinates", "999", fault="silent")
def _(ctx):
    with np.load(ctx.index_file) as z:
        c = z["coords"].copy()
    c[2, 0] = 999.0
    _load_index(ctx, _rewrite(ctx, coords=c))


@case("index-embeddings-float64", E.CorruptFileError, "expected embeddings float32", "float64", fault="clear")
def _(ctx):
    with np.load(ctx.index_file) as z:
        e = z["embeddings"].astype(np.float64)
    _load_index(ctx, _rewrite(ctx, embeddings=e))


@case("index-embeddings-nan", E.CorruptFileError, "nan", "expected finite", fault="crash")
def _(ctx):
    with np.load(ctx.index_file) as z:
        e = z["embeddings"].copy()
    e[0, 0] = np.nan
    _load_index(ctx, _rewrite(ctx, embeddings=e))


@case("index-faiss-payload-corrupt", E.CorruptFileError, "changed.npz", "faiss payload cannot be read",
      fault="unclear")
def _(ctx):
    _load_index(ctx, _rewrite(ctx, embeddings=None, faiss=np.frombuffer(b"IxFI" + b"\x01" * 60, np.uint8),
                              meta={"backend": "faiss-flat"}))


@case("index-pickled-member", E.FormatError, "pickle", "never loads", fault="unclear")
def _(ctx):
    _load_index(ctx, _rewrite(ctx, ids=np.array([object()] * 30, dtype=object)))


@case("index-member-not-npy", E.CorruptFileError, "not a numpy array", "'coords'", fault="crash")
def _(ctx):
    out = ctx.tmp / "raw.npz"
    shutil.copy(ctx.index_file, out)
    with zipfile.ZipFile(out, "a") as zf:  # a later member of the same name wins on read
        zf.writestr("coords.npy", b"not an array")
    _load_index(ctx, out)


@case("index-ids-are-ints", E.FormatError, "ids must be strings", "int64", fault="silent")
def _(ctx): _load_index(ctx, _rewrite(ctx, ids=np.arange(30)))


@case("index-other-model", E.ModelMismatchError, "built by model", "rebuild the index", fault="clear")
def _(ctx): _load_index(ctx, ctx.index_file, expected_fingerprint="f" * 64)


@case("localiser-load-index-wrong-dim-keeps-working-index", E.ModelMismatchError, "64-dim", "16 dims", fault="loss")
def _(ctx):
    from s4g_engine.index import ReferenceIndex
    loc = ctx.loc
    before = len(loc.index)
    other = ReferenceIndex(64, backend="exact", fingerprint=loc.fingerprint)
    e = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    other.add(e / np.linalg.norm(e, axis=1, keepdims=True), np.zeros((5, 2)))
    other.save(ctx.tmp / "dim64.npz")
    try:
        loc.load_index(ctx.tmp / "dim64.npz")
    finally:  # the refused file must not have replaced the working index
        assert len(loc.index) == before and loc.index.dim == 16
        assert loc.localise(ctx.tiles[:1], k=2).indices.shape == (1, 2)


# ------------------------------------------------------------------------------------------- index API
def _idx(dim: int = 16, **kw: Any) -> Any:
    from s4g_engine.index import ReferenceIndex
    return ReferenceIndex(dim, **kw)


def _unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@case("index-ids-bare-string", E.InputError, "single string 'ab'", "ids=[...]", fault="silent")
def _(ctx): _idx(backend="exact").add(_unit(2), np.zeros((2, 2)), ids="ab")


@case("index-ids-objects", E.InputError, "ids[0]: expected a string", "dict", fault="silent")
def _(ctx): _idx(backend="exact").add(_unit(1), np.zeros((1, 2)), ids=[{"a": 1}])


@case("index-add-nan-coords", E.InputError, "nan/inf", "finite (lat, lon)")
def _(ctx): _idx().add(_unit(2), [[1.0, 2.0], [np.nan, 0.0]])


@case("index-add-lat-999", E.InputError, "out of range", "999")
def _(ctx): _idx().add(_unit(1), [[999.0, 2.0]])


@case("index-add-coords-wrong-shape", E.InputError, "shape (3, 2)", "(2, 2)")
def _(ctx): _idx().add(_unit(3), np.zeros((2, 2)))


@case("index-add-coords-strings", E.InputError, "expected coords as numbers", "list", fault="crash")
def _(ctx): _idx().add(_unit(1), [["north", "east"]])


@case("index-add-nan-embeddings", E.InputError, "nan/inf", "expected finite")
def _(ctx): _idx().add(np.full((1, 16), np.nan, np.float32), [[1.0, 2.0]])


@case("index-search-k-beyond-n", E.InputError, "k=5 is larger than the index", "k <= 2")
def _(ctx):
    i = _idx(backend="exact")
    i.add(_unit(2), np.zeros((2, 2)))
    i.search(_unit(1), 5)


@case("index-search-k-bool", E.InputError, "positive integer", "true", fault="silent")
def _(ctx):
    i = _idx(backend="exact")
    i.add(_unit(2), np.zeros((2, 2)))
    i.search(_unit(1), True)


@case("index-search-empty", E.InputError, "index is empty", "expected references")
def _(ctx): _idx().search(_unit(1), 1)


@case("index-save-empty", E.StateError, "empty index", "expected references")
def _(ctx): _idx().save(ctx.tmp / "x.npz")


@case("index-save-to-folder", E.NotAFileError, "is a folder", "expected a file name", fault="unclear")
def _(ctx):
    i = _idx(backend="exact")
    i.add(_unit(2), np.zeros((2, 2)))
    i.save(ctx.tmp)


@case("index-unknown-backend", E.InputError, "backend must be one of", "'annoy'")
def _(ctx): _idx(backend="annoy")


@case("index-dim-zero", E.InputError, "dim must be an integer", "0", fault="silent")
def _(ctx): _idx(0)


@case("index-ivfpq-fewer-than-k-sentinels", None, fault="silent")
def _(ctx):
    i = _idx(backend="faiss-ivfpq", nprobe=1, nlist=16)
    emb = _unit(800, seed=3)
    i.add(emb, np.c_[np.linspace(-10, 10, 800), np.linspace(-20, 20, 800)])
    scores, idx = i.search(emb[:5], 200)
    assert (idx < 0).any(), "expected an IVF-PQ search with nprobe=1 to miss candidates"
    assert np.all(scores[idx < 0] == -np.inf) and np.isfinite(scores[idx >= 0]).all()


@case("bundle-int8-graph-not-listed", E.FormatError, "views.ground.files.int8", "not listed under 'files'",
      fault="loss")
def _(ctx):
    root, c = _cfg(ctx)
    shutil.copy(root / "ground.onnx", root / "ground.int8.onnx")
    c["views"]["ground"]["files"]["int8"] = "ground.int8.onnx"
    write_config(root, c)
    _load(ctx, root)


@case("bundle-tensorrt-engine-outside", E.FormatError, "views.aerial.files.tensorrt.gpu", "climbs out", fault="loss")
def _(ctx):
    root, c = _cfg(ctx)
    c["views"]["aerial"]["files"]["tensorrt"] = {"gpu": "../../engine.plan"}
    write_config(root, c)
    _load(ctx, root)


@case("index-saved-with-ordinary-permissions", None, fault="unclear")
def _(ctx):
    from s4g_engine.index import ReferenceIndex
    i = ReferenceIndex(16, backend="exact")
    i.add(np.eye(16, dtype=np.float32)[:3], np.zeros((3, 2)))
    i.save(ctx.tmp / "p.npz")
    umask = os.umask(0)
    os.umask(umask)
    assert (ctx.tmp / "p.npz").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@case("index-unreadable-is-not-called-corrupt", E.FileAccessError, "permission", fault="unclear")
def _(ctx):
    import pytest
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    shutil.copy(ctx.index_file, ctx.tmp / "locked.npz")
    os.chmod(ctx.tmp / "locked.npz", 0)
    _load_index(ctx, ctx.tmp / "locked.npz")
