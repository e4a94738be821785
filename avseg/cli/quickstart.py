"""``make demo`` / ``tools/quickstart.py``: synthetic S4 data, training, evaluation and the demo, on CPU.

    python tools/quickstart.py [--out runs/quickstart] [--device auto]

See :mod:`avseg.quickstart`. Rerun to resume: finished steps are skipped, training continues from ``last.pth``.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from avseg.cli.common import add_debug_argument, run_cli
from avseg.quickstart import Quickstart


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    parser.add_argument("--device", default="auto", help="device for training, evaluation and the demo")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return Quickstart(args.out, args.device).run()


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
