"""Training logs: a tqdm bar, TensorBoard scalars, ``train_log.csv``, step lines in ``log.txt`` and ``curves.png``.

Only the main process (rank 0) writes; on other ranks every method is a no-op.

``train_log.csv`` has one row per finished epoch: ``epoch``, ``step`` (optimiser steps so far), ``lr``,
``train_<term>`` (the epoch mean of each loss term the model returns, averaged over ranks),
``val_<metric>`` (on validation epochs), ``time_train_s``, ``time_val_s``, ``time_epoch_s``.
TensorBoard scalars all use the optimiser step as x axis: ``train/<term>`` and ``train/lr`` every
``train.log_every`` steps, ``epoch/<column>`` once per epoch, ``val/<metric>`` after each validation.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from tqdm import tqdm

from avseg.engine.run_setup import get_logger
from avseg.fileio import atomic_path, atomic_write_text

CSV_NAME = "train_log.csv"
CURVES_NAME = "curves.png"
TENSORBOARD_DIR = "tensorboard"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)


def history_to_csv(history: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of the epoch rows; the columns are the union of the rows' keys in order of appearance."""
    columns: List[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow([_format_value(row.get(key)) for key in columns])
    return buffer.getvalue()


def write_curves(history: Sequence[Mapping[str, Any]], path: Path, columns: int = 4) -> Optional[Path]:
    """One small panel per loss term (epoch mean) and per validation metric, into one PNG (Agg, no display)."""
    series: Dict[str, List[tuple]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith(("train_", "val_")) and isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append((row["epoch"], value))
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns = min(columns, len(series))
    rows = -(-len(series) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows), dpi=100)
    FigureCanvasAgg(figure)
    for index, (key, points) in enumerate(series.items(), start=1):
        axes = figure.add_subplot(rows, columns, index)
        epochs, values = zip(*points)
        is_train = key.startswith("train_")
        axes.plot(epochs, values, marker="o", markersize=3, color="tab:blue" if is_train else "tab:green")
        axes.set_title(f"{'train' if is_train else 'val'} {key.split('_', 1)[1]}", fontsize=10)
        axes.set_xlabel("epoch", fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return path


class TrainingLogger:
    """Everything the trainer reports, written by rank 0 into ``run_dir``.

    ``history`` holds the epoch rows already written (restored on resume); ``purge_step`` drops
    TensorBoard events at or after that step, left behind by a run that was killed mid-epoch.
    """

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        history: Sequence[Mapping[str, Any]] = (),
        tensorboard: bool = True,
        progress: bool = True,
        purge_step: Optional[int] = None,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.progress_enabled = progress and enabled
        self.history: List[Dict[str, Any]] = [dict(row) for row in history]
        self.logger = get_logger()
        self.writer = None
        self.step_log: Optional[logging.Logger] = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)
        self.step_log = logging.getLogger(f"{self.logger.name}.steps")
        self.step_log.handlers.clear()
        self.step_log.propagate = False
        self.step_log.setLevel(logging.INFO)
        handler = logging.FileHandler(self.run_dir / "log.txt", encoding="utf-8")
        handler.setFormatter(logging.Formatter("[%(asctime)s STEP] %(message)s", "%H:%M:%S"))
        self.step_log.addHandler(handler)
        if self.history:
            atomic_write_text(self.run_dir / CSV_NAME, history_to_csv(self.history))

    def progress(self, total: int, description: str) -> tqdm:
        """A tqdm bar (ETA, rate) for one epoch; disabled off rank 0 or with ``train.progress=false``."""
        interactive = sys.stderr.isatty()
        return tqdm(
            total=total,
            desc=description,
            disable=not self.progress_enabled,
            dynamic_ncols=True,
            leave=False,
            mininterval=0.1 if interactive else 30.0,  # a line every 30 s in batch-job logs
        )

    def log_step(self, step: int, terms: Mapping[str, float], lr: float, extra: Optional[Mapping[str, float]] = None) -> None:
        """Scalars of one optimiser step (``terms`` already averaged over ranks)."""
        if not self.enabled:
            return
        values = dict(terms)
        values.update(extra or {})
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.add_scalar("train/lr", lr, step)
        text = " ".join(f"{name} {value:.4f}" for name, value in values.items())
        self.step_log.info(f"step {step}: {text} lr {lr:.3e}")

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Append an epoch row: rewrite ``train_log.csv`` and add the TensorBoard scalars."""
        self.history.append(dict(row))
        if not self.enabled:
            return
        atomic_write_text(self.run_dir / CSV_NAME, history_to_csv(self.history))
        if self.writer is not None:
            step = row["step"]
            for key, value in row.items():
                if key in ("epoch", "step") or not isinstance(value, (int, float)):
                    continue
                tag = f"val/{key[4:]}" if key.startswith("val_") else f"epoch/{key}"
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()

    def write_curves(self) -> Optional[Path]:
        if not self.enabled:
            return None
        return write_curves(self.history, self.run_dir / CURVES_NAME)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.step_log is not None:
            for handler in list(self.step_log.handlers):
                handler.close()
                self.step_log.removeHandler(handler)
