"""The training loop: thin by design. Models own their losses; the trainer moves batches and steps.

A model's ``forward(**inputs)``, where ``inputs`` are the batch entries its registry record names
(:data:`avseg.models.registry.ModelRecord.batch_keys`), returns a dict with ``loss`` and named scalar
loss terms (plus outputs such as ``logits``, which the trainer ignores). :class:`Trainer` runs AMP,
backward, gradient clipping, the optimiser and LR schedule; validation, epoch timings, logs and the
checkpoints (``last.pth`` every epoch, ``best.pth`` on the evaluator's primary metric) are hooks
(:mod:`avseg.engine.hooks`).

Entry point: :func:`train` (used by ``tools/train.py``); :class:`Trainer` is the loop itself.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from avseg.data.loaders import build_eval_loader, build_train_loader, epoch_seed, to_device
from avseg.engine.checkpointing import (
    capture_rng_state,
    init_from_checkpoint,
    read_resume_checkpoint,
    restore_rng_state,
)
from avseg.engine.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
    sync_batchnorm,
    unwrap_model,
)
from avseg.engine.hooks import BEST_NAME, LAST_NAME, Hook, default_hooks
from avseg.engine.optim import AMP_MODES, LR_SCHEDULES, OPTIMIZERS, build_optimizer, check_choice, lr_factor, resolve_amp
from avseg.engine.run_setup import (
    CONFIG_NAME,
    CPU_ALLOCATOR_MODES,
    get_logger,
    make_run_dir,
    remove_stale_temp_files,
    seed_everything,
    setup_logging,
    tune_cpu_allocator,
)
from avseg.engine.training_log import CSV_NAME, CURVES_NAME
from avseg.errors import AvsegError, CheckpointError, ConfigError
from avseg.models import registry
from avseg.weights import load_into

RUN_FILES = (CONFIG_NAME, LAST_NAME, BEST_NAME, CSV_NAME, CURVES_NAME)


class NonFiniteLossError(AvsegError):
    """The loss became NaN or infinite; the message names the step and every loss term."""


# ----------------------------------------------------------------------------- building blocks
def check_train_config(train_cfg: DictConfig) -> None:
    """Fail fast (before any dataset or model is built) on a bad ``train.*`` choice or value."""
    check_choice(train_cfg.optimizer, OPTIMIZERS, "train.optimizer")
    check_choice(train_cfg.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
    check_choice(train_cfg.amp, AMP_MODES, "train.amp")
    check_choice(train_cfg.cpu_allocator, CPU_ALLOCATOR_MODES, "train.cpu_allocator")
    for key in ("epochs", "batch_size"):
        if train_cfg[key] < 1:
            raise ConfigError(f"key 'train.{key}': must be at least 1, got {train_cfg[key]}")
    for key in ("lr", "weight_decay", "grad_clip", "warmup_epochs", "val_every", "max_steps_per_epoch", "min_lr"):
        if train_cfg[key] < 0:
            raise ConfigError(f"key 'train.{key}': must not be negative, got {train_cfg[key]}")


def loss_terms(outputs: Any) -> Dict[str, torch.Tensor]:
    """The scalar entries of a model's output dict, ``loss`` first."""
    if not isinstance(outputs, Mapping) or "loss" not in outputs:
        raise TypeError("a model's training forward must return a dict with a 'loss' entry and named loss terms")
    terms = {"loss": outputs["loss"]}
    for name, value in outputs.items():
        if name != "loss" and torch.is_tensor(value) and value.ndim == 0:
            terms[name] = value
    return terms


def training_inputs(record: registry.ModelRecord, batch: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    """The batch entries the model's forward takes (its record's ``batch_keys``), tensors on ``device``."""
    inputs = registry.select_inputs(record, batch)
    missing = [key for key in record.batch_keys if key not in inputs]
    if missing:
        raise ConfigError(
            f"the dataset's items have no {', '.join(repr(k) for k in missing)} entry, which model '{record.name}' "
            f"needs (its batch_keys {record.batch_keys}, dataset keys {tuple(batch)}); do model.name and data.name match?"
        )
    return to_device(inputs, device)


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
    """Epochs of optimiser steps; the hooks (default :func:`avseg.engine.hooks.default_hooks`) do the rest.

    ``model`` is the bare model of ``cfg.model.name`` (the trainer moves it to ``ctx.device`` and wraps
    it in DDP when the world is larger than one). ``train_loader`` must use an ``EpochShuffleSampler``
    and a ``torch.Generator`` (:func:`avseg.data.loaders.build_train_loader`) so that the data order is a
    function of (seed, epoch). ``evaluator`` follows the avseg evaluator protocol (``evaluate``,
    ``primary_metric``, ``higher_is_better``); it may be None when ``train.val_every`` is 0.

    State (saved in ``last.pth``, restored by :meth:`resume`): ``epoch`` (finished epochs), ``step``
    (optimiser steps), ``best_metric``, ``best_epoch``, ``history`` (the rows of ``train_log.csv``).
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
        hooks: Optional[Sequence[Hook]] = None,
    ):
        self.cfg = cfg
        self.tcfg = cfg.train
        self.ctx = ctx
        self.device = ctx.device
        self.run_dir = Path(run_dir)
        self.logger = get_logger()
        self.record = registry.record_for(cfg)
        self.train_loader = train_loader
        self.metric_name: Optional[str] = getattr(evaluator, "primary_metric", None)
        self.hooks = list(default_hooks(evaluator, val_loader) if hooks is None else hooks)

        model.to(self.device)
        if self.tcfg.sync_bn:
            model, converted, message = sync_batchnorm(model, ctx)
            if converted or not ctx.enabled:
                self.logger.info(message)
            else:
                self.logger.warning(message)
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

    def resume(self, payload: Mapping[str, Any], path: str) -> None:
        """Restore model, optimiser, scheduler, scaler, counters, best metric, history and RNG states
        from ``payload``, the ``last.pth`` at ``path`` (:func:`avseg.engine.checkpointing.read_resume_checkpoint`)."""
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

    def checkpoint_state(self, training_state: bool) -> Dict[str, Any]:
        """The checkpoint entries besides weights and config; ``training_state`` adds everything --resume
        needs (gathering every rank's RNG state: all ranks must call this together)."""
        state: Dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "metric": self.metric_name,
        }
        if training_state:
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=all_gather_objects(capture_rng_state(self.device)),
                history=self.history,
                world_size=self.ctx.world_size,
            )
        return state

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
        inputs = training_inputs(self.record, batch, self.device)
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

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        """``steps_per_epoch`` steps of epoch ``epoch`` (1-based); returns its row of the history
        (``epoch``, ``step``, ``lr``, ``train_<term>`` epoch means), which the hooks complete."""
        self.model.train()
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.train_loader.generator is not None:
            self.train_loader.generator.manual_seed(epoch_seed(self.cfg.seed + self.ctx.rank, epoch))
        for hook in self.hooks:
            hook.before_epoch(self, epoch)
        epoch_lr = self.scheduler.get_last_lr()[0]
        sums: Dict[str, float] = {}
        for index, batch in enumerate(self.train_loader):
            if index >= self.steps_per_epoch:
                break
            lr = self.scheduler.get_last_lr()[0]
            terms = self.train_step(batch, epoch, index)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            for hook in self.hooks:
                hook.after_step(self, terms, lr)
        self.epoch = epoch
        row: Dict[str, Any] = {"epoch": epoch, "step": self.step, "lr": epoch_lr}
        row.update({f"train_{name}": total / self.steps_per_epoch for name, total in sums.items()})
        self.history.append(row)
        return row

    def fit(self) -> TrainResult:
        """Train from the current epoch to ``train.epochs``, calling the hooks; returns the run's summary."""
        try:
            for hook in self.hooks:
                hook.before_train(self)
            for epoch in range(self.epoch + 1, self.tcfg.epochs + 1):
                row = self.run_epoch(epoch)
                for hook in self.hooks:
                    hook.after_epoch(self, row)
            for hook in self.hooks:
                hook.after_train(self)
        finally:
            for hook in self.hooks:
                hook.close(self)
        best = self.run_dir / BEST_NAME if self.best_epoch is not None else None
        return TrainResult(
            self.run_dir, self.epoch, self.step, self.metric_name, self.best_metric, self.best_epoch,
            self.run_dir / LAST_NAME, best, list(self.history),
        )


# ----------------------------------------------------------------------------- orchestration
def _check_path(path: Optional[str], what: str) -> None:
    if path and not Path(path).is_file():
        raise CheckpointError(f"{what}: checkpoint not found: {path}")


def _open_run_dir(cfg: DictConfig, out: Optional[str], ctx: DistContext) -> Path:
    """Create the run folder (rank 0), log into it, and remove temporary files of interrupted writes."""
    run_dir = make_run_dir(cfg, out) if ctx.is_main else None
    run_dir = Path(broadcast_object(str(run_dir) if run_dir else None))
    cfg.output_dir = str(run_dir)
    setup_logging(run_dir, ctx.rank)
    logger = get_logger()
    logger.info(f"run folder {run_dir}")
    if ctx.is_main:
        for path in remove_stale_temp_files(run_dir, RUN_FILES):
            logger.info(f"removed {path.name}, left behind by an interrupted write")
    return run_dir


def _build_trainer(cfg: DictConfig, run_dir: Path, ctx: DistContext, build_dataset, build_model, build_evaluator) -> Trainer:
    """Seeds, allocator, loaders, evaluator and model of the run, as a :class:`Trainer`."""
    seed_everything(cfg.seed + ctx.rank, cfg.deterministic)
    if tune_cpu_allocator(cfg.train.cpu_allocator, ctx.device):
        get_logger().info("CPU allocator tuned: freed memory is kept for reuse (train.cpu_allocator=system to turn off)")
    elif cfg.train.cpu_allocator == "tuned":
        get_logger().warning("train.cpu_allocator=tuned: this C library has no glibc mallopt; malloc left as it is")
    train_loader = build_train_loader(build_dataset(cfg, cfg.data.train_split, train=True), cfg, ctx)
    val_loader = evaluator = None
    if cfg.train.val_every > 0:
        val_loader = build_eval_loader(build_dataset(cfg, cfg.data.val_split, train=False), cfg.eval.batch_size, cfg, ctx)
        evaluator = build_evaluator(cfg)
    return Trainer(cfg, build_model(cfg), train_loader, val_loader, evaluator, run_dir, ctx)


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
    ``avseg.evaluation.build_evaluator`` (tests pass small stand-ins). A user error after the run
    folder exists (:class:`~avseg.errors.AvsegError`: a dataset file, a failed checkpoint write, a
    non-finite loss) is also written to its ``log.txt``.
    """
    check_train_config(cfg.train)
    _check_path(resume, "--resume")
    _check_path(cfg.train.init_from, "train.init_from")
    resume_payload = read_resume_checkpoint(resume, cfg.model.name) if resume else None
    if build_dataset is None:
        from avseg.data import build_dataset
    if build_model is None:
        from avseg.models import build_model
    if build_evaluator is None and cfg.train.val_every > 0:
        from avseg.evaluation import build_evaluator

    ctx = init_distributed(cfg.device)
    try:
        run_dir = _open_run_dir(cfg, out, ctx)
        try:
            trainer = _build_trainer(cfg, run_dir, ctx, build_dataset, build_model, build_evaluator)
            if resume_payload is not None:
                trainer.resume(resume_payload, resume)
            elif cfg.train.init_from:
                trainer.init_from(cfg.train.init_from)
            del resume_payload  # its tensors are no longer needed during training
            return trainer.fit()
        except AvsegError as exc:
            get_logger().error(str(exc))
            raise
    finally:
        shutdown_distributed()
