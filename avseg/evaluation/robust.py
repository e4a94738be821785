"""Evaluation with negative audio: the false-positive rate and the positive–negative summary.

Negative conditions (``eval.audio`` / ``--audio``): ``silent``, ``noise`` and ``offscreen``
(:mod:`avseg.data.negative_audio` makes their sound through the positives' front end). Under them the
right answer is an empty mask, so besides mIoU/F against the clips' original masks (what AVSBench-Robust
reports) avseg reports:

* **FPR** (:func:`false_positive_rate`): per scored frame, the fraction of its pixels predicted sounding
  (:func:`predicted_sounding`: ``sigmoid(logit) > 0.5`` for one logit channel, ``argmax != 0`` over the
  classes, 0 = background, for ``C > 1``), averaged over all scored frames of the split;
* **pn_hmean** (:func:`pn_hmean`): the harmonic mean of the official mIoU under normal audio and
  ``1 − FPR_neg``, where ``FPR_neg`` is the unweighted mean of the FPR over the negative conditions
  evaluated. 0 when either part is 0.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from avseg.data.negative_audio import NEGATIVE_KINDS
from avseg.evaluation import metrics as M

NEGATIVE_MODES = NEGATIVE_KINDS
FPR_LABEL = "mean over scored frames of the fraction of pixels predicted sounding (the whole mask should be empty)"


def predicted_sounding(logits) -> np.ndarray:
    """Bool ``[..., H, W]``: pixels predicted sounding, from logits ``[..., C, H, W]``.

    ``C == 1``: ``sigmoid(logit) > 0.5`` (the mIoU's binarisation); ``C > 1``: ``argmax over C != 0``.
    """
    logits = torch.as_tensor(logits)
    if logits.dim() < 3:
        raise ValueError(f"logits must be [..., C, H, W], got shape {tuple(logits.shape)}")
    if logits.shape[-3] == 1:
        return M.probabilities(logits[..., 0, :, :]) > M.IOU_THRESHOLD
    return (logits.detach().argmax(dim=-3) != 0).cpu().numpy()


def sounding_fraction(foreground: np.ndarray) -> np.ndarray:
    """Fraction of pixels predicted sounding per frame: bool ``[..., H, W]`` → float64 ``[...]``."""
    foreground = np.asarray(foreground, dtype=bool)
    pixels = foreground.shape[-2] * foreground.shape[-1]
    return foreground.reshape(*foreground.shape[:-2], pixels).mean(axis=-1, dtype=np.float64)


def false_positive_rate(clips: Sequence[Any]) -> float:
    """Mean of the per-frame sounding fractions (``clip.sounding`` ``[M]``) over every scored frame of ``clips``."""
    fractions = [np.asarray(clip.sounding, dtype=np.float64) for clip in clips if clip.sounding is not None]
    frames = np.concatenate(fractions) if fractions else np.empty(0)
    return float(frames.mean()) if frames.size else float("nan")


def pn_hmean(miou_normal: float, fpr_negative: float) -> float:
    """Harmonic mean of ``miou_normal`` and ``1 − fpr_negative`` (0 when either is 0)."""
    specificity = 1.0 - fpr_negative
    if miou_normal <= 0 or specificity <= 0:
        return 0.0
    return 2.0 * miou_normal * specificity / (miou_normal + specificity)


def robust_summary(results: Sequence[Any]) -> Optional[Dict[str, Any]]:
    """``{"negative_modes", "fpr", "fpr_negative", "miou_normal", "pn_hmean"}`` of one evaluation per audio mode.

    ``results`` are :class:`~avseg.evaluation.evaluator.EvalResult` s (``.audio``, ``.metrics``). None
    unless both ``normal`` and at least one negative mode are among them.
    """
    by_mode = {result.audio: result for result in results}
    negatives = [mode for mode in NEGATIVE_MODES if mode in by_mode]
    if "normal" not in by_mode or not negatives:
        return None
    fpr = {mode: float(by_mode[mode].metrics["fpr"]) for mode in negatives}
    fpr_negative = float(np.mean(list(fpr.values())))
    miou_normal = float(by_mode["normal"].metrics["miou"])
    return {"negative_modes": negatives, "fpr": fpr, "fpr_negative": fpr_negative, "miou_normal": miou_normal,
            "pn_hmean": pn_hmean(miou_normal, fpr_negative)}


def robust_section(results: Sequence[Any]) -> Dict[str, Any]:
    """``{"robust": robust_summary(results)}`` for ``metrics.json``, or ``{}`` without negative modes."""
    summary = robust_summary(results)
    return {"robust": summary} if summary is not None else {}


def format_robust_table(results: Sequence[Any]) -> str:
    """Markdown: per audio mode mIoU/F (original masks), pixels predicted sounding (the FPR under negative
    audio), and the pn_hmean line; "" without a negative mode."""
    summary = robust_summary(results)
    if summary is None:
        return ""
    lines = ["| audio | negative | mIoU (original masks) | F (original masks) | pixels predicted sounding (FPR when negative) |",
             "|---|---|---|---|---|"]
    for result in results:
        f_key = "fscore_binary" if result.fscore_from_binary else "fscore"
        lines.append(f"| {result.audio} | {'yes' if result.audio in NEGATIVE_MODES else 'no'} | {result.metrics['miou']:.4f} | "
                     f"{result.metrics[f_key]:.4f} | {false_positive_rate(result.clips):.4f} |")
    lines.append(f"\nFPR over {', '.join(summary['negative_modes'])}: {summary['fpr_negative']:.4f}; "
                 f"pn_hmean (harmonic mean of normal-audio mIoU and 1 - FPR): {summary['pn_hmean']:.4f}")
    return "\n".join(lines)
