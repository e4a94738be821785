"""Shared command-line plumbing: ``--cfg`` with ``key=value`` overrides, and user-error handling."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional, Sequence

from omegaconf import DictConfig

from avseg.config import config_to_yaml, load_config
from avseg.errors import AvsegError


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--cfg FILE``, ``--print-config`` and trailing ``key=value`` overrides."""
    parser.add_argument("--cfg", required=required, help="config file or short name (ms3.yaml -> configs/ms3.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=5e-5")


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")


def config_from_args(args: argparse.Namespace) -> Optional[DictConfig]:
    """Load the config named by ``args``; with ``--print-config`` print it and return None."""
    cfg = load_config(args.cfg, args.overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return None
    return cfg


def run_cli(main: Callable[[List[str]], int], argv: Optional[Sequence[str]] = None) -> None:
    """Run ``main(argv)`` and exit with its status; user errors print a message and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = main(argv)
    except AvsegError as exc:
        if "--debug" in argv:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
