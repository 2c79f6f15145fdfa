"""Property-based fuzzing of the loaders and the kernel façade (issue 15).

Property: any input either works or raises one of our documented errors (an ``S4GError``; the kernel façade
documents ``ValueError``) — never another exception, never a write, never a read outside the folder it was
pointed at. Reads and writes are watched with a Python audit hook (``open``, renames, removals, ``mkdir``;
tests/helpers/fuzzing.py). Example counts are small and ``derandomize=True`` makes every run the same.
Tile lists, shard manifests, encoded images and the service's request checks: tests/test_fuzz_readers.py.
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
from hypothesis.extra import numpy as hnp

from helpers.fuzzing import FUZZ, FUZZ_FEW, JSON, expect_ok_or_ours, watched
from helpers.onnx_bundle import make_onnx_bundle


# ---------------------------------------------------------------------------------------------- bundles
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "bundle"
    make_onnx_bundle(root)
    return root


NAMES = st.sampled_from(["ground.onnx", "./ground.onnx", "aerial.onnx", "../x", "../../../../etc/passwd",
                         "/etc/passwd", "a/../../b", "", ".", "C:\\x", "x\x00y", "sub/../ground.onnx", "config.json",
                         "nope.onnx"]) | st.text(max_size=10)
PATHS = [("format",), ("version",), ("embed_dim",), ("fingerprint",), ("files",), ("files", "ground.onnx"),
         ("files", "ground.onnx", "sha256"), ("files", "ground.onnx", "bytes"), ("views",), ("views", "ground"),
         ("views", "ground", "files"), ("views", "ground", "files", "fp32"), ("views", "ground", "files", "fp16"),
         ("views", "aerial", "files", "tensorrt"), ("views", "ground", "input_size"), ("views", "ground", "mean"),
         ("views", "ground", "std"), ("views", "aerial", "polar"), ("views", "aerial", "polar", "source_size"),
         ("views", "ground", "interpolation"), ("views", "ground", "channel_order")]
MUTATION = st.tuples(st.sampled_from(PATHS), JSON | NAMES) | st.tuples(st.just(("files",)), st.dictionaries(
    NAMES, st.fixed_dictionaries({"sha256": st.text(max_size=64)}), max_size=2))


def _set(cfg: Any, path: tuple[str, ...], value: Any) -> None:
    node = cfg
    for key in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return
        node = node[key]
    if isinstance(node, dict):
        node[path[-1]] = value


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_bundle_config_mutations(pristine, mutations):
    from s4g_engine.bundle import read_bundle_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(pristine, Path(tmp) / "b"))
        cfg = json.loads((root / "config.json").read_text())
        for path, value in mutations:
            _set(cfg, path, value)
        (root / "config.json").write_text(json.dumps(cfg))
        with watched(root):
            expect_ok_or_ours(lambda: read_bundle_config(root))


@FUZZ_FEW
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_bundle_config_bytes(pristine, data):
    from s4g_engine.bundle import read_bundle_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(pristine, Path(tmp) / "b"))
        (root / "config.json").write_bytes(data)
        with watched(root):
            expect_ok_or_ours(lambda: read_bundle_config(root))


# ---------------------------------------------------------------------------------------------- indexes
@pytest.fixture(scope="module")
def index_bytes(tmp_path_factory):
    from s4g_engine.index import ReferenceIndex

    rng = np.random.default_rng(0)
    e = rng.standard_normal((20, 8)).astype(np.float32)
    idx = ReferenceIndex(8, backend="exact", fingerprint="fp")
    idx.add(e / np.linalg.norm(e, axis=1, keepdims=True), np.c_[rng.uniform(-50, 50, 20), rng.uniform(-90, 90, 20)])
    path = tmp_path_factory.mktemp("fuzzidx") / "i.npz"
    idx.save(path)
    return path.read_bytes()


def _load_and_use(path: Path) -> None:
    from s4g_engine.index import ReferenceIndex

    idx = ReferenceIndex.load(path, expected_fingerprint=None)
    if len(idx):  # a file that loads must also be searchable
        idx.search(np.ones((1, idx.dim), np.float32) / np.sqrt(idx.dim), 1)


@FUZZ
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
                                                  max_size=4))
def test_index_file_byte_damage(index_bytes, cut, flips):
    data = bytearray(index_bytes[: max(0, len(index_bytes) - cut)] if cut % 3 == 0 else index_bytes)
    for pos, x in flips:
        if data:
            data[pos % len(data)] ^= x
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "i.npz"
        p.write_bytes(bytes(data))
        with watched(Path(tmp)):
            expect_ok_or_ours(lambda: _load_and_use(p))


ARRAYS = hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_,
                                           np.dtype("<U3")]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=25))


@FUZZ
@given(meta=st.dictionaries(st.sampled_from(["format", "version", "backend", "dim", "count", "fingerprint", "params"]),
                            JSON | st.sampled_from(["s4g-index", "exact", "exact-fp16", "faiss-flat", "faiss-ivfpq"])
                            | st.integers(0, 40), max_size=4),
       members=st.dictionaries(st.sampled_from(["coords", "ids", "embeddings", "faiss"]), ARRAYS, max_size=2),
       drop=st.sets(st.sampled_from(["coords", "ids", "embeddings", "meta"]), max_size=1))
def test_index_file_member_mutations(index_bytes, meta, members, drop):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "i.npz"
        p.write_bytes(index_bytes)
        with np.load(p) as z:
            data = {k: z[k] for k in z.files}
        m = json.loads(bytes(data["meta"]))
        m.update(meta)
        data["meta"] = np.frombuffer(json.dumps(m).encode(), np.uint8)
        data.update(members)
        for k in drop:
            data.pop(k, None)
        np.savez(p, **data)
        with watched(Path(tmp)):
            expect_ok_or_ours(lambda: _load_and_use(p))


# ------------------------------------------------------------------------------------------------- CSV
CSV_TEXT = st.lists(st.lists(st.sampled_from(["t0.png", "t1.png", "45.2", "7.1", "nan", "-91", "1e400", "", " ",
                                              "../t0.png", "/etc/passwd", "sub", "\ufeffimage", "lat", "lon",
                                              "id", '"a,b"', "caf\xe9"]) | st.text(max_size=6), max_size=5),
                    max_size=6).map(lambda rows: "\n".join(",".join(r) for r in rows))
CSV_HEAD = st.sampled_from(["", "image,lat,lon\n", "\ufeffimage,lat,lon,id\n", "filename,latitude,longitude\n"])


@FUZZ
@given(head=CSV_HEAD, body=CSV_TEXT, encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-8-sig"]))
def test_coords_csv(head, body, encoding):
    from PIL import Image

    from s4g_engine.coords_csv import read_coords_csv

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(2):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(root / f"t{i}.png")
        (root / "sub").mkdir()
        (root / "c.csv").write_bytes((head + body).encode(encoding, errors="replace"))
        with watched(root):
            out = expect_ok_or_ours(lambda: read_coords_csv(root / "c.csv", root))
        if out is not None:  # what is accepted is valid
            paths, coords, ids = out
            assert len(paths) == len(ids) == coords.shape[0] > 0
            assert np.isfinite(coords).all() and (np.abs(coords[:, 0]) <= 90).all()
            assert all(Path(p).resolve().parent == root.resolve() for p in paths)


@FUZZ_FEW
@given(split=st.binary(max_size=200) | CSV_TEXT.map(str.encode), gps=st.binary(max_size=120) | CSV_TEXT.map(str.encode))
def test_cvusa_split_files(tmp_path_factory, split, gps):
    from helpers.layouts import make_cvusa
    from s4g_engine.datasets import load_split

    with tempfile.TemporaryDirectory() as tmp:
        root = make_cvusa(Path(tmp) / "CVUSA", n_train=2, n_test=2)
        (root / "splits" / "val-19zl.csv").write_bytes(split)
        (root / "split_locations" / "all.csv").write_bytes(gps)
        with watched(root):
            expect_ok_or_ours(lambda: load_split("cvusa", root, "test"))


# --------------------------------------------------------------------------------------- kernel façade
KERNEL_ERRORS = (ValueError,)  # the façade documents ValueError (LimitError and InputError are ValueErrors)
MATS = hnp.arrays(dtype=st.sampled_from([np.float32, np.float16, np.float64, np.int32, np.bool_, np.complex64]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
K = st.integers(-3, 40) | st.sampled_from([10**9, 10**15, 2**63 - 1]) | st.booleans() | st.floats(0, 5)


@FUZZ
@given(q=MATS, r=MATS, k=K, exclude=st.none() | hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=5),
                                                           elements=st.integers(-3, 12)))
def test_topk_similarity(q, r, k, exclude):
    from s4g_engine import topk_similarity

    expect_ok_or_ours(lambda: topk_similarity(q, r, k, exclude=exclude), also=KERNEL_ERRORS)


@FUZZ
@given(q=MATS, r=MATS, pos=hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=9), elements=st.integers(-2, 12)))
def test_positive_ranks(q, r, pos):
    from s4g_engine import positive_ranks

    expect_ok_or_ours(lambda: positive_ranks(q, r, pos), also=KERNEL_ERRORS)


@FUZZ
@given(a=hnp.arrays(dtype=st.sampled_from([np.uint8, np.float32, np.float64, np.int16]),
                    shape=hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=8)),
       h=st.integers(-1, 12) | st.just(10**7), w=st.integers(-1, 12) | st.just(10**7),
       mean=st.none() | st.lists(st.floats(-2, 2), min_size=1, max_size=4),
       std=st.none() | st.lists(st.floats(-1, 2), min_size=1, max_size=4))
def test_polar_transform(a, h, w, mean, std):
    from s4g_engine import polar_transform

    expect_ok_or_ours(lambda: polar_transform(a, h, w, mean=mean, std=std), also=KERNEL_ERRORS)


@FUZZ_FEW
@given(p=hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.uint8, np.bool_]),
                    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=8)),
       size=st.integers(-1, 20) | st.just(10**6) | st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_inverse_polar(p, size):
    from s4g_engine import inverse_polar

    expect_ok_or_ours(lambda: inverse_polar(p, size), also=KERNEL_ERRORS)


# ------------------------------------------------------------------------------------ training configs
YAML_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(0, 3),
                                                                               c, max_size=3), max_leaves=8)
YAML_DOC = st.dictionaries(
    st.sampled_from(["data", "model", "optim", "sampling", "train", "eval", "loss", "nope"]),
    YAML_VALUES | st.dictionaries(st.sampled_from(["lr", "epochs", "batch_size", "name", "dataset", "ground_size",
                                                   "backbone", "root", "strategy", "seed", "x"]), YAML_VALUES,
                                  max_size=3), max_size=3)


@FUZZ_FEW
@given(doc=YAML_DOC | YAML_VALUES, raw=st.binary(max_size=60))
def test_training_config_files(doc, raw):
    pytest.importorskip("torch")
    import yaml

    from s4g_train.config import build_config

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "c.yaml"
        for text in (yaml.safe_dump(doc).encode(), raw):
            p.write_bytes(text)
            with watched(Path(tmp)):
                expect_ok_or_ours(lambda: build_config(None, str(p), []))


OVERRIDE_KEYS = st.sampled_from(["optim.lr", "train.epochs", "model.ground_size", "data.dataset", "a", "a.b.c.d",
                                 "train.", ".x", "eval.select", "data.aug.flip_p"]) | st.text(max_size=8)


@FUZZ
@given(argv=st.lists(st.sampled_from(["--set", "--train.epochs", "--set=a", "x", "--optim.lr=3", "--set=optim.lr=1"])
                     | st.tuples(OVERRIDE_KEYS, st.text(max_size=10)).map(lambda kv: f"--set={kv[0]}={kv[1]}"),
                     max_size=5))
def test_training_config_overrides(argv):
    pytest.importorskip("torch")
    from s4g_train.config import build_config, split_cli_overrides

    def run():
        _, overrides = split_cli_overrides(argv)
        build_config("synthetic", None, overrides)

    expect_ok_or_ours(run)
