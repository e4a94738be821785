"""Optimiser, learning-rate schedule and mixed precision of a training run (``train.*`` keys)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from avseg.config import AMP_MODES, LR_SCHEDULES, OPTIMIZERS  # noqa: F401  the schema owns the choices
from avseg.engine.run_setup import get_logger
from avseg.errors import ConfigError



def check_choice(value: str, choices: tuple, key: str) -> str:
    """``value`` when it is one of ``choices``, else a :class:`ConfigError` naming ``key``."""
    if value not in choices:
        raise ConfigError(f"key '{key}': '{value}' is not one of {', '.join(choices)}")
    return value


def build_optimizer(model: nn.Module, train_cfg: DictConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the parameters that require gradients."""
    name = check_choice(train_cfg.optimizer, OPTIMIZERS, "train.optimizer")
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
    schedule = check_choice(train_cfg.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
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
    check_choice(mode, AMP_MODES, "train.amp")
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
