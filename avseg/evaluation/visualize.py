"""Qualitative grid: for a few clips, a row of frames, a row of ground truth and a row of predictions."""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Union

import numpy as np
import torch

from avseg.fileio import atomic_path

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
GT_COLOUR = np.array([0.1, 0.9, 0.2], dtype=np.float32)
PRED_COLOUR = np.array([0.95, 0.2, 0.1], dtype=np.float32)


def denormalize(frames: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """ImageNet-normalised ``[T, 3, H, W]`` → RGB float ``[T, H, W, 3]`` in [0, 1]."""
    frames = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    rgb = frames.transpose(0, 2, 3, 1) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(rgb, 0.0, 1.0)


def overlay(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.5, dim: float = 0.35) -> np.ndarray:
    """``[H, W, 3]`` image with the bool ``[H, W]`` mask tinted in ``colour`` and the rest dimmed."""
    out = rgb * dim
    out[mask] = (1 - alpha) * rgb[mask] + alpha * colour
    return out


def save_grid(path: Union[str, os.PathLike], clips: Sequence[Dict[str, Any]], title: str = "") -> None:
    """Write a PNG with three rows per clip (frames, ground truth, prediction at 0.5) and ``T`` columns.

    Each clip is a dict: ``video_id``, ``frames`` ``[T, 3, H, W]`` (normalised), ``masks`` bool ``[T, H, W]``,
    ``valid`` bool ``[T]`` (frames without ground truth say so), ``probs`` float ``[T, H, W]``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    num_frames = max(len(clip["valid"]) for clip in clips)
    fig, axes = plt.subplots(3 * len(clips), num_frames, figsize=(1.6 * num_frames, 1.7 * 3 * len(clips)), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for c, clip in enumerate(clips):
        rgb = denormalize(clip["frames"])
        for t in range(len(rgb)):
            valid = bool(clip["valid"][t])
            gt_image = overlay(rgb[t], clip["masks"][t], GT_COLOUR) if valid else rgb[t] * 0.15
            rows = (
                (rgb[t], clip["video_id"] if t == 0 else ""),
                (gt_image, "ground truth" if t == 0 and valid else ("" if valid else "no ground truth")),
                (overlay(rgb[t], clip["probs"][t] > 0.5, PRED_COLOUR), "prediction" if t == 0 else ""),
            )
            for r, (image, label) in enumerate(rows):
                axis = axes[3 * c + r, t]
                axis.imshow(image)
                if label:
                    axis.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
