"""Training engine: the thin training loop, its hooks, resumable checkpoints, DDP plumbing and training logs.

* :func:`train` / :class:`Trainer` (``avseg.engine.trainer``): the loop behind ``tools/train.py``.
* ``avseg.engine.hooks``: validation, epoch timings, logs and checkpoints around the loop.
* ``avseg.engine.optim``: optimiser, learning-rate schedule, mixed precision.
* ``avseg.engine.checkpointing``: RNG states, resume checks, non-strict ``init_from``, checkpoint writes.
* ``avseg.engine.distributed``: torchrun process group, small collectives.
* ``avseg.engine.training_log``: tqdm, TensorBoard, ``train_log.csv``, ``curves.png``.
* ``avseg.engine.run_setup``: run folder, logging set-up, seeding, device selection.

DataLoaders and their samplers: :mod:`avseg.data.loaders`.
"""
from avseg.engine.trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["NonFiniteLossError", "Trainer", "TrainResult", "train"]
