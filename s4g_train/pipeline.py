"""``s4g-pipeline``: the whole job in one command, with the model it trains.

``s4g-pipeline [--preset synthetic] [--set a.b=v ...] [--run-dir DIR] [--demo-seed S] [--demo-pairs N]``
runs, in order (each stage logs ``[i/7] stage: …`` and its time):

1. ``world``    the synthetic training world (:func:`s4g_train.dataprep.ensure_synthetic`);
2. ``train``    :class:`s4g_train.trainer.Trainer`: fit, then :meth:`~s4g_train.trainer.Trainer.finish` writes
   ``checkpoints/final.pt`` (the delivered model, ``eval.select``) and evaluates the test split once;
3. ``export``   :func:`s4g_train.export.export_bundle` of ``final.pt`` → ``<run>/bundle`` (with the feature output
   the picture needs);
4. ``city``     a fresh synthetic city — the training world's generator settings with another seed, a city
   the model has never seen — in ``<run>/demo/``;
5. ``index``    :class:`s4g_engine.Localiser` on **that bundle** embeds every tile of the city →
   ``<run>/demo/index.s4gidx.npz`` (tied to the bundle's fingerprint);
6. ``localise`` the first ``--demo-queries`` test panoramas of the city → ``candidates.geojson`` + ``results.json``;
7. ``picture``  the top-k of each panorama with activation maps (:func:`s4g_train.viz.explain`,
   :func:`s4g_train.plots.render_candidates`) → ``topk-<i>.png``;

and prints a summary (test R@1/5/10/1%, where every artefact is, time per stage), also written to
``<run>/summary.json``.

Running the same command again reuses what is finished and unchanged: the worlds (keyed by their generator
settings), the training run (resumed when it was interrupted, reused when finished; a run folder holding a
run of another config is refused), the bundle (when it was exported from the same ``final.pt``, by sha256) and
the index (when built by the same bundle from the same city). Localising and drawing always run (seconds).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.console import add_debug_flag, cli_main
from s4g_engine.errors import InputError, S4GError, StateError
from s4g_engine.fileio import atomic_write_text
from s4g_engine.logs import setup_logging
from s4g_train.config import Config, apply_dict, build_config, load_yaml, split_cli_overrides
from s4g_train.health import EXIT_COLLAPSED, TrainingCollapsed

log = logging.getLogger(__name__)

STAGES = ("world", "train", "export", "city", "index", "localise", "picture")
#: Config fields a rerun may change without making it another run (how it runs, not what it computes).
RUN_CONTROL = {("data", "resolved_root"), ("data", "num_workers"), ("train", "threads"),
               ("train", "stop_after_epochs"), ("train", "time_budget_min"), ("train", "budget_clock"),
               ("train", "save_every_steps"), ("train", "final_eval"), ("data", "persistent_workers"),
               ("data", "prefetch_factor"), ("data", "device_preprocess")}  # the last: same values on any path


@dataclass
class DemoOptions:
    """The fresh city and what is localised in it."""

    seed: int = 12345  # generator seed of the city; must differ from the training world's
    pairs: int = 500  # pairs of the city (CVUSA layout: 80 % train, 20 % test; every tile is indexed)
    queries: int = 5  # test panoramas localised (and drawn)
    k: int = 5  # candidates per panorama


@dataclass
class StageTime:
    name: str
    seconds: float
    reused: bool = False


@dataclass
class Summary:
    """What the pipeline produced (``summary.json``); paths are strings."""

    run_dir: str
    final_checkpoint: str
    test: dict[str, float]
    test_split: str
    selection: str
    epochs: int
    bundle: str
    fingerprint: str
    city: str
    index: str
    index_size: int
    geojson: str
    results: str
    pictures: list[str]
    demo: dict[str, Any]
    stages: list[StageTime] = field(default_factory=list)
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stages:
    """Numbered progress lines and the time of each stage."""

    def __init__(self) -> None:
        self.times: list[StageTime] = []

    def run(self, name: str, fn: Callable[[], tuple[Any, bool]]) -> Any:
        i = STAGES.index(name) + 1
        log.info("[%d/%d] %s …", i, len(STAGES), name)
        t0 = time.perf_counter()
        out, reused = fn()
        dt = time.perf_counter() - t0
        self.times.append(StageTime(name, round(dt, 2), reused))
        log.info("[%d/%d] %s %s in %.1f s", i, len(STAGES), name, "reused" if reused else "done", dt)
        return out


# ------------------------------------------------------------------------------------------------ stages
def _world(cfg: Config) -> tuple[Path, bool]:
    from s4g_train.dataprep import ensure_synthetic, synth_dir

    reused = (synth_dir(cfg) / ".s4g-complete").is_file()
    return ensure_synthetic(cfg), reused


def _check_same_run(cfg: Config, run_dir: Path) -> None:
    """Refuse a run folder that holds a run of another config (reusing it would deliver the wrong model)."""
    old = Config()  # fields added since the run was written take their defaults, as on --resume
    apply_dict(old, load_yaml(run_dir / "config.yaml"))
    saved, now = old.to_dict(), cfg.to_dict()
    diff = [f"{sec}.{k}: {saved.get(sec, {}).get(k)!r} → {v!r}" for sec, part in now.items()
            for k, v in part.items() if (sec, k) not in RUN_CONTROL and saved.get(sec, {}).get(k) != v]
    if diff:
        raise StateError(f"{run_dir} holds a run of another config ({'; '.join(diff[:4])}"
                         f"{' …' if len(diff) > 4 else ''}); expected the same config to reuse or resume it: "
                         "choose another --run-dir, or delete the folder to start over")


def _train(cfg: Config, run_dir: Path) -> tuple[Path, bool]:
    """Train (or resume, or reuse a finished run); returns ``checkpoints/final.pt``."""
    from s4g_train.checkpoint import load_checkpoint
    from s4g_train.trainer import Trainer

    last, final = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "final.pt"
    resume = last.is_file()
    if resume:
        _check_same_run(cfg, run_dir)
        if final.is_file() and "R@1" in load_checkpoint(final).get("metrics", {}) \
                and int(load_checkpoint(last)["epoch"]) == cfg.train.epochs:
            log.info("%s: training finished before, reusing %s", run_dir, final)
            return final, True
        log.info("%s: continuing the interrupted run", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tr = Trainer(cfg, run_dir, resume=resume)
    try:
        if not tr.fit():
            why = "its time budget train.time_budget_min was reached" if tr.stop_reason == "time_budget" \
                else "train.stop_after_epochs"
            raise StateError(f"training stopped after {tr.epoch} of {tr.epochs} epochs ({why}); run the same "
                             "command again to continue it (the result is the same as an uninterrupted run)")
        tr.finish(evaluate=True)
    finally:
        tr.close()
    return final, False


def _export(final: Path, bundle: Path, name: str, command: str) -> tuple[dict[str, Any], bool]:
    """Export ``final`` to ``bundle`` with the feature output; reused when it came from the same checkpoint."""
    from s4g_train.data import checkpoint_contract
    from s4g_train.export import _provenance, export_bundle, load_for_export, sha256_file

    sha = sha256_file(final)
    old = bundle / "config.json"
    if old.is_file():
        cfg = json.loads(old.read_text(encoding="utf-8"))
        outputs = cfg.get("views", {}).get("ground", {}).get("outputs", [])
        if cfg.get("provenance", {}).get("checkpoint_sha256") == sha and "features" in outputs:
            return cfg, True
    model, info = load_for_export(str(final))
    contract = checkpoint_contract(model, info.get("config"))
    # the provenance names the equivalent s4g-export command and the command that trained the model
    prov = _provenance(str(final), info, [str(final), "--out", str(bundle), "--with-features"])
    prov["train_command"] = command
    return export_bundle(model, bundle, with_features=True, contract=contract, provenance=prov, name=name), False


def _city(cfg: Config, demo_dir: Path, opts: DemoOptions) -> tuple[Path, bool]:
    """The fresh city: the training world's generator settings with ``opts.seed`` and ``opts.pairs``."""
    city_cfg = copy.deepcopy(cfg)
    city_cfg.data.root = str(demo_dir)
    city_cfg.data.synth.seed, city_cfg.data.synth.pairs = opts.seed, opts.pairs
    return _world(city_cfg)


@dataclass
class _City:
    """Every tile of the city (indexed) and the panoramas that are localised, with their true tiles."""

    root: Path
    tiles: list[str]
    coords: np.ndarray
    ids: list[str]
    queries: list[str]
    truth_ids: list[str]
    truth_gps: np.ndarray


def _read_city(dataset: str, world: Path, n_queries: int) -> _City:
    from s4g_engine.datasets import load_split

    world = Path(world).resolve()  # the readers return absolute paths; a relative run dir must not break ids
    test = load_split(dataset, str(world), "test")
    tiles: dict[str, np.ndarray] = {}
    for sp in (load_split(dataset, str(world), "train"), test):
        for path, gps in zip(sp.references, sp.reference_gps, strict=True):
            tiles.setdefault(path, gps)  # a tile shared by both splits (VIGOR same-area) is indexed once
    paths = list(tiles)
    ids = [Path(p).resolve().relative_to(world).as_posix() for p in paths]
    q = min(n_queries, len(test.queries))
    truth = [Path(test.references[int(i)]).resolve().relative_to(world).as_posix() for i in test.positive[:q]]
    return _City(world, paths, np.stack([tiles[p] for p in paths]), ids, list(test.queries[:q]), truth,
                 np.asarray(test.query_gps[:q]))


def _index(bundle: Path, fingerprint: str, city: _City, path: Path,
           state: dict[str, Any]) -> tuple[Any, bool]:
    """A Localiser on ``bundle`` with the city's index: loaded when this bundle built it from this city, else
    every tile is embedded and the index saved. Returns (localiser, reused)."""
    from s4g_engine.localiser import Localiser

    loc = Localiser.from_dir(bundle)
    if loc.fingerprint != fingerprint:
        loc.close()
        raise StateError(f"{bundle} changed while the pipeline ran (fingerprint {loc.fingerprint[:12]}… ≠ "
                         f"{fingerprint[:12]}…); run the command again")
    key = {"fingerprint": loc.fingerprint, "city": city.root.name, "tiles": len(city.ids),
           "tiles_sha256": hashlib.sha256("\n".join(city.ids).encode()).hexdigest()}
    if path.is_file() and state.get("index") == key:
        try:
            loc.load_index(path)
            return loc, True
        except S4GError as exc:
            log.warning("rebuilding the index: %s", exc)
    loc.index_references(city.tiles, city.coords, city.ids, progress=True)
    loc.save_index(path)
    state["index"] = key
    return loc, False


def _localise(loc: Any, city: _City, demo_dir: Path, k: int) -> tuple[tuple[Any, dict[str, Any]], bool]:
    from s4g_engine.geo import haversine_m

    res = loc.localise(city.queries, k=min(k, len(loc.index)))
    names = [Path(q).name for q in city.queries]
    atomic_write_text(demo_dir / "candidates.geojson", json.dumps(res.to_geojson(names), indent=1, allow_nan=False))
    out = res.to_dict(names)
    for r, t in zip(out["results"], city.truth_ids, strict=True):
        r["true_tile"] = t
    atomic_write_text(demo_dir / "results.json", json.dumps(out, indent=1, allow_nan=False))
    err = haversine_m(city.truth_gps[:, 0], city.truth_gps[:, 1], res.coords[:, 0, 0], res.coords[:, 0, 1])
    hits = sum(res.ids[i][0] == t for i, t in enumerate(city.truth_ids))
    stats = {"panoramas": len(names), "top1_true_tile": int(hits), "median_top1_error_m": float(np.median(err)),
             "fingerprint": loc.fingerprint}
    return (res, stats), False


def _pictures(bundle: Path, city: _City, res: Any, demo_dir: Path) -> tuple[list[str], bool]:
    """One picture per panorama: its top-k as the localiser ranked them, right/wrong marked."""
    from s4g_train.plots import render_candidates
    from s4g_train.viz import explain, open_source

    src = open_source(bundle=str(bundle))
    out = []
    for i, query in enumerate(city.queries):
        ids = [c["id"] for c in res.candidates(i)]
        correct = [t == city.truth_ids[i] for t in ids]
        q, cands = explain(src, query, [str(city.root / t) for t in ids], mode="activation",
                           labels=[f"#{r + 1}" for r in range(len(ids))], correct=correct)
        title = f"true tile at rank {correct.index(True) + 1}" if any(correct) else \
            f"true tile not in the top-{len(ids)}"
        out.append(str(render_candidates(q, cands, demo_dir / f"topk-{i}.png", mode="activation", title=title)))
    return out, False


# ---------------------------------------------------------------------------------------------- pipeline
def run_pipeline(cfg: Config, run_dir: Path, opts: DemoOptions | None = None, command: str = "") -> Summary:
    """Run the seven stages (module docstring) for ``cfg`` in ``run_dir``; returns the summary (also written
    to ``<run_dir>/summary.json``). Raises :class:`StateError` when training stopped early (rerun to go on)."""
    from s4g_train.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    opts = opts or DemoOptions()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("s4g-pipeline runs in one process; expected no torchrun. For multi-GPU training run "
                         "torchrun … -m s4g_train.trainer, then s4g-export, s4g-index build and s4g-localise")
    if not cfg.data.synthetic:
        raise InputError("s4g-pipeline trains on the synthetic world (data.synthetic: true); expected a synthetic "
                         "config such as --preset synthetic. For real datasets run the stages yourself: s4g-train, "
                         "s4g-export, s4g-index build, s4g-localise")
    if opts.seed == cfg.data.synth.seed:  # checked before training, not after it
        raise InputError(f"--demo-seed {opts.seed} is the seed of the training world; expected another seed, so "
                         "that the city is one the model has never seen")
    run_dir = Path(run_dir)
    demo_dir, state_path = run_dir / "demo", run_dir / "pipeline-state.json"
    stages = _Stages()
    stages.run("world", lambda: _world(cfg))
    final = stages.run("train", lambda: _train(cfg, run_dir))
    fin = load_checkpoint(final)
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    bundle = run_dir / "bundle"
    bcfg = stages.run("export", lambda: _export(final, bundle, cfg.train.name, command))
    world = stages.run("city", lambda: _city(cfg, demo_dir, opts))
    city = _read_city(cfg.data.dataset, world, opts.queries)
    index_path = demo_dir / "index.s4gidx.npz"
    loc = stages.run("index", lambda: _index(bundle, bcfg["fingerprint"], city, index_path, state))
    with loc:
        atomic_write_text(state_path, json.dumps(state, indent=1) + "\n")
        n_index = len(loc.index)
        res, demo = stages.run("localise", lambda: _localise(loc, city, demo_dir, opts.k))
    pictures = stages.run("picture", lambda: _pictures(bundle, city, res, demo_dir))
    m = fin["metrics"]
    summary = Summary(
        run_dir=str(run_dir), final_checkpoint=str(final),
        test={k: float(m[k]) for k in ("R@1", "R@5", "R@10", "R@1%") if k in m},
        test_split=f"{cfg.data.eval_split} split, {int(m.get('queries', 0))} queries vs "
                   f"{int(m.get('references', 0))} tiles", selection=str(m.get("note", m.get("selection"))),
        epochs=cfg.train.epochs, bundle=str(bundle), fingerprint=bcfg["fingerprint"], city=str(world),
        index=str(index_path), index_size=int(n_index), geojson=str(demo_dir / "candidates.geojson"),
        results=str(demo_dir / "results.json"), pictures=pictures,
        demo={**demo, "seed": opts.seed, "pairs": opts.pairs}, stages=stages.times,
        total_s=round(time.perf_counter() - t0, 1))
    atomic_write_text(run_dir / "summary.json", json.dumps(summary.to_dict(), indent=1) + "\n")
    return summary


def format_summary(s: Summary) -> str:
    """The summary printed at the end of the command."""
    t = s.test
    d = s.demo
    lines = [
        f"s4g-pipeline finished in {s.total_s / 60:.1f} min",
        f"  test ({s.test_split}): " + "  ".join(f"{k} {t[k]:.2f}" for k in ("R@1", "R@5", "R@10", "R@1%") if k in t),
        f"  model:   {s.selection}; {s.epochs} epochs",
        f"  run:     {s.run_dir}  (config.yaml, metrics.jsonl, checkpoints/final.pt)",
        f"  bundle:  {s.bundle}  (fingerprint {s.fingerprint[:12]}…)",
        f"  index:   {s.index}  ({s.index_size} tiles of a city the model never saw, seed {d['seed']})",
        f"  geojson: {s.geojson}  (results: {s.results})",
        f"  picture: {s.pictures[0] if s.pictures else '-'}" + (f"  (+{len(s.pictures) - 1} more)"
                                                               if len(s.pictures) > 1 else ""),
        (f"  demo:    true tile ranked first for {d['top1_true_tile']}/{d['panoramas']} panoramas, median "
         f"top-1 error {d['median_top1_error_m']:.1f} m"),
        "  time:    " + " | ".join(f"{x.name} {x.seconds:.0f} s{' (reused)' * x.reused}" for x in s.stages),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s4g-pipeline",
        description="The whole job: synthetic world → train → export a bundle → index a fresh synthetic city "
        "with it → localise panoramas → GeoJSON, pictures and a summary. Rerun to resume. Override any config "
        "field with --set section.field=value.")
    p.add_argument("--preset", default="synthetic", help="training preset (default: synthetic)")
    p.add_argument("--config", help="a YAML config file (applied after the preset)")
    p.add_argument("--run-dir", help="where everything goes (default: <train.runs_dir>/<train.name>)")
    d = DemoOptions()
    p.add_argument("--demo-seed", type=int, default=d.seed, help=f"seed of the fresh city (default {d.seed})")
    p.add_argument("--demo-pairs", type=int, default=d.pairs, help=f"pairs of the fresh city (default {d.pairs})")
    p.add_argument("--demo-queries", type=int, default=d.queries, help="panoramas localised and drawn")
    p.add_argument("--k", type=int, default=d.k, help="candidates per panorama")
    p.add_argument("-v", "--verbose", action="store_true")
    add_debug_flag(p)
    return p


@cli_main("s4g-pipeline")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_cli_overrides(argv)
    args = _parser().parse_args(rest)
    setup_logging(args.verbose)
    for name in ("demo_pairs", "demo_queries", "k"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    try:
        cfg = build_config(args.preset, args.config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from exc
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.train.runs_dir) / cfg.train.name
    opts = DemoOptions(seed=args.demo_seed, pairs=args.demo_pairs, queries=args.demo_queries, k=args.k)
    try:
        summary = run_pipeline(cfg, run_dir, opts, command="s4g-pipeline " + " ".join(argv))
    except TrainingCollapsed as exc:  # the trainer's own exit code for it; the message says what to change
        print(f"s4g-pipeline: {exc}", file=sys.stderr)
        return EXIT_COLLAPSED
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
