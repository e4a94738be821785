"""The audio-visual map (AVM) regulariser of AVSBench (``A_MaskedV_SimmLoss`` with ``kl_flag``).

For every fused stage i with visual map Z_i ``[B·T, C, h, w]`` and audio vector A_i ``[B, T, C]``:

1. m_i = sigmoid(adaptive_avg_pool_{h×w}(logits)): the *logits* are pooled, then squashed; the mask
   stays soft;
2. v_i = mean_{h,w}(Z_i ⊙ m_i): a plain mean over all positions (not divided by the mask area);
3. optionally (``normalize=True``, the ECMVAE variant) A_i and v_i are L2-normalised over channels;
4. ℓ_i = Σ_frames KL(softmax(A_i) ‖ softmax(v_i)) = ``F.kl_div(log_softmax(v), softmax(a), 'sum')``.

The loss is the mean of ℓ_i over the stages. As in the official code it is a *sum* over frames, so
its scale grows with the batch size and clip length. Under DDP it is the sum over the frames of the
*global* batch (:func:`avseg.losses.reduction.global_sum`), so its weight does not depend on how the
clips are spread over processes. AVSBench MS3 uses ``normalize=False`` with weight
0.5; ECMVAE (MS3) uses ``normalize=True``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from avseg.losses.reduction import global_sum


def avm_loss(
    logits: torch.Tensor,
    audio_list: Sequence[torch.Tensor],
    visual_list: Sequence[torch.Tensor],
    normalize: bool = False,
) -> torch.Tensor:
    """AV-map KL loss averaged over stages.

    Args:
        logits: predicted mask logits, ``[B, T, 1, H, W]`` or ``[B·T, 1, H, W]``.
        audio_list: per stage, audio features ``[B, T, C]`` (or ``[B·T, C]``).
        visual_list: per stage, visual maps ``[B·T, C, h, w]`` (or ``[B, T, C, h, w]``), same order.
        normalize: L2-normalise both features over channels before the softmax (ECMVAE).
    """
    if len(audio_list) != len(visual_list) or not audio_list:
        raise ValueError(f"avm_loss needs one audio and one visual entry per stage, got {len(audio_list)} and {len(visual_list)}")
    frame_logits = logits.flatten(0, 1) if logits.dim() == 5 else logits
    total = frame_logits.new_zeros(())
    for audio, visual in zip(audio_list, visual_list):
        visual = visual.flatten(0, 1) if visual.dim() == 5 else visual
        audio = audio.reshape(-1, audio.shape[-1])
        if audio.shape != visual.shape[:2]:
            raise ValueError(f"audio {tuple(audio.shape)} and visual map {tuple(visual.shape)} disagree on frames or channels")
        soft_mask = torch.sigmoid(F.adaptive_avg_pool2d(frame_logits, visual.shape[-2:]))
        masked_visual = (visual * soft_mask).mean(dim=(2, 3))
        if normalize:
            audio = F.normalize(audio, dim=-1)
            masked_visual = F.normalize(masked_visual, dim=-1)
        total = total + F.kl_div(F.log_softmax(masked_visual, dim=-1), F.softmax(audio, dim=-1), reduction="sum")
    return global_sum(total) / len(audio_list)
