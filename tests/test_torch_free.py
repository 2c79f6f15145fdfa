"""The production engine never imports torch (nor s4g_train): checked in a fresh interpreter that imports
s4g_engine and runs a whole Localiser round-trip (index, save, load, localise, CLI) on an exported bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")  # only to export the bundle in this (parent) process

from helpers.torch_bundle import make_tiny_bundle  # noqa: E402

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile, os
    import numpy as np
    from PIL import Image
    import s4g_engine
    from s4g_engine import Localiser, LocaliseResult
    from s4g_engine.cli import index_main, localise_main
    bundle, work = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(12)]
    coords = np.c_[rng.uniform(10, 11, 12), rng.uniform(20, 21, 12)]
    loc = Localiser.from_dir(bundle, device="cpu")
    loc.index_references(tiles, coords)
    loc.save_index(os.path.join(work, "i.npz"))
    loc2 = Localiser.from_dir(bundle)
    loc2.load_index(os.path.join(work, "i.npz"))
    res = loc2.localise(tiles[:3], k=2)
    assert isinstance(res, LocaliseResult) and res.scores.shape == (3, 2)
    # the CLI too
    os.makedirs(os.path.join(work, "tiles"))
    with open(os.path.join(work, "c.csv"), "w") as f:
        f.write("image,lat,lon\\n")
        for i, t in enumerate(tiles):
            Image.fromarray(t).save(os.path.join(work, "tiles", f"{i}.png"))
            f.write(f"{i}.png,{coords[i, 0]},{coords[i, 1]}\\n")
    assert index_main(["build", "--model", bundle, "--images", os.path.join(work, "tiles"), "--coords",
                       os.path.join(work, "c.csv"), "--out", os.path.join(work, "j.npz")]) == 0
    assert localise_main(["--model", bundle, "--index", os.path.join(work, "j.npz"),
                          os.path.join(work, "tiles", "0.png"), "--k", "3", "--json"]) == 0
    bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "s4g_train", "timm")))
    print(json.dumps({"bad": bad, "ok": True}))
""")


def test_engine_round_trip_without_torch(tmp_path):
    bundle = tmp_path / "bundle"
    make_tiny_bundle(bundle)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=900)  # an editable-install core rebuild may run first
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last == {"bad": [], "ok": True}, last


def test_import_alone_is_light():
    code = "import sys, s4g_engine; print(sorted(m for m in ('torch', 'onnxruntime', 's4g_train') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
