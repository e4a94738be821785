"""The training loop: thin by design. Models own their losses; the trainer moves batches, steps and records.

A model's ``forward(**{k: batch[k] for k in model.batch_keys})`` returns a dict with ``loss`` and
named scalar loss terms (plus outputs such as ``logits``, which the trainer ignores). The trainer runs
AMP, backward, gradient clipping, the optimiser and LR schedule, validation through the evaluator,
checkpoints (``last.pth`` every epoch, ``best.pth`` on the evaluator's primary metric) and the logs.

Entry point: :func:`train` (used by ``tools/train.py``); :class:`Trainer` is the loop itself.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from avseg.checkpoint import read_checkpoint, save_checkpoint
from avseg.engine.checkpointing import (
    capture_rng_state,
    check_resume_compatible,
    init_from_checkpoint,
    restore_rng_state,
)
from avseg.engine.distributed import (
    ContiguousShardSampler,
    DistContext,
    EpochShuffleSampler,
    all_gather_objects,
    all_reduce_sum,
    broadcast_buffers,
    broadcast_object,
    epoch_seed,
    init_distributed,
    shutdown_distributed,
    unwrap_model,
)
from avseg.engine.training_log import TrainingLogger
from avseg.engine.run_setup import CPU_ALLOCATOR_MODES, get_logger, make_run_dir, seed_everything, setup_logging, tune_cpu_allocator
from avseg.errors import AvsegError, CheckpointError, ConfigError
from avseg.weights import load_into

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("none", "step", "cosine")
AMP_MODES = ("auto", "off", "bf16", "fp16")
LAST_NAME = "last.pth"
BEST_NAME = "best.pth"


class NonFiniteLossError(AvsegError):
    """The loss became NaN or infinite; the message names the step and every loss term."""


# ----------------------------------------------------------------------------- building blocks
def _choice(value: str, choices: tuple, key: str) -> str:
    if value not in choices:
        raise ConfigError(f"key '{key}': '{value}' is not one of {', '.join(choices)}")
    return value


def check_train_config(train_cfg: DictConfig) -> None:
    """Fail fast (before any dataset or model is built) on a bad ``train.*`` choice or value."""
    _choice(train_cfg.optimizer, OPTIMIZERS, "train.optimizer")
    _choice(train_cfg.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
    _choice(train_cfg.amp, AMP_MODES, "train.amp")
    _choice(train_cfg.cpu_allocator, CPU_ALLOCATOR_MODES, "train.cpu_allocator")
    for key in ("epochs", "batch_size"):
        if train_cfg[key] < 1:
            raise ConfigError(f"key 'train.{key}': must be at least 1, got {train_cfg[key]}")
    for key in ("lr", "weight_decay", "grad_clip", "warmup_epochs", "val_every", "max_steps_per_epoch", "min_lr"):
        if train_cfg[key] < 0:
            raise ConfigError(f"key 'train.{key}': must not be negative, got {train_cfg[key]}")


def build_optimizer(model: nn.Module, train_cfg: DictConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the parameters that require gradients."""
    name = _choice(train_cfg.optimizer, OPTIMIZERS, "train.optimizer")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (every parameter has requires_grad=False)")
    if name == "adam":
        return torch.optim.Adam(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    return torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)


def lr_factor(train_cfg: DictConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of ``train.lr`` after ``step`` optimiser steps (warm-up, then the schedule)."""
    schedule = _choice(train_cfg.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
    warmup_steps = train_cfg.warmup_epochs * steps_per_epoch
    total_steps = train_cfg.epochs * steps_per_epoch
    min_ratio = train_cfg.min_lr / train_cfg.lr if train_cfg.lr > 0 else 0.0
    if schedule == "step" and train_cfg.lr_step < 1:
        raise ConfigError(f"key 'train.lr_step': must be at least 1 epoch, got {train_cfg.lr_step}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "step":
            return train_cfg.lr_gamma ** ((step // steps_per_epoch) // train_cfg.lr_step)
        if schedule == "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``train.amp`` on ``device``, or None for float32.

    ``auto``: bf16 where the GPU supports it, else fp16 (with a GradScaler); float32 on CPU. On CPU only an
    explicit ``bf16`` autocasts (oneDNN's bf16 convolutions are faster on CPUs with AVX-512 BF16 or AMX).
    """
    _choice(mode, AMP_MODES, "train.amp")
    if device.type != "cuda":
        if device.type == "cpu" and mode == "bf16":
            return torch.bfloat16
        if mode == "fp16":
            get_logger().warning(f"train.amp=fp16 applies to CUDA only; training in float32 on {device}")
        return None
    if mode == "off":
        return None
    if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    if not torch.cuda.is_bf16_supported():
        raise ConfigError(f"key 'train.amp': bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or auto")
    return torch.bfloat16


def loss_terms(outputs: Any) -> Dict[str, torch.Tensor]:
    """The scalar entries of a model's output dict, ``loss`` first."""
    if not isinstance(outputs, Mapping) or "loss" not in outputs:
        raise TypeError("a model's training forward must return a dict with a 'loss' entry and named loss terms")
    terms = {"loss": outputs["loss"]}
    for name, value in outputs.items():
        if name != "loss" and torch.is_tensor(value) and value.ndim == 0:
            terms[name] = value
    return terms


def move_batch(batch: Mapping[str, Any], keys: tuple, device: torch.device) -> Dict[str, Any]:
    """``{k: batch[k]}`` for the model's ``batch_keys``, tensors moved to ``device``, other values as they are."""
    missing = [key for key in keys if key not in batch]
    if missing:
        raise ConfigError(
            f"the dataset's items have no {', '.join(repr(k) for k in missing)} entry, which the model needs "
            f"(model batch_keys {tuple(keys)}, dataset keys {tuple(batch)}); do model.name and data.name match?"
        )
    return {key: batch[key].to(device, non_blocking=True) if torch.is_tensor(batch[key]) else batch[key] for key in keys}


@dataclass
class TrainResult:
    """What a finished :func:`train` call produced."""

    run_dir: Path
    epochs: int
    steps: int
    metric: Optional[str]
    best_metric: Optional[float]
    best_epoch: Optional[int]
    last_checkpoint: Path
    best_checkpoint: Optional[Path]
    history: List[Dict[str, Any]]


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """Epochs of optimiser steps with validation, checkpoints and logs; see the module docstring.

    ``model`` is the bare model (the trainer moves it to ``ctx.device`` and wraps it in DDP when the
    world is larger than one). ``train_loader`` must use an :class:`EpochShuffleSampler` and a
    ``torch.Generator`` (its ``generator``) so that the data order is a function of (seed, epoch).
    ``evaluator`` follows the avseg evaluator protocol (``evaluate``, ``primary_metric``,
    ``higher_is_better``); it may be None when ``train.val_every`` is 0.
    """

    def __init__(
        self,
        cfg: DictConfig,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: Optional[DataLoader],
        evaluator: Any,
        run_dir: Path,
        ctx: DistContext = DistContext(),
    ):
        self.cfg = cfg
        self.tcfg = cfg.train
        self.ctx = ctx
        self.device = ctx.device
        self.run_dir = Path(run_dir)
        self.logger = get_logger()
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.evaluator = evaluator
        self.batch_keys = tuple(getattr(model, "batch_keys", ()))
        if not self.batch_keys:
            raise TypeError(f"{type(model).__name__} has no 'batch_keys' attribute naming its forward inputs")

        model.to(self.device)
        if ctx.enabled and self.tcfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.optimizer = build_optimizer(model, self.tcfg)
        self.steps_per_epoch = len(train_loader)
        if self.tcfg.max_steps_per_epoch > 0:
            self.steps_per_epoch = min(self.steps_per_epoch, self.tcfg.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ConfigError("the training split gives no batch (empty dataset?)")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(self.tcfg, self.steps_per_epoch))
        self.amp_dtype = resolve_amp(self.tcfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if ctx.enabled:
            find_unused = bool(self.tcfg.find_unused_parameters or getattr(model, "find_unused_parameters", False))
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)
        self.model = model

        self.epoch = 0
        self.step = 0
        self.best_metric: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.history: List[Dict[str, Any]] = []
        self.resumed = False
        self.log: Optional[TrainingLogger] = None

    # ------------------------------------------------------------------ state
    @property
    def bare_model(self) -> nn.Module:
        return unwrap_model(self.model)

    def init_from(self, path: str) -> None:
        """Non-strict initialisation from another checkpoint, with a key report in the log."""
        report = init_from_checkpoint(self.bare_model, path)
        self.logger.info(
            f"initialised from {path} (missing tensors keep their initial values; unexpected and "
            f"shape-mismatched ones are ignored):\n{report.describe()}"
        )

    def resume(self, path: str) -> None:
        """Restore model, optimiser, scheduler, scaler, counters, best metric, history and RNG states."""
        payload = read_checkpoint(path)
        check_resume_compatible(payload, self.cfg.model.name, str(path))
        load_into(self.bare_model, payload["model"], path)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: the optimiser state does not fit this model/optimizer ({exc})") from None
        if payload.get("scheduler"):
            self.scheduler.load_state_dict(payload["scheduler"])
        if payload.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        self.epoch = int(payload["epoch"])
        self.step = int(payload["step"])
        self.best_metric = payload.get("best_metric")
        self.best_epoch = payload.get("best_epoch")
        self.history = list(payload.get("history") or [])
        rng_states = payload["rng"]
        if len(rng_states) == self.ctx.world_size:
            restore_rng_state(rng_states[self.ctx.rank], self.device)
        else:
            self.logger.warning(
                f"{path} was written by {len(rng_states)} process(es), this run has {self.ctx.world_size}: "
                "random states are re-seeded from (seed, epoch, rank), so the run will not repeat bit for bit"
            )
            seed_everything(epoch_seed(self.cfg.seed + self.ctx.rank, self.epoch) % 2**32, self.cfg.deterministic)
        self.resumed = True
        self.logger.info(f"resumed from {path}: {self.epoch} epoch(s), {self.step} step(s) done")

    def _save(self, path: Path, training_state: bool) -> None:
        """Write a checkpoint (rank 0). ``training_state`` adds everything --resume needs."""
        extra: Dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "metric": getattr(self.evaluator, "primary_metric", None),
        }
        if training_state:
            rng_states = all_gather_objects(capture_rng_state(self.device))
            extra.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rng_states,
                history=self.history,
                world_size=self.ctx.world_size,
            )
        if self.ctx.is_main:
            save_checkpoint(path, self.bare_model.state_dict(), self.cfg, **extra)

    # ------------------------------------------------------------------ steps
    def _check_finite(self, terms: Dict[str, torch.Tensor], epoch: int, index: int) -> List[float]:
        """Average the terms over ranks (one small all-reduce); stop every rank on a non-finite value.

        Returns the rank-averaged values of ``terms`` in order.
        """
        local = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        local_bad = ~torch.isfinite(local).all()
        packed = torch.cat([local, local_bad.float().reshape(1)])
        values = all_reduce_sum(packed).tolist()
        if values[-1] > 0 or not all(math.isfinite(v) for v in values[:-1]):
            described = ", ".join(f"{name}={value:.6g}" for name, value in zip(terms, local.tolist()))
            where = f" on rank {self.ctx.rank}" if self.ctx.enabled else ""
            if self.ctx.enabled and not bool(local_bad):
                where = f" on another rank (rank {self.ctx.rank}'s terms are finite)"
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step + 1} (epoch {epoch}, batch {index + 1}/{self.steps_per_epoch})"
                f"{where}: {described}. Try a lower train.lr, train.grad_clip > 0, or train.amp=off"
            )
        return [value / self.ctx.world_size for value in values[:-1]]

    def train_step(self, batch: Mapping[str, Any], epoch: int, index: int) -> Dict[str, float]:
        """One optimiser step on one batch; returns the rank-averaged loss terms."""
        inputs = move_batch(batch, self.batch_keys, self.device)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with autocast:
            outputs = self.model(**inputs)
        terms = loss_terms(outputs)
        averaged = dict(zip(terms, self._check_finite(terms, epoch, index)))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.tcfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            averaged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.tcfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return averaged

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        """Run ``steps_per_epoch`` steps of epoch ``epoch`` (1-based); returns the epoch mean of each term."""
        self.model.train()
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.train_loader.generator is not None:
            self.train_loader.generator.manual_seed(epoch_seed(self.cfg.seed + self.ctx.rank, epoch))
        sums: Dict[str, float] = {}
        bar = self.log.progress(self.steps_per_epoch, f"epoch {epoch}/{self.tcfg.epochs}")
        try:
            for index, batch in enumerate(self.train_loader):
                if index >= self.steps_per_epoch:
                    break
                lr = self.scheduler.get_last_lr()[0]
                terms = self.train_step(batch, epoch, index)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] / (index + 1):.4f}", lr=f"{lr:.2e}")
                if self.tcfg.log_every > 0 and self.step % self.tcfg.log_every == 0:
                    self.log.log_step(self.step, terms, lr)
        finally:
            bar.close()
        return {name: total / self.steps_per_epoch for name, total in sums.items()}

    def validate(self) -> Dict[str, float]:
        """The evaluator's metrics for the bare model (all ranks evaluate their shard; rank 0's dict wins)."""
        broadcast_buffers(self.bare_model)  # every rank scores the weights and statistics rank 0 saves
        metrics = self.evaluator.evaluate(self.bare_model, self.val_loader, self.device)
        metrics = broadcast_object({name: float(value) for name, value in metrics.items()})
        name = self.evaluator.primary_metric
        if name not in metrics:
            raise KeyError(f"the evaluator returned no '{name}' (its primary metric); it returned {sorted(metrics)}")
        return metrics

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_metric is None:
            return True
        return value > self.best_metric if self.evaluator.higher_is_better else value < self.best_metric

    def _should_validate(self, epoch: int) -> bool:
        every = self.tcfg.val_every
        return self.evaluator is not None and every > 0 and (epoch % every == 0 or epoch == self.tcfg.epochs)

    # ------------------------------------------------------------------ epochs
    def fit(self) -> TrainResult:
        """Train from the current epoch to ``train.epochs``; returns the run's summary."""
        self.log = TrainingLogger(
            self.run_dir,
            enabled=self.ctx.is_main,
            history=self.history,
            tensorboard=self.tcfg.tensorboard,
            progress=self.tcfg.progress,
            purge_step=self.step if self.resumed else None,
        )
        metric_name = getattr(self.evaluator, "primary_metric", None)
        epoch_times: List[float] = []
        try:
            if self.epoch == 0:
                trainable = sum(p.numel() for p in self.bare_model.parameters() if p.requires_grad)
                self.logger.info(
                    f"training {type(self.bare_model).__name__} ({trainable / 1e6:.2f} M trainable parameters) on "
                    f"{self.ctx.world_size} process(es), {self.device}, amp {self.amp_dtype or 'off'}: "
                    f"{self.tcfg.epochs} epochs x {self.steps_per_epoch} steps"
                )
            for epoch in range(self.epoch + 1, self.tcfg.epochs + 1):
                start = time.perf_counter()
                lr = self.scheduler.get_last_lr()[0]
                means = self.train_one_epoch(epoch)
                train_time = time.perf_counter() - start
                metrics: Dict[str, float] = {}
                improved = False
                if self._should_validate(epoch):
                    metrics = self.validate()
                    improved = self._improved(metrics[metric_name])
                val_time = time.perf_counter() - start - train_time
                self.epoch = epoch
                if improved:
                    self.best_metric, self.best_epoch = metrics[metric_name], epoch
                row: Dict[str, Any] = {"epoch": epoch, "step": self.step, "lr": lr}
                row.update({f"train_{name}": value for name, value in means.items()})
                row.update({f"val_{name}": value for name, value in metrics.items()})
                row.update(time_train_s=train_time, time_val_s=val_time, time_epoch_s=time.perf_counter() - start)
                self.history.append(row)
                self.log.log_epoch(row)
                if improved:
                    self._save(self.run_dir / BEST_NAME, training_state=False)
                self._save(self.run_dir / LAST_NAME, training_state=True)
                epoch_times.append(time.perf_counter() - start)
                self._log_epoch_line(row, metrics, metric_name, epoch_times)
            self.log.write_curves()
        finally:
            self.log.close()
        best_path = self.run_dir / BEST_NAME if self.best_epoch is not None else None
        if self.ctx.is_main:
            best = f", best {metric_name} {self.best_metric:.4f} at epoch {self.best_epoch}" if best_path else ""
            self.logger.info(f"done: {self.epoch} epochs, {self.step} steps{best}; outputs in {self.run_dir}")
        return TrainResult(
            run_dir=self.run_dir,
            epochs=self.epoch,
            steps=self.step,
            metric=metric_name,
            best_metric=self.best_metric,
            best_epoch=self.best_epoch,
            last_checkpoint=self.run_dir / LAST_NAME,
            best_checkpoint=best_path,
            history=list(self.history),
        )

    def _log_epoch_line(self, row: Mapping[str, Any], metrics: Mapping[str, float], metric_name: Optional[str], times: List[float]) -> None:
        terms = " ".join(f"{key[6:]} {value:.4f}" for key, value in row.items() if key.startswith("train_"))
        parts = [f"epoch {row['epoch']}/{self.tcfg.epochs}", terms, f"lr {row['lr']:.3e}"]
        if metrics:
            shown = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            parts.append(f"val {shown} (best {metric_name} {self.best_metric:.4f} at epoch {self.best_epoch})")
        remaining = (self.tcfg.epochs - row["epoch"]) * sum(times) / len(times)
        parts.append(
            f"{row['time_epoch_s']:.1f} s (train {row['time_train_s']:.1f}, val {row['time_val_s']:.1f})"
            f", ETA {time.strftime('%H:%M:%S', time.gmtime(remaining))}"
        )
        self.logger.info(" | ".join(parts))


# ----------------------------------------------------------------------------- orchestration
def build_train_loader(dataset: Dataset, cfg: DictConfig, ctx: DistContext) -> DataLoader:
    """Shuffled per (seed, epoch), sharded over ranks, worker seeds drawn from a per-epoch generator."""
    sampler = EpochShuffleSampler(len(dataset), seed=cfg.seed, world_size=ctx.world_size, rank=ctx.rank)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator(),
    )


def build_eval_loader(dataset: Dataset, batch_size: int, cfg: DictConfig, ctx: DistContext) -> DataLoader:
    """In dataset order; under DDP each rank gets a contiguous run of whole batches (no padding)."""
    sampler = ContiguousShardSampler(len(dataset), batch_size, world_size=ctx.world_size, rank=ctx.rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=ctx.device.type == "cuda",
    )


def _check_path(path: Optional[str], what: str) -> None:
    if path and not Path(path).is_file():
        raise CheckpointError(f"{what}: checkpoint not found: {path}")


def train(
    cfg: DictConfig,
    out: Optional[str] = None,
    resume: Optional[str] = None,
    *,
    build_dataset: Optional[Callable[..., Dataset]] = None,
    build_model: Optional[Callable[[DictConfig], nn.Module]] = None,
    build_evaluator: Optional[Callable[[DictConfig], Any]] = None,
) -> TrainResult:
    """Train ``cfg`` into the run folder ``out`` (default ``cfg.output_dir`` or ``runs/<name>/<time>``).

    ``resume`` is a ``last.pth`` to continue from. Under torchrun every rank calls this; rank 0 writes.
    The builders default to ``avseg.data.build_dataset``, ``avseg.models.build_model`` and
    ``avseg.evaluation.build_evaluator`` (tests pass small stand-ins).
    """
    check_train_config(cfg.train)
    _check_path(resume, "--resume")
    _check_path(cfg.train.init_from, "train.init_from")
    if build_dataset is None:
        from avseg.data import build_dataset
    if build_model is None:
        from avseg.models import build_model
    if build_evaluator is None and cfg.train.val_every > 0:
        from avseg.evaluation import build_evaluator

    ctx = init_distributed(cfg.device)
    try:
        run_dir = make_run_dir(cfg, out) if ctx.is_main else None
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None))
        cfg.output_dir = str(run_dir)
        setup_logging(run_dir, ctx.rank)
        seed_everything(cfg.seed + ctx.rank, cfg.deterministic)
        logger = get_logger()
        logger.info(f"run folder {run_dir}")
        if tune_cpu_allocator(cfg.train.cpu_allocator, ctx.device):
            logger.info("CPU allocator tuned: freed memory is kept for reuse (train.cpu_allocator=system to turn off)")
        elif cfg.train.cpu_allocator == "tuned":
            logger.warning("train.cpu_allocator=tuned: this C library has no glibc mallopt; malloc left as it is")

        train_set = build_dataset(cfg, cfg.data.train_split, train=True)
        train_loader = build_train_loader(train_set, cfg, ctx)
        val_loader = evaluator = None
        if cfg.train.val_every > 0:
            val_set = build_dataset(cfg, cfg.data.val_split, train=False)
            val_loader = build_eval_loader(val_set, cfg.eval.batch_size, cfg, ctx)
            evaluator = build_evaluator(cfg)
        model = build_model(cfg)

        trainer = Trainer(cfg, model, train_loader, val_loader, evaluator, run_dir, ctx)
        if resume:
            trainer.resume(resume)
        elif cfg.train.init_from:
            trainer.init_from(cfg.train.init_from)
        return trainer.fit()
    finally:
        shutdown_distributed()
