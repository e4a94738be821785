"""The comparison behind ``tools/compare.py``: train (or reuse) several configs, evaluate them the same way, tabulate.

For every config (run folder ``<out>/<cfg.name>/``):

1. with ``train``: train it there, or continue it from ``last.pth`` (the trainer's resume; also to
   extend a run to a larger ``train.epochs``); a run whose ``last.pth`` has reached ``train.epochs`` is
   reused as it is. Without ``train`` a finished run must already exist. A run trained with a different
   config is refused (the differing keys are named). ``jobs`` > 1 trains that many configs at once, each
   in a ``tools/train.py`` subprocess (:func:`train_in_subprocesses`, the run pool).
2. evaluate ``best.pth`` (else ``last.pth``) on ``cfg.eval.split`` with every audio mode (``normal``
   always first): ``<run>/eval_<split>/metrics.json``, per-video CSVs and grids, as ``tools/eval.py``
   writes them;
3. count parameters, read the training time from the checkpoint's epoch history (the rows of
   ``train_log.csv``), and time inference (frames per second, model forward only).

Negative audio modes (``silent``, ``noise``, ``offscreen``) add their false-positive rate (``fpr_<mode>``)
and the run's ``pn_hmean`` (:mod:`avseg.evaluation.robust`) to the tables.

Outputs in ``<out>``: ``results.md`` (Markdown table), ``results.csv`` (every number), ``results.png``
(bar chart of mIoU and F per audio mode) and ``<run>/compare.json`` per config.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig

from avseg.config import config_to_dict, load_config
from avseg.errors import AvsegError, CheckpointError, ConfigError
from avseg.evaluation.audio_modes import parse_audio_modes
from avseg.evaluation.robust import NEGATIVE_MODES, robust_section
from avseg.models import registry

RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
RESULTS_PNG = "results.png"
RUN_SUMMARY = "compare.json"
METRIC_KEYS = ("miou", "fscore", "miou_batch_independent", "fscore_batch_independent", "miou_real_frames", "fscore_real_frames")
#: The second pair of columns beside the official numbers: binary AVSBench results carry the
#: batch-independent variant, AVSS results the variant that skips padded frames.
SECOND_VARIANTS = (("miou_batch_independent", "fscore_batch_independent", "batch-indep."),
                   ("miou_real_frames", "fscore_real_frames", "real frames"))
# Keys that do not change what a run learns: a finished run is reused even when they differ.
# ``train.epochs`` may grow: a run with fewer epochs is continued from its last.pth.
IGNORED_KEYS = ("name", "output_dir", "device", "data.num_workers", "train.progress", "train.tensorboard",
                "train.log_every", "train.epochs", "eval")


@dataclass
class CompareRow:
    """The numbers of one config: metrics per audio mode (``metrics[mode][key]``) and its costs."""

    name: str
    config: str
    task: str
    split: str
    checkpoint: str
    epoch: int
    epochs: int
    steps: int
    params: int
    trainable_params: int
    train_time_s: float
    train_wall_s: float
    fps: float
    fps_device: str
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    robust: Dict[str, Any] = field(default_factory=dict)  # robust_summary of the negative modes ({} without)


# ----------------------------------------------------------------------------- configs and runs
def load_configs(paths: Sequence[str], overrides: Sequence[str]) -> List[Tuple[str, DictConfig]]:
    """Every config with the shared overrides, checked before anything runs; names must be unique."""
    if not paths:
        raise ConfigError("--cfgs: give at least one config file")
    loaded: List[Tuple[str, DictConfig]] = []
    seen: Dict[str, str] = {}
    for path in paths:
        cfg = load_config(path, overrides)
        if cfg.name in seen:
            raise ConfigError(
                f"--cfgs: {path} and {seen[cfg.name]} both have the name '{cfg.name}' (the run folder); "
                "give one of them its own 'name:' key"
            )
        if registry.get(cfg.model.name).task != "avs":
            raise ConfigError(f"{path}: compare evaluates AVS models ({', '.join(registry.names('avs'))}), "
                              f"not model.name '{cfg.model.name}'")
        seen[cfg.name] = path
        loaded.append((path, cfg))
    return loaded


def _flatten(data: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(wanted: DictConfig, stored: DictConfig) -> List[str]:
    """``key: stored -> wanted`` for every key that changes what is trained (see ``IGNORED_KEYS``)."""
    a, b = _flatten(config_to_dict(wanted)), _flatten(config_to_dict(stored))

    def kept(key: str) -> bool:
        return not any(key == ignored or key.startswith(ignored + ".") for ignored in IGNORED_KEYS)

    return [f"{key}: {b.get(key)!r} -> {a.get(key)!r}" for key in sorted(set(a) | set(b)) if kept(key) and a.get(key) != b.get(key)]


def run_state(run_dir: Path, cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """The run's ``last.pth`` payload, or None when there is none; a run of another config is an error."""
    from avseg.checkpoint import read_checkpoint
    from avseg.engine.hooks import LAST_NAME

    last = run_dir / LAST_NAME
    if not last.is_file():
        return None
    payload = read_checkpoint(last)
    differences = config_differences(cfg, payload["config"])
    if differences:
        raise ConfigError(
            f"{run_dir} holds a run of another config ({'; '.join(differences[:8])}); "
            "use another --out, or delete that folder to train it again"
        )
    return payload


def needs_training(cfg: DictConfig, run_dir: Path, train: bool) -> Optional[str]:
    """None for a finished run (reused as it is), else the ``last.pth`` to resume from or "" for a new run.

    Without ``train`` an unfinished or missing run is an error.
    """
    from avseg.engine.run_setup import get_logger
    from avseg.engine.hooks import LAST_NAME

    payload = run_state(run_dir, cfg)
    if payload is not None and int(payload["epoch"]) > cfg.train.epochs:
        raise ConfigError(
            f"{run_dir} holds a run of {payload['epoch']} epochs, more than train.epochs={cfg.train.epochs}; "
            "use another --out, or delete that folder to train it again"
        )
    if payload is not None and int(payload["epoch"]) == cfg.train.epochs:
        get_logger().info(f"{cfg.name}: reusing the finished run in {run_dir} ({payload['epoch']} epochs)")
        return None
    if not train:
        where = "no last.pth" if payload is None else f"last.pth at epoch {payload['epoch']} of {cfg.train.epochs}"
        raise CheckpointError(f"{run_dir}: no finished run of '{cfg.name}' ({where}); pass --train to train it")
    return str(run_dir / LAST_NAME) if payload is not None else ""


def train_in_process(cfg: DictConfig, run_dir: Path, resume: str) -> None:
    from avseg.engine.run_setup import get_logger
    from avseg.engine.trainer import train as train_run

    get_logger().info(f"{cfg.name}: {'resuming' if resume else 'training'} in {run_dir}")
    train_run(cfg.copy(), out=str(run_dir), resume=resume or None)


def train_in_subprocesses(
    jobs: Sequence[Tuple[str, DictConfig, Path, str]], overrides: Sequence[str], workers: int, threads: Optional[int]
) -> None:
    """Run ``tools/train.py`` for each ``(config path, cfg, run dir, resume)``, ``workers`` at a time.

    Each child trains ``--cfg PATH --out RUN --resume`` with the shared overrides (the config the
    parent checked) and ``OMP_NUM_THREADS=threads``; its console output goes to ``RUN/train_console.txt``.
    """
    import subprocess

    from avseg.engine.run_setup import get_logger

    logger = get_logger()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    queue, running, failed = list(jobs), [], []
    while queue or running:
        while queue and len(running) < workers:
            path, cfg, run_dir, resume = queue.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-c", "from avseg.cli.train import entry; entry()",
                       "--cfg", str(path), "--out", str(run_dir), "--resume", *overrides]
            logger.info(f"{cfg.name}: {'resuming' if resume else 'training'} in {run_dir} (subprocess)")
            console = open(run_dir / "train_console.txt", "a", encoding="utf-8")
            try:
                process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=env)
            except OSError:
                console.close()
                raise
            running.append((cfg.name, run_dir, console, process))
        time.sleep(1.0)
        for item in list(running):
            name, run_dir, console, process = item
            if process.poll() is not None:
                console.close()
                running.remove(item)
                logger.info(f"{name}: training process finished with status {process.returncode}")
                if process.returncode != 0:
                    failed.append(f"{name} (status {process.returncode}, see {run_dir / 'train_console.txt'})")
    if failed:
        raise AvsegError(f"training failed: {'; '.join(failed)}")


# ----------------------------------------------------------------------------- evaluation
def evaluate_run(
    config_path: str, cfg: DictConfig, run_dir: Path, payload: Dict[str, Any], audio_modes: Sequence[str], split: str, fps_batches: int
) -> CompareRow:
    """Evaluate the run's best (else last) checkpoint with every audio mode; write ``eval_<split>/metrics.json``."""
    import torch

    from avseg.data import build_dataset
    from avseg.engine.distributed import DistContext
    from avseg.engine.run_setup import get_logger, select_device
    from avseg.data.loaders import build_eval_loader
    from avseg.engine.hooks import BEST_NAME, LAST_NAME
    from avseg.evaluation import evaluate_audio_modes, write_metrics_json
    from avseg.evaluation.timing import count_parameters, measure_fps
    from avseg.models import load_model

    logger = get_logger()
    device = select_device(cfg.device)
    ctx = DistContext(device=device)
    checkpoint = run_dir / BEST_NAME if (run_dir / BEST_NAME).is_file() else run_dir / LAST_NAME
    model = load_model(checkpoint, device)
    evaluated_epoch = int(payload["best_epoch"]) if checkpoint.name == BEST_NAME and payload.get("best_epoch") else int(payload["epoch"])
    eval_cfg = cfg.copy()
    eval_cfg.eval.split = split
    eval_dir = run_dir / f"eval_{split}"
    meta = {"name": cfg.name, "dataset": cfg.data.name, "task": cfg.data.task, "split": split,
            "data_root": cfg.data.root, "checkpoint": str(checkpoint)}
    logger.info(f"{cfg.name}: evaluating {checkpoint}")
    results = evaluate_audio_modes(model, eval_cfg, split, audio_modes, ctx, eval_dir, meta)
    eval_cfg.eval.audio = "normal"
    fps = measure_fps(model, build_eval_loader(build_dataset(eval_cfg, split, train=False), eval_cfg.eval.batch_size, eval_cfg, ctx),
                      device, fps_batches)
    robust = robust_section(results)
    write_metrics_json(eval_dir / "metrics.json", results, {**meta, "batch_clips": eval_cfg.eval.batch_size, **robust})
    params, trainable = count_parameters(model)
    history = list(payload.get("history") or [])
    return CompareRow(
        name=cfg.name,
        config=str(config_path),
        task=str(cfg.data.task),
        split=split,
        checkpoint=str(checkpoint),
        epoch=evaluated_epoch,
        epochs=int(payload["epoch"]),
        steps=int(payload["step"]),
        params=params,
        trainable_params=trainable,
        train_time_s=sum(float(row.get("time_train_s", 0.0)) for row in history),
        train_wall_s=sum(float(row.get("time_epoch_s", 0.0)) for row in history),
        fps=fps,
        fps_device=f"{device.type}, {torch.get_num_threads()} threads",
        metrics={result.audio: {key: float(result.metrics[key]) for key in METRIC_KEYS + ("fpr",) if key in result.metrics}
                 for result in results},
        robust=robust.get("robust", {}),
    )


# ----------------------------------------------------------------------------- outputs
RUN_COLUMNS = ["name", "config", "task", "split", "checkpoint", "epoch", "epochs", "steps", "params",
               "trainable_params", "train_time_s", "train_wall_s", "fps", "fps_device"]


def _negative(audio_modes: Sequence[str]) -> List[str]:
    return [mode for mode in audio_modes if mode in NEGATIVE_MODES]


def csv_columns(audio_modes: Sequence[str]) -> List[str]:
    """The run columns, ``<metric>_<mode>`` per mode, then ``fpr_<mode>`` per negative mode and ``pn_hmean``."""
    negative = _negative(audio_modes)
    return (RUN_COLUMNS + [f"{key}_{mode}" for mode in audio_modes for key in METRIC_KEYS]
            + [f"fpr_{mode}" for mode in negative] + (["pn_hmean"] if negative else []))


def _number(value: float, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def results_csv(rows: Sequence[CompareRow], audio_modes: Sequence[str]) -> str:
    """One line per config; metrics as ``<metric>_<audio mode>`` columns at full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = csv_columns(audio_modes)
    writer.writerow(columns)
    for row in rows:
        record = asdict(row)
        values = [record[column] for column in RUN_COLUMNS]
        values += [row.metrics[mode].get(key) for mode in audio_modes for key in METRIC_KEYS]
        values += [row.metrics[mode]["fpr"] for mode in _negative(audio_modes)]
        values += [row.robust["pn_hmean"]] if _negative(audio_modes) else []
        writer.writerow([repr(v) if isinstance(v, float) else v for v in values])
    return buffer.getvalue()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _second_variant(rows: Sequence[CompareRow]) -> Tuple[str, str, str]:
    """The (mIoU key, F key, label) of the variant the first row's normal-audio metrics carry."""
    for miou_key, fscore_key, label in SECOND_VARIANTS:
        if rows and miou_key in rows[0].metrics["normal"]:
            return miou_key, fscore_key, label
    return SECOND_VARIANTS[0]


def results_table(rows: Sequence[CompareRow], audio_modes: Sequence[str]) -> str:
    """The Markdown table: official and batch-independent mIoU/F, counterfactual mIoU (and FPR for the
    negative modes, then pn_hmean), costs."""
    counterfactual = [mode for mode in audio_modes if mode != "normal"]
    negative = _negative(audio_modes)
    miou_key, fscore_key, label = _second_variant(rows)
    header = ["config", "mIoU (official)", "F (official)", f"mIoU ({label})", f"F ({label})"]
    for mode in counterfactual:
        header += [f"mIoU {mode} audio", f"Δ mIoU {mode}"] + ([f"FPR {mode}"] if mode in negative else [])
    header += (["pn_hmean"] if negative else []) + ["params (M)", "train time", "inference fps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        normal = row.metrics["normal"]
        cells = [f"`{row.name}`", _number(normal["miou"]), _number(normal["fscore"]),
                 _number(normal.get(miou_key)), _number(normal.get(fscore_key))]
        for mode in counterfactual:
            miou = row.metrics[mode]["miou"]
            cells += [_number(miou), f"{miou - normal['miou']:+.4f}"] + ([_number(row.metrics[mode]["fpr"])] if mode in negative else [])
        cells += ([_number(row.robust["pn_hmean"])] if negative else [])
        cells += [f"{row.params / 1e6:.2f}", _duration(row.train_wall_s), _number(row.fps, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(rows: Sequence[CompareRow], audio_modes: Sequence[str], command: str, batch_clips: int) -> str:
    split = rows[0].split if rows else "test"
    details = [
        f"| `{row.name}` | `{row.config}` | {row.task} | `{Path(row.checkpoint).name}` (epoch {row.epoch} of {row.epochs}, "
        f"{row.steps} steps) | {row.trainable_params / 1e6:.2f} | {_duration(row.train_time_s)} | {row.fps_device} |"
        for row in rows
    ]
    return "\n".join(
        [
            "# avseg comparison",
            "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} on {platform.node() or 'this machine'} "
            f"({platform.machine()}, {os.cpu_count()} CPUs visible, {platform.system()}) by:",
            "",
            "```",
            command,
            "```",
            "",
            f"Split `{split}`. mIoU and F are the AVSBench metrics: *official* takes the F maximum (and the mIoU mean) "
            f"per test batch of {batch_clips} clips in dataset order, as the released test scripts do; "
            "*batch-indep.* averages mIoU over all scored frames and takes F from the curve of all frames. "
            "AVSS rows (71 classes) give the official `avss/test.py` numbers (means over all 71 classes, never-seen "
            "classes counting 0, padded frames scored) and *real frames* (padded frames skipped). "
            "Counterfactual columns evaluate the same checkpoint with each clip's sound replaced: `shuffle` gives "
            "every clip another clip's log-mel (fixed derangement, `eval.shuffle_seed`), `silent` the log-mel of "
            "silence, `noise` seeded white noise at −20 dBFS and `offscreen` the sound of a clip of another category group "
            "(all through the positives' log-mel front end); Δ is the change from normal audio (official mIoU, against "
            "the original masks). A model that uses the sound drops there; a visual-only model does not change. "
            "Under negative audio (silent, noise, offscreen) the right answer is an empty mask: FPR is the mean over "
            "frames of the fraction of pixels predicted sounding, and pn_hmean the harmonic mean of the normal-audio "
            "mIoU and 1 − (mean FPR over the negative modes); see docs/evaluation.md. Train time includes the per-epoch validation; inference fps "
            "times the model's forward pass only (data in memory), and is noisy on a shared machine.",
            "",
            results_table(rows, audio_modes),
            "",
            "| config | file | task | evaluated checkpoint | trainable params (M) | time in optimiser steps | fps measured on |",
            "|---|---|---|---|---|---|---|",
            *details,
            "",
            f"Every number is in `{RESULTS_CSV}`; per-run details in `<name>/eval_{split}/metrics.json` and `<name>/{RUN_SUMMARY}`.",
            "",
        ]
    )


def results_chart(rows: Sequence[CompareRow], audio_modes: Sequence[str], path: Path) -> Path:
    """Grouped bars of official mIoU and F per config, one bar per audio mode (Agg backend, atomic write)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from avseg.fileio import atomic_path

    figure = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2.0) * 2, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    positions = np.arange(len(rows))
    width = 0.8 / len(audio_modes)
    for panel, (key, title) in enumerate((("miou", "mIoU (official)"), ("fscore", "F (official)")), start=1):
        axes = figure.add_subplot(1, 2, panel)
        for index, mode in enumerate(audio_modes):
            values = [row.metrics[mode][key] for row in rows]
            bars = axes.bar(positions + (index - (len(audio_modes) - 1) / 2) * width, values, width, label=f"{mode} audio")
            axes.bar_label(bars, fmt="%.2f", fontsize=7)
        axes.set_xticks(positions)
        axes.set_xticklabels([row.name for row in rows], rotation=20, ha="right", fontsize=8)
        axes.set_ylim(0, 1.05)
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return path


def write_outputs(rows: Sequence[CompareRow], audio_modes: Sequence[str], out: Path, command: str, batch_clips: int) -> None:
    from avseg.fileio import atomic_write_text

    atomic_write_text(out / RESULTS_MD, results_markdown(rows, audio_modes, command, batch_clips))
    atomic_write_text(out / RESULTS_CSV, results_csv(rows, audio_modes))
    results_chart(rows, audio_modes, out / RESULTS_PNG)


# ----------------------------------------------------------------------------- orchestration
def compare(
    cfg_paths: Sequence[str],
    out: str,
    overrides: Sequence[str] = (),
    train: bool = False,
    audio: str = "normal,shuffle",
    split: Optional[str] = None,
    fps_batches: int = 4,
    threads: Optional[int] = None,
    jobs: int = 1,
    command: Optional[str] = None,
) -> List[CompareRow]:
    """Train/reuse, evaluate and tabulate every config; returns the rows written to ``out``.

    ``threads`` sets torch's CPU threads (restored afterwards; training subprocesses get
    ``OMP_NUM_THREADS``). On a CPU shared with other jobs one thread per process can be several times
    faster than two. ``jobs`` > 1 trains that many configs at once, each in a ``tools/train.py``
    subprocess; with 1 they train one after the other in this process.
    """
    import torch

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: must be at least 1, got {threads}")
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    audio_modes = parse_audio_modes(audio, "--audio", normal_first=True)
    configs = load_configs(cfg_paths, overrides)
    if command is None:
        options = (["--train"] if train else []) + ["--audio", ",".join(audio_modes)] + (["--split", split] if split else [])
        options += (["--threads", str(threads)] if threads else []) + (["--jobs", str(jobs)] if jobs > 1 else [])
        parts = ["python", "tools/compare.py", "--cfgs", *cfg_paths, *options, "--out", str(out), *overrides]
        command = " ".join(shlex.quote(part) for part in parts)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _compare(configs, Path(out), list(overrides), train, audio_modes, split, fps_batches, threads, jobs, command)
    finally:
        torch.set_num_threads(previous_threads)


def _compare(
    configs: Sequence[Tuple[str, DictConfig]],
    out_dir: Path,
    overrides: List[str],
    train: bool,
    audio_modes: Sequence[str],
    split: Optional[str],
    fps_batches: int,
    threads: Optional[int],
    jobs: int,
    command: str,
) -> List[CompareRow]:
    from avseg.engine.run_setup import get_logger, setup_logging
    from avseg.fileio import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir)
    # Every run is checked (config, finished or not) before any training starts.
    pending = []
    for path, cfg in configs:
        resume = needs_training(cfg, out_dir / cfg.name, train)
        if resume is not None:
            pending.append((path, cfg, out_dir / cfg.name, resume))
    if jobs > 1 and len(pending) > 1:
        train_in_subprocesses(pending, overrides, jobs, threads)
    else:
        for path, cfg, run_dir, resume in pending:
            train_in_process(cfg, run_dir, resume)
            setup_logging(out_dir)  # training redirected the log to the run folder
    rows: List[CompareRow] = []
    for path, cfg in configs:
        run_dir = out_dir / cfg.name
        payload = run_state(run_dir, cfg)
        if payload is None or int(payload["epoch"]) < cfg.train.epochs:
            raise CheckpointError(f"{run_dir}: training ended before epoch {cfg.train.epochs} (see {run_dir / 'log.txt'})")
        row = evaluate_run(path, cfg, run_dir, payload, audio_modes, split or cfg.eval.split, fps_batches)
        atomic_write_text(run_dir / RUN_SUMMARY, json.dumps(asdict(row), indent=2) + "\n")
        rows.append(row)
    write_outputs(rows, audio_modes, out_dir, command, configs[0][1].eval.batch_size)
    get_logger().info(f"wrote {out_dir / RESULTS_MD}, {RESULTS_CSV}, {RESULTS_PNG}\n{results_table(rows, audio_modes)}")
    return rows
