"""Training engine: the thin training loop, resumable checkpoints, DDP plumbing and training logs.

* :func:`train` / :class:`Trainer` (``avseg.engine.trainer``): the loop behind ``tools/train.py``.
* ``avseg.engine.checkpointing``: RNG states, resume checks, non-strict ``init_from`` with a key report.
* ``avseg.engine.distributed``: torchrun process group, samplers, small collectives.
* ``avseg.engine.training_log``: tqdm, TensorBoard, ``train_log.csv``, ``curves.png``.
* ``avseg.engine.run_setup``: run folder, logging set-up, seeding, device selection.
"""
from avseg.engine.trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["NonFiniteLossError", "Trainer", "TrainResult", "train"]
