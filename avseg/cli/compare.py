"""``tools/compare.py`` / ``avseg-compare``: train (or reuse) several configs, evaluate them the same way, tabulate.

Examples::

    python tools/compare.py --cfgs configs/compare/s4_visual_only.yaml configs/compare/s4_tpavi.yaml \\
        --train --out runs/compare/s4
    python tools/compare.py --cfgs A.yaml B.yaml --out runs/compare/x --audio normal,shuffle,silent data.root=/data/x
    python tools/compare.py --cfgs configs/compare/s4_tpavi.yaml configs/compare/s4_tpavi_negaudio.yaml --train \\
        --audio normal,silent,noise,offscreen,shuffle --out runs/compare/s4_negaudio --threads 1 --jobs 2

Each config is trained (``--train``; ``--jobs N`` at once) or reused from ``<out>/<cfg.name>/``, evaluated
with every ``--audio`` mode, and tabulated in ``<out>/results.md``, ``results.csv`` and ``results.png``;
see :mod:`avseg.evaluation.compare`. Shared ``key=value`` overrides apply to every config. ``--threads 1``
is much faster on a CPU shared with other jobs.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from avseg.cli.common import add_debug_argument, run_cli
from avseg.evaluation.compare import compare


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avseg-compare",
        description="Train (or reuse) several configs, evaluate them with normal and counterfactual audio, "
        "and write results.md / results.csv / results.png.",
    )
    parser.add_argument("--cfgs", nargs="+", required=True, metavar="CFG", help="config files or short names")
    parser.add_argument("--out", required=True, help="comparison folder: one run folder per config name, plus the tables")
    parser.add_argument("--train", action="store_true", help="train missing runs and resume unfinished ones")
    parser.add_argument("--audio", default="normal,shuffle",
                        help="audio modes, comma-separated: normal, shuffle, silent, noise, offscreen "
                        "(the last three are negative audio: their false-positive rate and pn_hmean are tabulated)")
    parser.add_argument("--split", help="evaluation split (default: each config's eval.split)")
    parser.add_argument("--fps-batches", type=int, default=4, help="test batches timed for frames/s (0: skip)")
    parser.add_argument("--threads", type=int, help="torch CPU threads for training and evaluation (default: torch's)")
    parser.add_argument("--jobs", type=int, default=1, help="configs trained at once, each in a subprocess (default 1)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides applied to every config")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # ``--cfgs A B key=value``: nargs="+" also takes the overrides that follow the configs.
    cfgs = [item for item in args.cfgs if not ("=" in item and not Path(item).exists())]
    overrides = [item for item in args.cfgs if item not in cfgs] + list(args.overrides)
    command = " ".join(shlex.quote(part) for part in ["python", "tools/compare.py", *argv])
    compare(cfgs, args.out, overrides, train=args.train, audio=args.audio, split=args.split,
            fps_batches=args.fps_batches, threads=args.threads, jobs=args.jobs, command=command)
    return 0


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
