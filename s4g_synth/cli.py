"""``s4g-synth``: write a synthetic cross-view dataset in the CVUSA or VIGOR layout."""
from __future__ import annotations

import argparse
import sys
import time

from s4g_engine.logs import setup_logging

from .generate import LAYOUTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4g-synth", description=__doc__)
    p.add_argument("--layout", choices=LAYOUTS, required=True)
    p.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    p.add_argument("--pairs", type=int, required=True, help="CVUSA pairs / VIGOR panoramas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--pano-height", type=int, default=128)
    p.add_argument("--pano-width", type=int, default=512)
    p.add_argument("--tile-res", type=float, default=0.5, help="metres per tile pixel")
    p.add_argument("--conditions", type=float, default=1.0,
                   help="capture-condition variation between the two views, 0 (none) .. 1 (full)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=2, help="processes (does not change the output)")
    p.add_argument("--contact-pairs", type=int, default=8, help="rows of contact_sheet.png (0: none)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from . import generate_dataset

    t0 = time.perf_counter()
    try:
        root = generate_dataset(args.layout, args.out, args.pairs, args.seed, tile_size=args.tile_size,
                                pano_size=(args.pano_height, args.pano_width), workers=args.workers, force=args.force,
                                contact_pairs=args.contact_pairs, tile_res=args.tile_res, conditions=args.conditions,
                                jpeg_quality=args.jpeg_quality)
    except (ValueError, FileExistsError) as exc:
        print(f"s4g-synth: error: {exc}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"wrote {args.pairs} {args.layout} pairs to {root} in {dt:.1f} s ({args.pairs / dt:.1f} pairs/s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
