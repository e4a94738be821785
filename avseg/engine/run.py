"""Run plumbing shared by the command-line tools: run folder, logging, seeding, device selection."""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig

from avseg.config import save_config
from avseg.errors import ConfigError

LOGGER_NAME = "avseg"


def make_run_dir(cfg: DictConfig, out: Optional[str] = None) -> Path:
    """Create the run folder: ``out``, else ``cfg.output_dir``, else ``runs/<cfg.name>/<timestamp>``.

    The resolved config is stored there as ``config.yaml``, so the run can be repeated from it alone.
    """
    folder = out or cfg.output_dir or os.path.join("runs", cfg.name or "run", time.strftime("%Y%m%d-%H%M%S"))
    run_dir = Path(folder)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def setup_logging(run_dir: Optional[Path] = None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Log to the console and, on rank 0, to ``<run_dir>/log.txt``; other ranks log warnings only."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(level if rank == 0 else logging.WARNING)
    formatter = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if run_dir is not None and rank == 0:
        file_handler = logging.FileHandler(Path(run_dir) / "log.txt", encoding="utf-8")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch; ``deterministic`` also forces deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` force a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"key 'device': '{name}' is not a device (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"key 'device': '{name}' was asked for, but CUDA is not available on this machine")
    return device
