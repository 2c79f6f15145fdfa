"""Property-based fuzzing of the tile-list, shard-manifest and encoded-image readers and of the service's
request checks (issue 15; the bundle, index, CSV, dataset and config loaders and the kernel façade:
tests/test_fuzz_loaders.py).

Property: any input either works — and what is accepted is valid — or raises one of our documented errors
(an ``S4GError``; the service's checks an ``ApiError`` with a 4xx status): never another exception, never a
write, never a read outside the folder the reader was pointed at (tests/helpers/fuzzing.py). Example counts
are small and ``derandomize=True`` makes every run the same.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.fuzzing import FUZZ, JSON, expect_ok_or_ours, watched

# --------------------------------------------------------------------------------- Parquet tile lists
PQ_TYPES = {"str": "string", "float": "float64", "int": "int64", "bool": "bool_"}
PQ_VALUES = {"str": st.sampled_from(["t0.png", "t1.png", "../t0.png", "/etc/passwd", "sub", "", " ", "nope.png",
                                     "a\x00b", "45.5", "north"]) | st.text(max_size=6),
             "float": st.floats() | st.sampled_from([45.0, 7.0, -91.0, 181.0]), "int": st.integers(-200, 200),
             "bool": st.booleans()}


@st.composite
def parquet_columns(draw: Any) -> dict[str, tuple[str, list[Any]]]:
    n = draw(st.integers(0, 4))
    names = draw(st.lists(st.sampled_from(["image", "lat", "lon", "id", "Latitude", "file", "x"]), unique=True,
                          max_size=5))
    out = {}
    for name in names:
        kind = draw(st.sampled_from(sorted(PQ_TYPES)))
        out[name] = (kind, draw(st.lists(st.none() | PQ_VALUES[kind], min_size=n, max_size=n)))
    return out


@pytest.fixture(scope="module")
def arrow(tmp_path_factory):
    """pyarrow, warmed up: its first Parquet round trip in a process reads the system's time-zone database
    (/usr/share/zoneinfo), which the watcher would take for a read outside the folder."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path_factory.mktemp("arrow") / "warm.parquet"
    pq.write_table(pa.table({k: pa.array([None], type=getattr(pa, t)()) for k, t in PQ_TYPES.items()}), path)
    pq.read_table(path).to_pylist()
    return pa, pq


@FUZZ
@given(columns=parquet_columns())
def test_parquet_tile_lists(arrow, columns):
    pa, pq = arrow
    from PIL import Image

    from s4g_engine.shards import read_tile_list

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(2):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(root / f"t{i}.png")
        (root / "sub").mkdir()
        pq.write_table(pa.table({k: pa.array(v, type=getattr(pa, PQ_TYPES[kind])()) for k, (kind, v) in
                                 columns.items()}) if columns else pa.table({}), root / "l.parquet")
        with watched(root):
            out = expect_ok_or_ours(lambda: read_tile_list(root / "l.parquet", root))
        if out is not None:  # what is accepted is valid
            paths, coords, ids = out
            assert len(paths) == len(ids) == coords.shape[0] > 0 and all(isinstance(i, str) for i in ids)
            assert np.isfinite(coords).all() and (np.abs(coords) <= [90, 180]).all()
            assert all(Path(p).resolve().parent == root.resolve() for p in paths)


# ------------------------------------------------------------------------------ embedding-shard manifests
@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory, arrow):
    from s4g_engine.shards import Manifest, write_shard

    folder = tmp_path_factory.mktemp("fuzzshards") / "shards"
    man = Manifest.open(folder, {"embed_dim": 4})
    rng = np.random.default_rng(0)
    for i in range(2):
        entry = write_shard(folder, i, rng.standard_normal((3, 4)).astype(np.float32), rng.uniform(-50, 50, (3, 2)),
                            [f"s{i}-{j}" for j in range(3)])
        man.record({**entry, "start": 3 * i, "stop": 3 * i + 3})
    (folder.parent / "secret.parquet").write_bytes((folder / "shard-000000.parquet").read_bytes())
    return folder


MANIFEST_PATHS = [("format",), ("version",), ("job",), ("job", "embed_dim"), ("shards",), ("shards", 0),
                  ("shards", 0, "file"), ("shards", 0, "sha256"), ("shards", 0, "rows"), ("shards", 0, "shard"),
                  ("shards", 1, "start"), ("shards", 1, "shard")]
SHARD_NAMES = st.sampled_from(["shard-000000.parquet", "shard-000001.parquet", "../secret.parquet", "/etc/passwd",
                               "", "manifest.json", "."])


def _set_any(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set ``doc[path]`` through dicts and lists where the path exists; otherwise leave ``doc`` unchanged."""
    node = doc
    for key in path[:-1]:
        if isinstance(node, dict) and isinstance(node.get(key), (dict, list)):
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(MANIFEST_PATHS), JSON | SHARD_NAMES), min_size=1, max_size=3),
       damage=st.none() | st.tuples(st.integers(0, 10_000), st.integers(1, 255)))
def test_shard_manifests(shard_folder, mutations, damage):
    """A manifest (and a shard whose sha256 the manifest was updated to) either reads or raises ours — and never
    makes the reader open a file outside the shard folder."""
    from s4g_engine.shards import Manifest, sha256_bytes

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(shard_folder, Path(tmp) / "shards"))
        shutil.copy(shard_folder.parent / "secret.parquet", Path(tmp) / "secret.parquet")
        doc = json.loads((folder / "manifest.json").read_text())
        if damage is not None:  # a shard file changed together with its sha256 (a hand-made pair)
            data = bytearray((folder / "shard-000001.parquet").read_bytes())
            data[damage[0] % len(data)] ^= damage[1]
            (folder / "shard-000001.parquet").write_bytes(bytes(data))
            _set_any(doc, ("shards", 1, "sha256"), sha256_bytes(bytes(data)))
        for path, value in mutations:
            _set_any(doc, path, value)
        (folder / "manifest.json").write_text(json.dumps(doc))

        def run():
            man = Manifest.read(folder)
            man.finished([(0, 3), (3, 6)])
            for vectors, coords, ids in man.iter_shards(2):
                assert vectors.dtype == np.float32 and vectors.shape == (len(ids), 4) and coords.shape == (len(ids), 2)

        with watched(folder):
            expect_ok_or_ours(run)


# ------------------------------------------------------------------------------------ encoded images
@pytest.fixture(scope="module")
def image_bytes():
    import io

    from PIL import Image

    out = {}
    rng = np.random.default_rng(0)
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


@FUZZ
@given(fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"]), cut=st.integers(0, 400),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
       size_at=st.none() | st.tuples(st.integers(0, 40), st.sampled_from([b"\xff\xff", b"\x00\x00",
                                                                          b"\x7f\xff\xff\xff"])))
def test_image_bytes(image_bytes, fmt, cut, flips, size_at):
    """Damaged encoded images (also headers that declare another size) decode to a valid RGB array or raise
    ours: never Pillow's own exceptions, and never a decode of more pixels than the limit allows."""
    from s4g_engine.limits import limits_override
    from s4g_engine.preprocess import to_uint8_rgb

    data = bytearray(image_bytes[fmt][: max(0, len(image_bytes[fmt]) - cut)] if cut % 2 else image_bytes[fmt])
    for pos, x in flips:
        if data:
            data[pos % len(data)] ^= x
    if size_at is not None and data:
        at, value = size_at
        data[at % len(data): at % len(data) + len(value)] = value
    with limits_override(max_image_pixels=4096):
        out = expect_ok_or_ours(lambda: to_uint8_rgb(bytes(data)))
    if out is not None:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.shape[0] * out.shape[1] <= 4096


# ---------------------------------------------------------------------------------- the service's checks
@FUZZ
@given(length=st.none() | st.text(max_size=12) | st.integers(-10, 10**12).map(str)
       | st.sampled_from(["-5", "+5", "1_000", " 12 ", "\u0663", "1e3", "0x10"]),
       k=st.none() | st.text(max_size=6) | st.integers(-5, 10**6) | st.floats() | st.booleans(),
       fmt=st.none() | st.text(max_size=8) | st.sampled_from(["json", "GeoJSON", "xml"]))
def test_service_request_checks(length, k, fmt):
    """The framework-free request checks answer with an ApiError (a 4xx) or a valid value, nothing else."""
    from s4g_engine.serve.handlers import ApiError, check_content_length, parse_format, parse_k

    for fn, check in ((lambda: check_content_length({} if length is None else {"content-length": length}),
                       lambda n: isinstance(n, int) and n >= 0),
                      (lambda: parse_k(k, 50, 20), lambda v: isinstance(v, int) and 1 <= v <= 20),
                      (lambda: parse_format(fmt), lambda v: v in ("json", "geojson"))):
        try:
            value = fn()
        except ApiError as exc:
            assert 400 <= exc.status < 500, exc.status
        else:
            assert check(value), value
