"""AVSS (AVSBench-semantic) losses: the masked per-frame cross-entropy and its audio-visual map term.

Official AVSS training (``avss/loss.py``, ``IouSemanticAwareLoss``), for logits ``[B, T, C, H, W]``
(C = 71), class labels ``[B, T, H, W]`` (0 = background) and the annotation flag g = ``mask_valid [B, T]``:

* CE: ``ce_t = mean_{h,w} CrossEntropy(P_t, Y_t)``; ``L_CE = Σ_t g_t·ce_t / Σ_t g_t``;
* AV map: ``M = 1[argmax_c P ≠ background]`` (no gradient); per stage s, ``M_s = avgpool_{h_s×w_s}(M)``,
  ``v_t = mean_{h,w}(V_s ⊙ M_s)`` (not divided by the foreground area), ``KL_t = KL(softmax(a_t) ‖ softmax(v_t))``,
  ``L_s = Σ_t g_t·KL_t / Σ_t g_t``; ``L_AVM = mean_s L_s``;
* total ``L_CE + λ·L_AVM`` (λ = 0.5), composed by the models.

Both normalise by the number of annotated frames summed over DDP ranks
(:func:`avseg.losses.reduction.global_mean`), so one process with 4 clips and 4 processes with one clip
each give the same gradients; a single process computes exactly the official value.

The official code's background index in the AV-map mask is 0 since commit ``565587e4`` (2024), 70
before it (``background_index``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from avseg.losses.reduction import global_mean


def _refuse_empty_batch() -> None:
    """Outside DDP a batch without an annotated frame has no loss: say so (under DDP another rank may have some)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("mask_valid marks no frame as annotated; a training batch needs at least one labelled frame")


def _frames_and_flags(logits: torch.Tensor, mask_valid: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, C, H, W]`` (or ``[N, C, H, W]``) -> frames ``[N, C, H, W]`` and float flags ``[N]``."""
    frames = logits.flatten(0, 1) if logits.dim() == 5 else logits
    if frames.dim() != 4:
        raise ValueError(f"logits must be [B, T, C, H, W] or [N, C, H, W], got {tuple(logits.shape)}")
    if mask_valid is None:
        return frames, frames.new_ones(frames.shape[0])
    flags = mask_valid.reshape(-1)
    if flags.numel() != frames.shape[0]:
        raise ValueError(f"mask_valid {tuple(mask_valid.shape)} does not match the {frames.shape[0]} frames of the logits")
    return frames, flags.to(frames.dtype)


def semantic_ce_loss(logits: torch.Tensor, labels: torch.Tensor, mask_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Masked per-frame cross-entropy: ``Σ_t g_t·mean_{h,w} CE_t / Σ_t g_t`` (scalar).

    Args:
        logits: ``[B, T, C, H, W]`` (or ``[N, C, H, W]``).
        labels: class indices ``[B, T, H, W]`` (or ``[N, H, W]``), int64 in ``0..C-1``.
        mask_valid: ``[B, T]`` bool, the annotated frames (None: all).
    """
    frames, flags = _frames_and_flags(logits, mask_valid)
    frame_labels = labels.reshape(-1, *labels.shape[-2:])
    if frame_labels.shape != (frames.shape[0],) + frames.shape[-2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the logits {tuple(logits.shape)} (one [H, W] map per frame)")
    if frame_labels.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise ValueError(f"labels must hold integer class indices, got dtype {frame_labels.dtype}")
    num_classes = frames.shape[1]
    if frame_labels.numel():
        low, high = (int(v) for v in torch.aminmax(frame_labels))
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {low}..{high}")
    annotated = flags != 0
    if not bool(annotated.any()):
        _refuse_empty_batch()
        return global_mean(frames.sum() * 0.0, 0)  # this rank has no annotated frame; the others do
    per_frame = F.cross_entropy(frames[annotated], frame_labels[annotated].long(), reduction="none").mean(dim=(1, 2))
    return global_mean((per_frame * flags[annotated]).sum(), flags.sum())


def foreground_map(logits: torch.Tensor, background_index: int = 0) -> torch.Tensor:
    """``1[argmax_c logits ≠ background_index]`` as a float map ``[N, 1, H, W]`` (no gradient)."""
    with torch.no_grad():
        return (logits.argmax(dim=1, keepdim=True) != background_index).to(logits.dtype)


def semantic_avm_loss(
    logits: torch.Tensor,
    audio_list: Sequence[torch.Tensor],
    visual_list: Sequence[torch.Tensor],
    mask_valid: Optional[torch.Tensor] = None,
    normalize: bool = False,
    background_index: int = 0,
) -> torch.Tensor:
    """The AVSS AV-map term ``mean_s Σ_t g_t·KL(softmax(a_t) ‖ softmax(v_t)) / Σ_t g_t`` (scalar).

    Args:
        logits: ``[B, T, C, H, W]`` (or ``[N, C, H, W]``); only their argmax is used.
        audio_list: per stage, audio features ``[B, T, D]`` (or ``[N, D]``).
        visual_list: per stage, visual maps ``[N, D, h, w]`` (or ``[B, T, D, h, w]``), same order.
        mask_valid: ``[B, T]`` bool, the frames that count (None: all).
        normalize: L2-normalise both features over channels first (the official ``norm_fea``; off in
            AVSS training, on in our ECMVAE).
        background_index: the class that is not foreground (0; 70 in the 2023 code).
    """
    if len(audio_list) != len(visual_list) or not audio_list:
        raise ValueError(f"semantic_avm_loss needs one audio and one visual entry per stage, got {len(audio_list)} and {len(visual_list)}")
    frames, flags = _frames_and_flags(logits, mask_valid)
    if not bool((flags != 0).any()):
        _refuse_empty_batch()
    foreground = foreground_map(frames, background_index)
    total = frames.new_zeros(())
    for audio, visual in zip(audio_list, visual_list):
        visual = visual.flatten(0, 1) if visual.dim() == 5 else visual
        audio = audio.reshape(-1, audio.shape[-1])
        if audio.shape != visual.shape[:2] or audio.shape[0] != frames.shape[0]:
            raise ValueError(f"audio {tuple(audio.shape)}, visual map {tuple(visual.shape)} and the "
                             f"{frames.shape[0]} frames of the logits disagree")
        pooled = F.adaptive_avg_pool2d(foreground, visual.shape[-2:])
        masked_visual = (visual * pooled).mean(dim=(2, 3))
        if normalize:
            audio = F.normalize(audio, dim=-1)
            masked_visual = F.normalize(masked_visual, dim=-1)
        per_frame = F.kl_div(F.log_softmax(masked_visual, dim=-1), F.softmax(audio, dim=-1), reduction="none").sum(dim=-1)
        total = total + (per_frame * flags).sum()
    return global_mean(total, flags.sum()) / len(audio_list)

