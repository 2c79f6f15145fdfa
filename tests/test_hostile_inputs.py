"""Hostile and careless input (issue 15): every reader, loader and command line of the engine, one case per row.

Each case (tests/helpers/hostile_cases*.py) makes one thing wrong in a small healthy world and asserts the exact error
class and that the message says what was expected and what came — or, for inputs that must work (a UTF-8
byte-order mark, encoded image bytes), the right result. The command-line cases assert one line on stderr
and exit code 2, and that nothing is written or lost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import helpers.hostile_cases_data  # noqa: F401  (registers its cases)
import helpers.hostile_cases_more  # noqa: F401  (registers its cases)
from helpers.hostile_cases import CASES, Case
from helpers.onnx_bundle import make_onnx_bundle
from s4g_engine.cli import index_main, localise_main
from s4g_engine.errors import S4GError
from s4g_engine.serve.handlers import ApiError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A bundle, a Localiser over 30 indexed tiles, and its saved index (shared; cases copy before changing)."""
    from s4g_engine import Localiser

    root = tmp_path_factory.mktemp("hostile")
    make_onnx_bundle(root / "bundle")
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(30)]
    loc = Localiser.from_dir(root / "bundle", device="cpu", backend="onnxruntime", precision="fp32", batch_size=8)
    loc.index_references(tiles, np.c_[rng.uniform(40, 41, 30), rng.uniform(7, 8, 30)], [f"t{i}" for i in range(30)])
    loc.save_index(root / "index.npz")
    yield SimpleNamespace(root=root, bundle=root / "bundle", loc=loc, tiles=tiles, index_file=root / "index.npz")
    loc.close()


@pytest.fixture
def ctx(world, tmp_path):
    n = iter(range(1000))
    return SimpleNamespace(**vars(world), tmp=tmp_path,
                           bundle_copy=lambda: Path(shutil.copytree(world.bundle, tmp_path / f"b{next(n)}")))


def test_the_catalogue_is_large_and_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) + len(CLI_CASES) >= 80, len(CASES) + len(CLI_CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns; we refuse
@pytest.mark.filterwarnings("ignore:Duplicate name")  # the zip built to hold a non-.npy member
def test_case(case: Case, ctx):
    if case.exc is None:
        case.run(ctx)  # must work; the case asserts its result
        return
    try:
        case.run(ctx)
    except pytest.skip.Exception:
        raise
    except BaseException as exc:  # noqa: BLE001 - the class is asserted below
        err = exc
    else:
        pytest.fail(f"no error: the input was accepted (expected {case.exc.__name__})")
    assert type(err) is case.exc, f"expected {case.exc.__name__}, got {type(err).__name__}: {err}"
    msg = str(err).lower()
    for word in case.says:
        assert word.lower() in msg, f"{word!r} not in the message: {err}"
    if case.exc not in (ValueError, ApiError):  # the kernel façade documents ValueError, the service ApiError
        assert isinstance(err, S4GError)


# ------------------------------------------------------------------------------------------ command lines
def _tiles(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(1)
    rows = ["image,lat,lon"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"t{i}.png")
        rows.append(f"t{i}.png,{45 + i * 0.01},{7 + i * 0.01}")
    (root / "coords.csv").write_text("\n".join(rows) + "\n")
    return root


def _cli_out_folder(ctx):
    (ctx.tmp / "out").mkdir()
    # --model does not exist: the folder is reported first, before any model or embedding work
    return index_main(["build", "--model", str(ctx.tmp / "nomodel"), "--images", str(_tiles(ctx.tmp)), "--coords",
                       str(ctx.tmp / "coords.csv"), "--out", str(ctx.tmp / "out")]), ["--out", "is a folder"]


def _cli_geojson_folder(ctx):
    (ctx.tmp / "g").mkdir()
    rc = localise_main(["--model", str(ctx.tmp / "nomodel"), "--index", str(ctx.index_file),
                        str(_tiles(ctx.tmp) / "t0.png"), "--geojson", str(ctx.tmp / "g")])
    return rc, ["--geojson", "is a folder"]


def _cli_index_npy(ctx):
    np.save(ctx.tmp / "x.npy", np.zeros(3))
    return index_main(["info", str(ctx.tmp / "x.npy")]), ["not an s4g index", ".npy"]


def _cli_missing_image(ctx):
    return localise_main(["--model", str(ctx.bundle), "--index", str(ctx.index_file), str(ctx.tmp / "no.jpg"),
                          "--device", "cpu"]), ["does not exist", "no.jpg"]


def _cli_bad_bundle(ctx):
    root = ctx.bundle_copy()
    (root / "config.json").write_text('{"format": "s4g-bundle", "version": 1, "files": []}')
    return localise_main(["--model", str(root), "--index", str(ctx.index_file), str(_tiles(ctx.tmp) / "t0.png")]), \
        ["missing key", "re-export"]


def _cli_demo_dir_is_a_dataset(ctx):
    pytest.importorskip("s4g_synth")
    from helpers.layouts import make_cvusa

    data = make_cvusa(ctx.tmp / "mydata", n_train=2, n_test=2)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    rc = localise_main(["--model", str(ctx.bundle), "--demo", "--demo-dir", str(data), "--device", "cpu"])
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before  # nothing overwritten
    return rc, ["not empty", "never writes into existing data"]


def _cli_synth(*argv):
    def run(ctx):
        from s4g_synth.cli import main

        return main(["--layout", "cvusa", "--out", str(ctx.tmp / "s"), "--pairs", "2", *argv]), [argv[0], "expected"]
    return run


def _cli_viz_missing_metrics(ctx):
    viz = pytest.importorskip("s4g_train.viz")
    return viz.main(["curves", "/missing.jsonl", "--out", str(ctx.tmp / "c.png")]), ["/missing.jsonl", "does not exist"]


def _cli_csv_latin1(ctx):
    _tiles(ctx.tmp)
    (ctx.tmp / "coords.csv").write_bytes("image,lat,lon\nt0.png,45,7\ncaf\xe9.png,45,7\n".encode("latin-1"))
    return index_main(["build", "--model", str(ctx.bundle), "--images", str(ctx.tmp), "--coords",
                       str(ctx.tmp / "coords.csv"), "--out", str(ctx.tmp / "i.npz")]), ["coords.csv:3", "utf-8"]


def _train_cli(*argv, says=()):
    def run(ctx):
        pytest.importorskip("torch")
        from s4g_train.cli import train_main

        return train_main(["--run-dir", str(ctx.tmp / "run"), *argv]), list(says)
    return run


def _latin1_yaml(ctx):
    pytest.importorskip("torch")
    from s4g_train.cli import train_main

    (ctx.tmp / "c.yaml").write_bytes("train:\n  name: caf\xe9\n".encode("latin-1"))
    return train_main(["--config", str(ctx.tmp / "c.yaml"), "--run-dir", str(ctx.tmp / "run")]), ["c.yaml:2", "utf-8"]


def _pickled_checkpoint(entry):
    def run(ctx):
        torch = pytest.importorskip("torch")
        from s4g_train import cli

        torch.save({"model": {"w": torch.zeros(2)}, "evil": SimpleNamespace(a=1)}, ctx.tmp / "pickled.pt")
        argv = [str(ctx.tmp / "pickled.pt"), "--out", str(ctx.tmp / "o")]
        if entry == "eval_main":
            argv = [str(ctx.tmp / "pickled.pt"), "--dataset", "cvusa", "--root", str(ctx.tmp)]
        return getattr(cli, entry)(argv), ["never unpickles", "state_dict"]
    return run


def _ablate_nope(ctx):
    pytest.importorskip("torch")
    from s4g_train.cli import ablate_main

    return ablate_main(["--preset", "nope", "--out", str(ctx.tmp / "abl")]), ["unknown preset 'nope'"]


CLI_CASES = {
    "s4g-train-preset-nope": _train_cli("--preset", "nope", says=["unknown preset 'nope'", "available presets"]),
    "s4g-train-set-bad-number": _train_cli("--preset", "synthetic", "--set", "optim.lr=abc",
                                           says=["optim.lr", "expected a number", "'abc'"]),
    "s4g-train-set-unknown-field": _train_cli("--preset", "synthetic", "--set", "optim.nope=1",
                                              says=["unknown config field 'optim.nope'"]),
    "s4g-train-config-missing": _train_cli("--config", "/no/such.yaml", says=["does not exist", "yaml"]),
    "s4g-train-config-latin1": _latin1_yaml,
    "s4g-eval-pickled-checkpoint": _pickled_checkpoint("eval_main"),
    "s4g-export-pickled-checkpoint": _pickled_checkpoint("export_main"),
    "s4g-ablate-preset-nope": _ablate_nope,
    "s4g-index-out-is-a-folder-before-work": _cli_out_folder,
    "s4g-localise-geojson-is-a-folder-before-work": _cli_geojson_folder,
    "s4g-index-info-on-a-npy": _cli_index_npy,
    "s4g-localise-missing-image": _cli_missing_image,
    "s4g-localise-malformed-bundle": _cli_bad_bundle,
    "s4g-localise-demo-dir-is-a-dataset": _cli_demo_dir_is_a_dataset,
    "s4g-synth-conditions-negative": _cli_synth("--conditions", "-1"),
    "s4g-synth-tile-res-nan": _cli_synth("--tile-res", "nan"),
    "s4g-synth-pairs-zero": _cli_synth("--pairs", "0"),
    "s4g-viz-curves-missing-metrics": _cli_viz_missing_metrics,
    "s4g-index-build-latin1-csv": _cli_csv_latin1,
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_case(name, ctx, capsys):
    try:
        rc, says = CLI_CASES[name](ctx)
    except SystemExit as exc:  # argparse refusals: usage + one error line, exit code 2
        rc, says = exc.code, []
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ": error: " in ln or ": cannot load " in ln]
    assert len(lines) == 1, err
    assert "weights_only" not in err  # never the advice to unpickle
    for word in says:
        assert word.lower() in lines[0].lower(), err
    assert not (ctx.tmp / "i.npz").exists() and not (ctx.tmp / "s").exists()


def test_json_output_is_strict_when_ivfpq_finds_fewer_than_k(ctx, capsys):
    """faiss IVF-PQ with nprobe=1 misses candidates: --json and --geojson leave them out, never NaN/-Infinity."""
    from s4g_engine.index import ReferenceIndex

    loc = ctx.loc
    rng = np.random.default_rng(5)
    idx = ReferenceIndex(16, backend="faiss-ivfpq", fingerprint=loc.fingerprint, nlist=16, nprobe=1)
    e = rng.standard_normal((800, 16)).astype(np.float32)
    idx.add(e / np.linalg.norm(e, axis=1, keepdims=True), np.c_[rng.uniform(-60, 60, 800), rng.uniform(-170, 170, 800)])
    idx.save(ctx.tmp / "ivf.npz")
    img = _tiles(ctx.tmp) / "t0.png"

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    assert localise_main(["--model", str(ctx.bundle), "--index", str(ctx.tmp / "ivf.npz"), str(img), "--k", "200",
                          "--json", "--device", "cpu"]) == 0
    out = strict(capsys.readouterr().out)
    cands = out["results"][0]["candidates"]
    assert 0 < len(cands) < 200 and all(np.isfinite([c["lat"], c["lon"], c["score"]]).all() for c in cands)
    gj = ctx.tmp / "c.geojson"
    assert localise_main(["--model", str(ctx.bundle), "--index", str(ctx.tmp / "ivf.npz"), str(img), "--k", "200",
                          "--geojson", str(gj), "--device", "cpu"]) == 0
    feats = strict(gj.read_text())["features"]
    assert len(feats) == len(cands)


def test_debug_flag_shows_the_traceback(ctx, capsys):
    with pytest.raises(S4GError):
        index_main(["info", str(ctx.tmp / "none.npz"), "--debug"])
    assert index_main(["info", str(ctx.tmp / "none.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_faiss_loader_noise_is_silenced(ctx):
    """`s4g-index build` with a faiss backend prints no "Could not load library with AVX2 support" lines."""
    _tiles(ctx.tmp)
    proc = subprocess.run([sys.executable, "-c", "import sys; from s4g_engine.cli import index_main; "
                           "sys.exit(index_main(sys.argv[1:]))", "build", "--model", str(ctx.bundle), "--images",
                           str(ctx.tmp), "--coords", str(ctx.tmp / "coords.csv"), "--out", str(ctx.tmp / "f.npz"),
                           "--index-backend", "faiss-flat", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Could not load library" not in proc.stderr and "faiss.loader" not in proc.stderr


def fault_counts() -> Counter:
    """How the catalogue's rows behaved before issue 15 (for the report)."""
    return Counter(c.fault for c in CASES)


@pytest.mark.parametrize("script", ["s4g-train", "s4g-eval", "s4g-ablate", "s4g-export", "s4g-viz", "s4g-bench",
                                    "s4g-synth", "s4g-data", "s4g-index", "s4g-localise"])
def test_help_does_not_import_torch(script):
    """Every console script answers --help without importing torch (the s4g_train ones through the thin
    shells of s4g_train.cli, which pyproject.toml's entry points name)."""
    import tomllib

    target = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "scripts"][script]
    module, func = target.split(":")
    code = (f"import sys\nfrom {module} import {func} as main\ntry:\n    rc = main(['--help'])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] in ("NO-TORCH 0", "NO-TORCH None"), proc.stdout[-500:]
