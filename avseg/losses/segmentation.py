"""Segmentation losses on annotated frames: plain BCE (AVSBench) and the F3Net-style structure loss (ECMVAE).

Both take clip-shaped tensors, ``logits`` and ``masks`` ``[B, T, 1, H, W]``, and ``mask_valid``
``[B, T]`` (bool) naming the annotated frames: AVSBench S4 training annotates the first frame of a
clip, MS3 and evaluation annotate all of them. Frames that are not annotated never reach the loss,
whatever the clip length or batch size.

Under DDP the means are over the annotated frames (pixels) of the *global* batch
(:func:`avseg.losses.reduction.global_mean`), so ranks holding different numbers of annotated
frames give the single-process gradient.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from avseg.losses.reduction import global_mean


def select_annotated(
    logits: torch.Tensor, masks: torch.Tensor, mask_valid: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flatten clips to frames and keep the annotated ones: ``[B, T, 1, H, W] -> [K, 1, H, W]`` twice."""
    if logits.shape != masks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} must have the same shape")
    frames_logits = logits.flatten(0, 1)
    frames_masks = masks.flatten(0, 1).to(logits.dtype)
    if mask_valid is None:
        return frames_logits, frames_masks
    valid = mask_valid.reshape(-1).to(torch.bool)
    if valid.numel() != frames_logits.shape[0]:
        raise ValueError(f"mask_valid {tuple(mask_valid.shape)} does not match the {tuple(logits.shape[:2])} frames")
    if not bool(valid.any()):
        raise ValueError("mask_valid marks no frame as annotated; a training batch needs at least one mask")
    return frames_logits[valid], frames_masks[valid]


def bce_loss(logits: torch.Tensor, masks: torch.Tensor, mask_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean binary cross-entropy over the pixels of the annotated frames.

    AVSBench computes ``nn.BCELoss()(sigmoid(logits), masks)``; the logits form used here is the same
    value without the saturation of ``sigmoid`` (they differ only where |logit| > ~17 in float32).
    """
    frame_logits, frame_masks = select_annotated(logits, masks, mask_valid)
    pixel_bce = F.binary_cross_entropy_with_logits(frame_logits, frame_masks, reduction="sum")
    return global_mean(pixel_bce, frame_masks.numel())


def structure_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    mask_valid: Optional[torch.Tensor] = None,
    weighted_bce: bool = False,
) -> torch.Tensor:
    """F3Net-style weighted BCE + weighted IoU, as released with ECMVAE (MMVAE-AVS ``structure_loss_*``).

    With ``y`` the mask and ``p = sigmoid(z)`` per annotated frame:

    * edge weight ``w = 1 + 5·|avgpool_31x31(y) − y|`` (stride 1, zero padding 15, padding counted);
    * label smoothing ``y' = 0.999·y + 0.0005`` (BCE target only);
    * BCE: the released code averages BCE over *all* pixels before weighting, so the weights cancel and
      the term is the plain mean BCE (``weighted_bce=False``, the default). ``weighted_bce=True`` gives
      the per-pixel weighted mean of F3Net, ``Σ w·bce / Σ w`` per frame;
    * wIoU ``1 − (Σ w·p·y + 1) / (Σ w·(p + y) − Σ w·p·y + 1)`` per frame, with the unsmoothed ``y``.

    Returns the mean over frames of ``bce + wIoU`` (a scalar).
    """
    frame_logits, frame_masks = select_annotated(logits, masks, mask_valid)
    weight = 1 + 5 * torch.abs(F.avg_pool2d(frame_masks, kernel_size=31, stride=1, padding=15) - frame_masks)
    smoothed = frame_masks * 0.999 + 0.0005
    num_frames = frame_masks.shape[0]
    if weighted_bce:
        pixel_bce = F.binary_cross_entropy_with_logits(frame_logits, smoothed, reduction="none")
        bce = global_mean(((weight * pixel_bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))).sum(), num_frames)
    else:
        bce = global_mean(F.binary_cross_entropy_with_logits(frame_logits, smoothed, reduction="sum"), frame_masks.numel())
    probs = torch.sigmoid(frame_logits)
    inter = (probs * frame_masks * weight).sum(dim=(2, 3))
    union = ((probs + frame_masks) * weight).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return bce + global_mean(wiou.sum(), num_frames)


SEGMENTATION_LOSSES = {"bce": bce_loss, "structure": structure_loss}


def segmentation_loss(name: str, logits: torch.Tensor, masks: torch.Tensor, mask_valid: Optional[torch.Tensor] = None):
    """Dispatch on ``cfg.model.seg_loss`` (``bce`` | ``structure``)."""
    try:
        loss_fn = SEGMENTATION_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown segmentation loss '{name}' (expected one of {sorted(SEGMENTATION_LOSSES)})") from None
    return loss_fn(logits, masks, mask_valid)
