"""``tools/make_synthetic.py``: write a synthetic AVSBench in the official layout.

Examples::

    python tools/make_synthetic.py --task s4 --out datasets/synthetic --videos 100 --size 224 --seed 0
    python tools/make_synthetic.py --task ms3 --out datasets/synthetic --videos 100 --size 96
    python tools/make_synthetic.py --task v2 --layout semantic --out datasets/synthetic_semantic --videos 20
    python tools/make_synthetic.py --task avss --out datasets/synthetic_avss --videos 40 --size 96 --no-videos

The data is for pipeline tests, demos and checking that a model uses sound; numbers measured on it
are not AVSBench numbers.
"""
from __future__ import annotations

import argparse
import time
from typing import List

from avseg.cli.common import add_debug_argument, run_cli
from avseg.data.synthetic import COLOUR_MODES, default_layout, make_synthetic


def _split_sizes(text: str) -> List[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST counts, got '{text}'") from None
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"expected three counts TRAIN,VAL,TEST, got '{text}'")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make_synthetic", description="Write a synthetic AVSBench (official layout).")
    parser.add_argument("--task", required=True, choices=("s4", "ms3", "v2", "avss"),
                        help="v2 and avss (all of v1s, v1m, v2 with 71-class labels) only in the semantic layout")
    parser.add_argument("--out", required=True, help="dataset root (v1: gets Single-source/ or Multi-sources/)")
    parser.add_argument("--videos", type=int, default=100, help="number of clips (avss: per set), split 70/15/15 (default 100)")
    parser.add_argument("--split-sizes", type=_split_sizes, help="TRAIN,VAL,TEST clip counts (overrides --videos)")
    parser.add_argument("--size", type=int, default=224, help="frame size in pixels (even; default 224)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("v1", "semantic"), help="default: semantic for v2 and avss, else v1")
    parser.add_argument("--colours", choices=COLOUR_MODES, default="category",
                        help="category: one hue per category (default); random: random hues, only shapes tell categories apart")
    parser.add_argument("--no-videos", action="store_true", help="skip raw_videos/*.mp4 (faster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(parser)
    return parser


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    root = make_synthetic(args.out, task=args.task, num_videos=args.videos, size=args.size, seed=args.seed,
                          layout=args.layout, split_sizes=args.split_sizes, write_videos=not args.no_videos,
                          progress=not args.no_progress, colours=args.colours)
    print(f"wrote synthetic {args.task} ({args.layout or default_layout(args.task)} layout) to {root} in {time.perf_counter() - start:.1f} s")
    return 0


def entry() -> None:
    run_cli(main)
