"""s4g_synth: the synthetic cross-view world. A procedural city rendered as satellite tiles and ground
panoramas, written in the real CVUSA / VIGOR layouts (docs/METHOD.md §6) so that
:func:`s4g_engine.datasets.load_split` reads it like real data.

A package of its own beside the production engine: its ray caster is the compiled module
``s4g_synth._render`` (not part of ``s4g_engine._core``). It uses light parts of ``s4g_engine`` (geo, fileio,
logs, errors, dataset conventions, the polar transform for the contact sheet) and never imports torch or
``s4g_train``.

>>> from s4g_synth import generate_dataset
>>> root = generate_dataset("cvusa", "data/synth", pairs=300, seed=0)   # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from s4g_engine.errors import InputError, OutputExistsError
from s4g_engine.fileio import publish_folder

from .generate import GENERATOR_VERSION, GeneratorConfig, config_to_meta, plan, run_tasks, write_layout

logger = logging.getLogger(__name__)

__all__ = ["generate_dataset", "GeneratorConfig", "GENERATOR_VERSION"]


def generate_dataset(layout: str, out: str | os.PathLike, pairs: int, seed: int = 0, *, tile_size: int = 256,
                     pano_size: tuple[int, int] = (128, 512), workers: int | None = None, force: bool = False,
                     contact_pairs: int = 8, **options) -> Path:
    """Generate a synthetic dataset in a real layout and return its root folder.

    Args:
        layout: ``"cvusa"`` (centred pairs, split CSVs, GPS table) or ``"vigor"`` (4 cities, tiles on a
            50%-overlap grid, panoramas at random road positions, same- and cross-area splits).
        out: output folder; must be missing or empty, or (``force``) hold a previous s4g-synth dataset, which is
            replaced as a whole.
        pairs: CVUSA pairs / VIGOR panoramas. seed: everything is a function of (options, seed).
        tile_size: satellite tile side (px); pano_size: panorama (height, width).
        workers: processes (results do not depend on it; default: CPU count, at most 8).
        contact_pairs: rows of ``contact_sheet.png``.
        options: further :class:`GeneratorConfig` fields (tile_res, world_res, conditions, jpeg_quality, …).

    Writes the layout, ``meta.json`` (generator version, config, anchors, ``metres_per_pixel``) and
    ``contact_sheet.png`` into a hidden sibling folder that becomes ``out`` only once it is complete
    (:func:`s4g_engine.fileio.publish_folder`): a crash or ``kill -9`` leaves the previous ``out`` intact.
    """
    cfg = GeneratorConfig(layout=layout, pairs=int(pairs), seed=int(seed), tile_size=int(tile_size),
                          pano_size=(int(pano_size[0]), int(pano_size[1])), **options)
    cfg.validate()
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    if workers < 1:
        raise InputError(f"workers: expected >= 1, got {workers}")
    root = Path(out)
    _check_out(root, force)
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.partial-"))
    try:
        tasks = plan(cfg, stage)
        t0 = time.perf_counter()
        results = run_tasks(tasks, workers, cfg.pairs, f"s4g-synth {layout}")
        write_layout(cfg, stage, results)
        from .layouts import write_meta

        write_meta(stage, config_to_meta(cfg, tasks))
        elapsed = time.perf_counter() - t0
        logger.info("wrote %d %s pairs to %s in %.1f s (%.1f pairs/s, %d workers; world generation %.1f s of worker "
                    "time)", cfg.pairs, layout, root, elapsed, cfg.pairs / elapsed, workers,
                    sum(r["t_world"] for r in results))
        if contact_pairs > 0:
            _write_contact_sheet(cfg, stage, results, contact_pairs)
        publish_folder(stage, root)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return root


def _check_out(root: Path, force: bool) -> None:
    """``out`` must be missing or empty, or (``force``) a previous s4g-synth dataset — never other data."""
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{root} exists and is not a folder; expected a new or empty folder: choose another "
                                "--out")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not force:
        raise OutputExistsError(f"{root} is not empty; expected a new or empty folder: choose another, or pass "
                                "force=True (--force) to replace a previous s4g-synth dataset there")
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("generator") != "s4g-synth":
        raise OutputExistsError(f"{root} is not empty and is not an s4g-synth dataset (no meta.json of s4g-synth); "
                                "--force only replaces a previous synthetic dataset, never other data: choose "
                                "another --out")


def _write_contact_sheet(cfg: GeneratorConfig, root: Path, results: list[dict], n: int) -> None:
    from .contact import contact_sheet
    from .layouts import cvusa_paths

    sample = []
    if cfg.layout == "cvusa":
        for res in results:
            for r in res["rows"][: max(1, n // len(results))]:
                sat, pano, _ = cvusa_paths(r[0])
                sample.append((root / sat, root / pano))
    else:
        for res in results:
            for pname, sats, _ in res["rows"][:2]:
                sample.append((root / res["city"] / "satellite" / sats[0], root / res["city"] / "panorama" / pname))
    contact_sheet(sample[:n], root / "contact_sheet.png", pano_size=cfg.pano_size)
