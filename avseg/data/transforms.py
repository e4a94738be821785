"""Training augmentation of a clip: horizontal flips and an optional zoom-and-crop.

``flip`` chooses how flips are drawn (``data.flip``):

* ``clip`` (default): one draw per clip, applied to every frame and its mask alike, so the frames of a
  clip stay consistent with each other.
* ``released``: what the MMVAE-AVS (ECMVAE) loaders do: every *annotated* frame gets its own draw and is
  flipped together with its mask, unannotated frames are never flipped. With S4's training masks (only
  frame 1 annotated) that flips only frame 1; in MS3 (all frames annotated) each frame is flipped
  independently, so a clip's frames can disagree.

The zoom-and-crop is always one draw per clip.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from avseg.config import FLIP_MODES


class ClipAugment:
    """Random horizontal flip and optional scale-crop of a clip.

    Args:
        hflip_prob: probability of a flip (per clip, or per annotated frame with ``flip="released"``).
        scale_crop: maximum extra zoom; the clip is enlarged by ``s ~ U(1, 1 + scale_crop)`` and one
            random window of the original size is cropped from every frame (0 disables).
        generator: optional ``torch.Generator`` for reproducible draws.
        flip: ``clip`` or ``released`` (see the module docstring).

    Call with ``frames [T, 3, H, W]``, ``masks [T, 1, H, W]`` (float {0, 1} masks or integer class maps)
    and optionally ``mask_valid [T]`` bool (which frames are annotated; None: all); returns frames and
    masks transformed. Frames are resized bilinearly, masks with nearest neighbour, so mask values and
    dtype are kept.
    """

    def __init__(self, hflip_prob: float = 0.5, scale_crop: float = 0.0, generator: Optional[torch.Generator] = None,
                 flip: str = "clip"):
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        if scale_crop < 0.0:
            raise ValueError(f"scale_crop must be >= 0, got {scale_crop}")
        if flip not in FLIP_MODES:
            raise ValueError(f"flip must be one of {FLIP_MODES}, got '{flip}'")
        self.hflip_prob = hflip_prob
        self.scale_crop = scale_crop
        self.generator = generator
        self.flip = flip

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(self, frames: torch.Tensor, masks: torch.Tensor,
                 mask_valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.hflip_prob > 0:
            if self.flip == "clip":
                if self._uniform() < self.hflip_prob:
                    frames, masks = frames.flip(-1), masks.flip(-1)
            else:
                frames, masks = self._flip_annotated_frames(frames, masks, mask_valid)
        if self.scale_crop > 0:
            frames, masks = self._scale_crop(frames, masks)
        return frames, masks

    def _flip_annotated_frames(self, frames: torch.Tensor, masks: torch.Tensor,
                               mask_valid: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``released``: one draw per annotated frame, in frame order; that frame and its mask flip together."""
        annotated = range(frames.shape[0]) if mask_valid is None else torch.nonzero(mask_valid).flatten().tolist()
        frames, masks = frames.clone(), masks.clone()
        for k in annotated:
            if self._uniform() < self.hflip_prob:
                frames[k], masks[k] = frames[k].flip(-1), masks[k].flip(-1)
        return frames, masks

    def _scale_crop(self, frames: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        height, width = frames.shape[-2:]
        scale = 1.0 + self.scale_crop * self._uniform()
        big_h, big_w = max(height, round(height * scale)), max(width, round(width * scale))
        top = int((big_h - height + 1) * self._uniform())
        left = int((big_w - width + 1) * self._uniform())
        frames = F.interpolate(frames, size=(big_h, big_w), mode="bilinear", align_corners=False)
        masks = F.interpolate(masks.float(), size=(big_h, big_w), mode="nearest").to(masks.dtype)
        return frames[..., top : top + height, left : left + width], masks[..., top : top + height, left : left + width]

    def __repr__(self) -> str:
        return f"ClipAugment(hflip_prob={self.hflip_prob}, scale_crop={self.scale_crop}, flip={self.flip!r})"


def build_clip_transform(hflip_prob: float, scale_crop: float, train: bool, flip: str = "clip") -> Optional[ClipAugment]:
    """The training augmentation from config values; None at evaluation or when both are off."""
    if not train or (hflip_prob <= 0 and scale_crop <= 0):
        return None
    return ClipAugment(hflip_prob=hflip_prob, scale_crop=scale_crop, flip=flip)
