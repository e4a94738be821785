"""Run plumbing shared by the command-line tools: run folder, logging, seeding, device selection."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from avseg.config import CPU_ALLOCATOR_MODES, save_config
from avseg.errors import ConfigError

LOGGER_NAME = "avseg"
CONFIG_NAME = "config.yaml"
# avseg.fileio.atomic_path writes ``<name>`` through ``.<name>.<8 mkstemp characters><suffix>``.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(?:tmp|png)")


def make_run_dir(cfg: DictConfig, out: Optional[str] = None) -> Path:
    """Create the run folder: ``out``, else ``cfg.output_dir``, else ``runs/<cfg.name>/<timestamp>``.

    The resolved config is stored there as ``config.yaml``, so the run can be repeated from it alone.
    """
    folder = out or cfg.output_dir or os.path.join("runs", cfg.name or "run", time.strftime("%Y%m%d-%H%M%S"))
    run_dir = Path(folder)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(run_dir)
    save_config(cfg, run_dir / CONFIG_NAME)
    return run_dir


def remove_stale_temp_files(folder: Path, names: Sequence[str]) -> List[Path]:
    """Delete the temporary files that an interrupted atomic write of one of ``names`` left in ``folder``.

    A process killed while writing ``last.pth`` leaves a hidden ``.last.pth.<random>.tmp`` as large
    as the checkpoint; nothing else removes it. Call this before the run writes anything. Returns the
    removed paths.
    """
    removed = []
    for path in sorted(Path(folder).iterdir()):
        match = _TEMP_NAME.fullmatch(path.name)
        if match and match["name"] in names and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


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


# The glibc malloc parameters "tuned" sets (see tune_cpu_allocator), with their mallopt numbers. Another
# program gets the same settings from the environment variables MALLOC_<NAME>_ (e.g. MALLOC_TOP_PAD_).
TUNED_MALLOC = {"MMAP_THRESHOLD": 32 << 20, "TRIM_THRESHOLD": 128 << 20, "TOP_PAD": 16 << 20}
_MALLOPT_PARAMETERS = {"TRIM_THRESHOLD": -1, "TOP_PAD": -2, "MMAP_THRESHOLD": -3}


def tune_cpu_allocator(mode: str, device: torch.device) -> bool:
    """Make glibc malloc keep freed memory for reuse; True when applied (``train.cpu_allocator``).

    Each training step frees and re-allocates the same activation buffers (megabytes each). By
    default glibc hands them back to the kernel and every new buffer page-faults on first touch
    (15,000-19,000 minor faults per Fashion-MNIST VAE step, ``benchmarks/vae_step.py``). ``tuned``
    serves blocks below 32 MiB from the heap and keeps up to 128 MiB of freed heap (16 MiB growth
    padding), so the pages are reused. ``auto``: tuned when training on the CPU; ``system``: leave malloc alone.
    Process-wide and not undone; a no-op where the C library has no ``mallopt`` (not glibc).
    """
    if mode not in CPU_ALLOCATOR_MODES:
        raise ConfigError(f"key 'train.cpu_allocator': '{mode}' is not one of {', '.join(CPU_ALLOCATOR_MODES)}")
    if mode == "system" or (mode == "auto" and device.type != "cpu"):
        return False
    library = ctypes.util.find_library("c")
    libc = ctypes.CDLL(library) if library else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    accepted = [libc.mallopt(_MALLOPT_PARAMETERS[name], value) == 1 for name, value in TUNED_MALLOC.items()]
    return all(accepted)
