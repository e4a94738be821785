"""Clip-consistent augmentation: one random draw per clip, applied to every frame and mask alike.

(The official ECMVAE MS3 loader flips each frame independently, so a clip's frames can disagree; this
module never does that.)
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


class ClipAugment:
    """Random horizontal flip and optional scale-crop of a whole clip.

    Args:
        hflip_prob: probability of flipping the clip left-right.
        scale_crop: maximum extra zoom; the clip is enlarged by ``s ~ U(1, 1 + scale_crop)`` and one
            random window of the original size is cropped from every frame (0 disables).
        generator: optional ``torch.Generator`` for reproducible draws.

    Call with ``frames [T, 3, H, W]`` and ``masks [T, 1, H, W]``; returns both transformed. Frames are
    resized bilinearly, masks with nearest neighbour, so masks stay in {0, 1}.
    """

    def __init__(self, hflip_prob: float = 0.5, scale_crop: float = 0.0, generator: Optional[torch.Generator] = None):
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        if scale_crop < 0.0:
            raise ValueError(f"scale_crop must be >= 0, got {scale_crop}")
        self.hflip_prob = hflip_prob
        self.scale_crop = scale_crop
        self.generator = generator

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(self, frames: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.hflip_prob > 0 and self._uniform() < self.hflip_prob:
            frames, masks = frames.flip(-1), masks.flip(-1)
        if self.scale_crop > 0:
            frames, masks = self._scale_crop(frames, masks)
        return frames, masks

    def _scale_crop(self, frames: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        height, width = frames.shape[-2:]
        scale = 1.0 + self.scale_crop * self._uniform()
        big_h, big_w = max(height, round(height * scale)), max(width, round(width * scale))
        top = int((big_h - height + 1) * self._uniform())
        left = int((big_w - width + 1) * self._uniform())
        frames = F.interpolate(frames, size=(big_h, big_w), mode="bilinear", align_corners=False)
        masks = F.interpolate(masks, size=(big_h, big_w), mode="nearest")
        return frames[..., top : top + height, left : left + width], masks[..., top : top + height, left : left + width]

    def __repr__(self) -> str:
        return f"ClipAugment(hflip_prob={self.hflip_prob}, scale_crop={self.scale_crop})"


def build_clip_transform(hflip_prob: float, scale_crop: float, train: bool) -> Optional[ClipAugment]:
    """The training augmentation from config values; None at evaluation or when both are off."""
    if not train or (hflip_prob <= 0 and scale_crop <= 0):
        return None
    return ClipAugment(hflip_prob=hflip_prob, scale_crop=scale_crop)
