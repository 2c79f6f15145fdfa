"""``s4g-synth``: write a synthetic cross-view dataset in the CVUSA or VIGOR layout."""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable

from s4g_engine.console import add_debug_flag, cli_main
from s4g_engine.logs import setup_logging

from .generate import LAYOUTS


def _number(kind: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable:
    """An argparse type: ``kind`` (int/float) that is finite and within [lo, hi] ((lo, hi] with ``lo_open``)."""
    rng = f"{'(' if lo_open else '['}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"

    def parse(text: str) -> float | int:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} in {rng}, "
                                             f"got {text!r}") from None
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        if not math.isfinite(v) or bad_lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected a finite value in {rng}, got {text!r}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4g-synth", description=__doc__)
    p.add_argument("--layout", choices=LAYOUTS, required=True)
    p.add_argument("--out", required=True, help="output folder: new or empty (or, with --force, a previous "
                   "s4g-synth dataset, replaced as a whole once the new one is complete)")
    p.add_argument("--pairs", type=_number(int, 1), required=True, help="CVUSA pairs / VIGOR panoramas")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--tile-size", type=_number(int, 16, 4096), default=256)
    p.add_argument("--pano-height", type=_number(int, 8, 4096), default=128)
    p.add_argument("--pano-width", type=_number(int, 16, 8192), default=512)
    p.add_argument("--tile-res", type=_number(float, 0.0, 100.0, lo_open=True), default=0.5,
                   help="metres per tile pixel (0 < res <= 100)")
    p.add_argument("--conditions", type=_number(float, 0.0, 1.0), default=1.0,
                   help="capture-condition variation between the two views, 0 (none) .. 1 (full)")
    p.add_argument("--jpeg-quality", type=_number(int, 1, 100), default=90)
    p.add_argument("--workers", type=_number(int, 1, 256), default=2, help="processes (does not change the output)")
    p.add_argument("--contact-pairs", type=_number(int, 0, 1000), default=8, help="rows of contact_sheet.png (0: none)")
    p.add_argument("--force", action="store_true", help="replace a previous s4g-synth dataset in --out")
    p.add_argument("-v", "--verbose", action="store_true")
    add_debug_flag(p)
    return p


@cli_main("s4g-synth")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from . import generate_dataset

    t0 = time.perf_counter()
    root = generate_dataset(args.layout, args.out, args.pairs, args.seed, tile_size=args.tile_size,
                            pano_size=(args.pano_height, args.pano_width), workers=args.workers, force=args.force,
                            contact_pairs=args.contact_pairs, tile_res=args.tile_res, conditions=args.conditions,
                            jpeg_quality=args.jpeg_quality)
    dt = time.perf_counter() - t0
    print(f"wrote {args.pairs} {args.layout} pairs to {root} in {dt:.1f} s ({args.pairs / dt:.1f} pairs/s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
