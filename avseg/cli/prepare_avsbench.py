"""``tools/prepare_avsbench.py``: raw AVSBench videos → frames, 16 kHz wav and log-mel ``.pkl``.

Examples::

    python tools/prepare_avsbench.py --root datasets/avsbench --task s4
    python tools/prepare_avsbench.py --root datasets/avsbench --task ms3 --resampler resampy
    python tools/prepare_avsbench.py --root datasets/avsbench_semantic --task avss --size 0
    python tools/prepare_avsbench.py --root datasets/avsbench --task s4 --official-frame-times   # as released

Reads ``raw_videos/`` and the meta CSV (see datasets/README.md); finished clips are skipped, so the
command can be rerun after an interruption. Exit status 1 when some clips failed (they are listed).
"""
from __future__ import annotations

import argparse
from typing import List

from avseg.cli.common import add_debug_argument, run_cli
from avseg.data.prepare import prepare_avsbench


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepare_avsbench", description="Extract frames, wav and log-mels from raw AVSBench videos.")
    parser.add_argument("--root", required=True, help="v1: folder holding Single-source/ and Multi-sources/; avss: folder with metadata.csv")
    parser.add_argument("--task", required=True, choices=("s4", "ms3", "avss"))
    parser.add_argument("--size", type=int, default=224, help="frame size in pixels (cv2 bilinear resize; 0 keeps the video size)")
    parser.add_argument("--resampler", choices=("soxr", "resampy"), default="soxr", help="resampler to 16 kHz (resampy: TF VGGish's)")
    parser.add_argument("--official-frame-times", action="store_true",
                        help="the released scripts' frame times: fps rounded to an integer, and a video too short for a "
                             "frame repeats its last frame (default: the exact frame rate, a too-short video is an error)")
    parser.add_argument("--overwrite", action="store_true", help="redo clips whose outputs already exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(parser)
    return parser


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    summary = prepare_avsbench(args.root, args.task, size=args.size or None, resampler=args.resampler,
                               overwrite=args.overwrite, progress=not args.no_progress,
                               official_frame_times=args.official_frame_times)
    print(f"prepared {summary.prepared} clip(s), skipped {summary.skipped} finished, {len(summary.failed)} failed")
    for failure in summary.failed[:20]:
        print(f"  {failure}")
    if len(summary.failed) > 20:
        print(f"  ... and {len(summary.failed) - 20} more")
    return 1 if summary.failed else 0


def entry() -> None:
    run_cli(main)
