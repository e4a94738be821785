"""A model's costs: parameter counts and the frames per second of its forward pass."""
from __future__ import annotations

import time
from typing import Tuple

import torch
from torch import nn

from avseg.evaluation.evaluator import inference_keys


def count_parameters(model: nn.Module) -> Tuple[int, int]:
    """``(all, trainable)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def measure_fps(model: nn.Module, loader, device, batches: int, warmup: int = 1) -> float:
    """Frames per second of the model's forward pass (eval mode, no grad) over ``batches`` loader batches.

    The batches (``frames [B, T, 3, H, W]`` and the model's other inputs) are read into memory first, so
    data loading is not timed; ``warmup`` extra batches run untimed before. Returns NaN when ``batches`` is 0.
    """
    if batches <= 0:
        return float("nan")
    keys = inference_keys(model)
    cached = []
    for batch in loader:
        cached.append({key: batch[key].to(device) for key in keys})
        if len(cached) >= batches + warmup:
            break
    warm, timed = (cached[:warmup], cached[warmup:]) if len(cached) > warmup else ([], cached)
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    model.eval()
    with torch.no_grad():
        for inputs in warm:
            model(**inputs)
        synchronize()
        start = time.perf_counter()
        for inputs in timed:
            model(**inputs)
        synchronize()
        seconds = time.perf_counter() - start
    frames = sum(inputs["frames"].shape[0] * inputs["frames"].shape[1] for inputs in timed)
    return frames / seconds if seconds > 0 else float("nan")
