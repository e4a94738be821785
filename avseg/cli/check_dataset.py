"""``tools/check_dataset.py``: check that an AVSBench copy is complete and decodable.

Examples::

    python tools/check_dataset.py --root datasets/avsbench --task s4
    python tools/check_dataset.py --root datasets/avsbench_semantic --task avss

Prints clip and mask counts per split and the first problems with their paths; exit status 1 when
anything is missing or unreadable, 0 when everything is fine.
"""
from __future__ import annotations

import argparse
from typing import List

from avseg.cli.common import add_debug_argument, run_cli
from avseg.data.check import CHECK_TASKS, check_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="check_dataset", description="Check an AVSBench copy (v1: s4/ms3; semantic: avss).")
    parser.add_argument("--root", required=True, help="v1: folder holding Single-source/ and Multi-sources/; avss: folder with metadata.csv")
    parser.add_argument("--task", required=True, choices=CHECK_TASKS)
    parser.add_argument("--no-log-mel", action="store_true", help="do not require the .pkl log-mels (v1)")
    parser.add_argument("--max-problems", type=int, default=20, help="how many problems to print (default 20)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(parser)
    return parser


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    report = check_dataset(args.root, args.task, check_log_mel=not args.no_log_mel, progress=not args.no_progress)
    print(report.format(args.max_problems))
    return 0 if report.ok else 1


def entry() -> None:
    run_cli(main)
