"""``tools/train.py`` / ``avseg-train``: train a model from a config, resume a run, or initialise from a checkpoint.

Examples::

    python tools/train.py --cfg configs/synthetic/s4_tpavi.yaml --out runs/s4_tpavi
    python tools/train.py --cfg s4.yaml data.root=/data/avsbench train.lr=5e-5
    python tools/train.py --out runs/s4_tpavi --resume                # continue from runs/s4_tpavi/last.pth
    python tools/train.py --resume runs/s4_tpavi/last.pth train.epochs=30
    torchrun --nproc_per_node=4 tools/train.py --cfg s4.yaml train.batch_size=1

User errors (unknown config key, missing checkpoint, ...) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Tuple

from omegaconf import DictConfig

from avseg.checkpoint import read_checkpoint
from avseg.cli.common import add_config_arguments, add_debug_argument, run_cli
from avseg.config import apply_overrides, config_to_yaml, load_config
from avseg.engine.hooks import LAST_NAME
from avseg.engine.run_setup import get_logger
from avseg.engine.trainer import train
from avseg.errors import CheckpointError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avseg-train",
        description="Train an avseg model (AVS or VAE) from a config; see docs/training.md.",
    )
    add_config_arguments(parser, required=False)
    parser.add_argument("--out", help="run folder (default: cfg.output_dir, else runs/<name>/<timestamp>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="PATH",
        help="continue a run: from PATH (a last.pth), or without PATH from <run folder>/last.pth "
        "(a new run starts when that file does not exist yet, so a requeued job can always pass --resume)",
    )
    add_debug_argument(parser)
    return parser


def resolve_run(args: argparse.Namespace) -> Tuple[DictConfig, Optional[str], Optional[str]]:
    """The config, run folder and checkpoint to resume from that the arguments ask for."""
    resume_path: Optional[str] = None
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        # ``--resume key=value``: argparse gave the first override to --resume's optional PATH.
        args.overrides.insert(0, args.resume)
        args.resume = ""
    if args.resume:
        if not Path(args.resume).is_file():
            raise CheckpointError(f"--resume: checkpoint not found: {args.resume}")
        resume_path = args.resume
    cfg = load_config(args.cfg, args.overrides) if args.cfg else None
    if args.resume == "":
        folder = args.out or (cfg.output_dir if cfg is not None else None)
        if not folder:
            raise ConfigError("--resume without a path needs the run folder: pass --out DIR (or set output_dir)")
        candidate = Path(folder) / LAST_NAME
        if candidate.is_file():
            resume_path = str(candidate)
        else:
            get_logger().warning(f"--resume: {candidate} does not exist yet; starting a new run in {folder}")
    if cfg is None:
        if not resume_path:
            raise ConfigError("--cfg is required (or --resume PATH, to continue a run with the config stored in its checkpoint)")
        cfg = apply_overrides(read_checkpoint(resume_path)["config"], args.overrides)
    out = args.out or (str(Path(resume_path).parent) if resume_path else None) or cfg.output_dir
    return cfg, out, resume_path


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, out, resume_path = resolve_run(args)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    train(cfg, out=out, resume=resume_path)
    return 0


def entry() -> None:
    run_cli(main)
