"""The ``s4g-train`` command line: arguments, preset / config file / ``--set`` overrides, resume checks, the
process group, and the run with the trainer it is handed (:func:`run`).

The entry point is :func:`s4g_train.trainer.main` (``s4g-train``, after the torch-free ``--help`` of
:func:`s4g_train.cli.train_main`; ``python -m s4g_train.trainer`` for torchrun), which calls :func:`run` with
:class:`s4g_train.trainer.Trainer`: this module never imports the trainer, so the two form no import circle.
Command-line mistakes are one line on stderr and exit code 2; a collapsed run exits with
:data:`s4g_train.health.EXIT_COLLAPSED`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from s4g_engine.errors import S4GError
from s4g_engine.logs import setup_logging
from s4g_train import dist
from s4g_train.config import Config, apply_dict, build_config, load_yaml, set_override, split_cli_overrides, validate
from s4g_train.evaluate import format_table
from s4g_train.health import EXIT_COLLAPSED, TrainingCollapsed
from s4g_train.parsers import train_parser

if TYPE_CHECKING:  # pragma: no cover
    from s4g_train.trainer import Trainer

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_cli_overrides(argv)
    return train_parser().parse_args(rest), overrides  # torch-free parser: s4g_train.parsers


def _resolve(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> tuple[Config, Path] | str:
    """(config, run folder), or the message of a command-line mistake."""
    for flag, key, val in (("--init", "train.init", args.init), ("--backbone", "train.init_backbone", args.backbone),
                           ("--allow-partial", "train.init_allow_partial", "true" if args.allow_partial else None)):
        if val is not None:
            if args.resume:
                return f"{flag} starts a new run; it cannot be combined with --resume"
            overrides.append((key, val))
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            return f"{run_dir}/checkpoints/last.pt does not exist: nothing to resume"
        cfg = Config()
        apply_dict(cfg, load_yaml(run_dir / "config.yaml"))
        for k, v in overrides:
            set_override(cfg, k, v)
        validate(cfg)
        return cfg, run_dir
    cfg = build_config(args.preset, args.config, overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.train.runs_dir) / cfg.train.name
    if not args.print_config and (run_dir / "checkpoints" / "last.pt").exists():
        return f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir"
    return cfg, run_dir


def run(argv: list[str] | None, trainer: Callable[..., Trainer]) -> int:
    """Parse ``argv``, resolve the config and run folder, and train with ``trainer(cfg, run_dir, resume=...,
    dist_info=...)``; returns the exit code."""
    args, overrides = parse_args(argv)
    resolved = _resolve(args, overrides)
    if isinstance(resolved, str):
        print(f"s4g-train: {resolved}", file=sys.stderr)
        return 2
    cfg, run_dir = resolved
    if args.print_config:
        import yaml
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    info = dist.init_for_device(cfg.train.device)
    setup_logging(args.verbose, rank=info.rank)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        tr = trainer(cfg, run_dir, resume=bool(args.resume), dist_info=info)
    except S4GError as exc:
        if not args.resume:
            raise
        # a run that cannot be continued as asked (changed settings, old layout, corrupt state): why and what to do
        print(f"s4g-train: cannot resume {run_dir}: {exc}", file=sys.stderr)
        if info.distributed:
            dist.cleanup()
        return 2
    try:
        finished = tr.fit()
        if finished:
            res = tr.finish(evaluate=cfg.train.final_eval)
            if tr.main and res:
                print(f"\n{cfg.data.dataset} ({tr.eval_split.split} split, {len(tr.eval_split.queries)} queries, "
                      f"{len(tr.eval_split.references)} references) after {tr.epoch} epochs, "
                      f"{tr.elapsed() / 60:.1f} min:")
                print(format_table({cfg.train.name: res}))
            if tr.main:
                print(f"final model: {run_dir / 'checkpoints' / 'final.pt'} — {tr.selection_note()}")
        elif not finished and tr.main:
            why = f"the time budget train.time_budget_min={cfg.train.time_budget_min} was reached; the run was " \
                "cut, not shortened" if tr.stop_reason == "time_budget" else "train.stop_after_epochs"
            print(f"stopped after {tr.epoch} of {tr.epochs} epochs ({why}); continue with "
                  f"s4g-train --resume {run_dir}")
    except TrainingCollapsed as exc:
        if tr.main:
            print(f"s4g-train: {exc}", file=sys.stderr)
        return EXIT_COLLAPSED
    finally:
        tr.close()
    return 0

