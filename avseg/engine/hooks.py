"""What happens around the training loop, as hooks: validation, epoch timings, logs, checkpoints.

:meth:`avseg.engine.trainer.Trainer.fit` calls every hook, in list order, at each point::

    before_train(trainer)                         after resume / init_from, before the first epoch
    before_epoch(trainer, epoch)                  epoch is 1-based
    after_step(trainer, terms, lr)                terms: the step's loss terms, averaged over ranks
    after_epoch(trainer, row)                     row: the epoch's line of train_log.csv, completed in order
    after_train(trainer)                          after the last epoch (not after an error)
    close(trainer)                                always, last (also after an error or a kill)

``row`` starts as ``epoch``, ``step``, ``lr`` and ``train_<term>`` (epoch means); it is the row the
trainer keeps in ``trainer.history`` (saved in ``last.pth``). :func:`default_hooks` orders the hooks
so that each finds what it needs: :class:`ValidationHook` adds ``val_<metric>`` and updates the
trainer's best metric, :class:`TimerHook` adds ``time_train_s``, ``time_val_s``, ``time_epoch_s``,
:class:`LoggingHook` writes the row (``train_log.csv``, TensorBoard, the epoch line with the ETA in
``log.txt``), :class:`CheckpointHook` writes ``best.pth`` (when the metric improved) and ``last.pth``.
Every hook runs on every rank; only rank 0 writes files.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from avseg.engine.checkpointing import write_checkpoint
from avseg.engine.distributed import broadcast_buffers, broadcast_object
from avseg.engine.training_log import TrainingLogger
from avseg.errors import CheckpointError

if TYPE_CHECKING:
    from avseg.engine.trainer import Trainer

LAST_NAME = "last.pth"
BEST_NAME = "best.pth"


class Hook:
    """A no-op at every point; subclasses override the points they need (see the module docstring)."""

    def before_train(self, trainer: "Trainer") -> None:
        pass

    def before_epoch(self, trainer: "Trainer", epoch: int) -> None:
        pass

    def after_step(self, trainer: "Trainer", terms: Dict[str, float], lr: float) -> None:
        pass

    def after_epoch(self, trainer: "Trainer", row: Dict[str, Any]) -> None:
        pass

    def after_train(self, trainer: "Trainer") -> None:
        pass

    def close(self, trainer: "Trainer") -> None:
        pass


class ValidationHook(Hook):
    """Every ``train.val_every`` epochs and after the last: the evaluator's metrics as ``val_<metric>``.

    ``evaluator`` follows the avseg evaluator protocol (``evaluate(model, loader, device)``,
    ``primary_metric``, ``higher_is_better``). All ranks evaluate their shard; rank 0's dict wins.
    """

    def __init__(self, evaluator: Any, loader: Any):
        self.evaluator = evaluator
        self.loader = loader

    def due(self, trainer: "Trainer", epoch: int) -> bool:
        every = trainer.tcfg.val_every
        return every > 0 and (epoch % every == 0 or epoch == trainer.tcfg.epochs)

    def validate(self, trainer: "Trainer") -> Dict[str, float]:
        """The evaluator's metrics for the bare model, identical on every rank."""
        model = trainer.bare_model
        broadcast_buffers(model)  # every rank scores the weights and statistics rank 0 saves
        metrics = self.evaluator.evaluate(model, self.loader, trainer.device)
        metrics = broadcast_object({name: float(value) for name, value in metrics.items()})
        name = self.evaluator.primary_metric
        if name not in metrics:
            raise KeyError(f"the evaluator returned no '{name}' (its primary metric); it returned {sorted(metrics)}")
        return metrics

    def improved(self, trainer: "Trainer", value: float) -> bool:
        if not math.isfinite(value):
            return False
        if trainer.best_metric is None:
            return True
        return value > trainer.best_metric if self.evaluator.higher_is_better else value < trainer.best_metric

    def after_epoch(self, trainer: "Trainer", row: Dict[str, Any]) -> None:
        if not self.due(trainer, row["epoch"]):
            return
        metrics = self.validate(trainer)
        row.update({f"val_{name}": value for name, value in metrics.items()})
        value = metrics[self.evaluator.primary_metric]
        if self.improved(trainer, value):
            trainer.best_metric, trainer.best_epoch = value, row["epoch"]


class TimerHook(Hook):
    """``time_train_s`` (first step to last step), ``time_val_s`` (what follows, up to this hook) and
    ``time_epoch_s``; place it right after :class:`ValidationHook`."""

    def before_epoch(self, trainer: "Trainer", epoch: int) -> None:
        self.start = self.steps_end = time.perf_counter()

    def after_step(self, trainer: "Trainer", terms: Dict[str, float], lr: float) -> None:
        self.steps_end = time.perf_counter()

    def after_epoch(self, trainer: "Trainer", row: Dict[str, Any]) -> None:
        now = time.perf_counter()
        row.update(time_train_s=self.steps_end - self.start, time_val_s=now - self.steps_end, time_epoch_s=now - self.start)


def describe_best(trainer: "Trainer") -> str:
    """``best miou 0.7312 at epoch 4``, or an empty string while no epoch has a finite metric."""
    if trainer.best_epoch is None:
        return ""
    return f"best {trainer.metric_name} {trainer.best_metric:.4f} at epoch {trainer.best_epoch}"


class LoggingHook(Hook):
    """The tqdm bar, step lines, ``train_log.csv``, TensorBoard and ``curves.png`` (through
    :class:`TrainingLogger`), and the start, epoch (with the ETA) and end lines of ``log.txt``."""

    def __init__(self) -> None:
        self.log: Optional[TrainingLogger] = None
        self.bar = None
        self.epoch_seconds: List[float] = []

    def before_train(self, trainer: "Trainer") -> None:
        tcfg = trainer.tcfg
        self.log = TrainingLogger(
            trainer.run_dir,
            enabled=trainer.ctx.is_main,
            history=trainer.history,
            tensorboard=tcfg.tensorboard,
            progress=tcfg.progress,
            purge_step=trainer.step if trainer.resumed else None,
        )
        if trainer.epoch == 0:
            model = trainer.bare_model
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            trainer.logger.info(
                f"training {type(model).__name__} ({trainable / 1e6:.2f} M trainable parameters) on "
                f"{trainer.ctx.world_size} process(es), {trainer.device}, amp {trainer.amp_dtype or 'off'}: "
                f"{tcfg.epochs} epochs x {trainer.steps_per_epoch} steps"
            )

    def before_epoch(self, trainer: "Trainer", epoch: int) -> None:
        self.bar = self.log.progress(trainer.steps_per_epoch, f"epoch {epoch}/{trainer.tcfg.epochs}")
        self.loss_sum, self.epoch_steps = 0.0, 0

    def after_step(self, trainer: "Trainer", terms: Dict[str, float], lr: float) -> None:
        self.loss_sum += terms["loss"]
        self.epoch_steps += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.loss_sum / self.epoch_steps:.4f}", lr=f"{lr:.2e}")
        if self.epoch_steps == trainer.steps_per_epoch:
            self._close_bar()  # before validation, which may show its own bar
        every = trainer.tcfg.log_every
        if every > 0 and trainer.step % every == 0:
            self.log.log_step(trainer.step, terms, lr)

    def after_epoch(self, trainer: "Trainer", row: Dict[str, Any]) -> None:
        self._close_bar()
        self.log.log_epoch(row)
        self.epoch_seconds.append(row["time_epoch_s"])
        remaining = (trainer.tcfg.epochs - row["epoch"]) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        terms = " ".join(f"{key[6:]} {value:.4f}" for key, value in row.items() if key.startswith("train_"))
        parts = [f"epoch {row['epoch']}/{trainer.tcfg.epochs}", terms, f"lr {row['lr']:.3e}"]
        metrics = " ".join(f"{key[4:]} {value:.4f}" for key, value in row.items() if key.startswith("val_"))
        if metrics:
            parts.append(f"val {metrics} ({describe_best(trainer) or 'no finite value yet'})")
        parts.append(
            f"{row['time_epoch_s']:.1f} s (train {row['time_train_s']:.1f}, val {row['time_val_s']:.1f})"
            f", ETA {time.strftime('%H:%M:%S', time.gmtime(remaining))}"
        )
        trainer.logger.info(" | ".join(parts))

    def after_train(self, trainer: "Trainer") -> None:
        self.log.write_curves()
        if trainer.ctx.is_main:
            best = describe_best(trainer)
            trainer.logger.info(f"done: {trainer.epoch} epochs, {trainer.step} steps{', ' + best if best else ''}; outputs in {trainer.run_dir}")

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self, trainer: "Trainer") -> None:
        self._close_bar()
        if self.log is not None:
            self.log.close()


class CheckpointHook(Hook):
    """``best.pth`` (weights + config) when the epoch set a new best metric, then ``last.pth`` (everything
    ``--resume`` needs) every epoch. A failed write stops every rank with one :class:`CheckpointError`."""

    def after_epoch(self, trainer: "Trainer", row: Dict[str, Any]) -> None:
        if trainer.best_epoch == row["epoch"]:
            self.save(trainer, BEST_NAME, training_state=False)
        self.save(trainer, LAST_NAME, training_state=True)

    def save(self, trainer: "Trainer", name: str, training_state: bool) -> None:
        extra = trainer.checkpoint_state(training_state)  # a collective: every rank takes part
        failure: Optional[CheckpointError] = None
        if trainer.ctx.is_main:
            try:
                write_checkpoint(trainer.run_dir / name, trainer.bare_model.state_dict(), trainer.cfg, **extra)
            except CheckpointError as exc:
                failure = exc
        message = broadcast_object(str(failure) if failure else None)
        if message is not None:
            raise failure or CheckpointError(message)


def default_hooks(evaluator: Any = None, val_loader: Any = None) -> List[Hook]:
    """Validation (when an evaluator is given), timings, logs and checkpoints, in the order they need."""
    hooks: List[Hook] = [ValidationHook(evaluator, val_loader)] if evaluator is not None else []
    return hooks + [TimerHook(), LoggingHook(), CheckpointHook()]
