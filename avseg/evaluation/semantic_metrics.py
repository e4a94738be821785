"""AVSBench-semantic (AVSS) metrics: per-class mIoU and F-score exactly as the official ``avss/test.py``.

Official definitions (``avs_scripts/avss/utils/compute_color_metrics.py``, ``_batch_miou_fscore`` and
``test.py``), for logits ``[N, C, H, W]`` and class labels ``[N, H, W]`` (``C = 71``, background 0):

* per frame the prediction is the arg-max class; for each class ``c`` the frame's pixel counts
  ``inter_c`` (predicted ``c`` and labelled ``c``), ``pred_c``, ``lab_c`` and
  ``union_c = pred_c + lab_c - inter_c`` give ``IoU_c = inter_c / (2.22e-16 + union_c)`` and
  ``F_c = 1.3 P R / (0.3 P + R)`` with ``P = inter_c / pred_c``, ``R = inter_c / lab_c`` (NaN → 0, so a
  class only predicted, only labelled, or both without overlap scores 0);
* ``IoU_c`` and ``F_c`` are summed over frames, and ``class_frames_c`` counts the frames with
  ``union_c > 0``; over the whole test set ``IoU_c = sum / class_frames`` (0 for a class never
  predicted nor labelled), and mIoU / F are the plain means over **all** ``C`` classes;
* ``miou_no_last_class`` / ``fscore_no_last_class`` are the official ``miou_noBg`` / ``f_score_noBg``,
  which drop the **last** class index (70), not background (0).

Padded frames: ``v1s``/``v1m`` clips are padded to 10 frames. The official metric scores every frame,
and the official model multiplies its output by the frame flag, so a padded frame has all-zero logits:
it is predicted background everywhere and (with its all-background padded label) adds IoU 1, F 1 and
one frame to class 0. :class:`AVSSMetric` keeps two sets of sums:

* ``official``: every frame; frames marked ``frame_valid = False`` are scored as predicted background
  (what the official model's zero logits give), whatever logits are passed for them;
* ``real_frames``: padded frames skipped (``frame_valid = False`` frames add nothing).

Arg-max ties: the official takes ``argmax(softmax(logits))``; softmax is monotonic, so this is the
first maximal logit except where two logits differ by less than float32 rounding of the softmax (the
official then keeps the lower index). Here the arg-max is the first maximal logit; a pixel whose
largest logit is NaN or +inf gets class 0, as the official softmax turns such a pixel into NaNs.

The sums are float64 (the official accumulates in float32; the difference is far below 1e-6). They
are additive: :meth:`AVSSMetric.state` gives one ``[2, 3, C]`` tensor that can be all-reduced (summed)
across processes and loaded back with :meth:`AVSSMetric.load_state`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

IOU_EPS = 2.220446049250313e-16
F_BETA2 = 0.3

OFFICIAL = "official"
REAL_FRAMES = "real_frames"
VARIANTS = (OFFICIAL, REAL_FRAMES)
VARIANT_LABELS = {
    OFFICIAL: "official (every frame; padded frames scored as predicted background)",
    REAL_FRAMES: "real frames only (padded frames skipped)",
}
IOU_SUM, FSCORE_SUM, CLASS_FRAMES = 0, 1, 2
STATE_ROWS = 3

# first_max_classes packs "which channels reach the maximum" into one float per pixel: channel c weighs
# 2**(K - 2c), so the sum's binary exponent names the first maximal channel (later ones add < 1/3 of
# the first one's weight, which cannot carry into the next exponent). float32 keeps the weights normal
# for C <= 127; more classes fall back to torch.argmax.
MAX_PACKED_CLASSES = 127
PIXELS_PER_BLOCK = 8192  # pixels per block: one frame's [C, 8192] logits (2.3 MB) stay in the last-level cache

TensorLike = Union[torch.Tensor, np.ndarray]


_FLOAT_LAYOUT = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}  # bits, mantissa, bias


def _packing_exponent(num_classes: int) -> int:
    """Odd ``K >= C - 1``: channel ``c`` weighs ``2**(K - 2c)``, so ``biased exponent >> 1`` is ``const - c``."""
    return (num_classes - 1) | 1


def _packing_weights(num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    exponents = _packing_exponent(num_classes) - 2 * torch.arange(num_classes, dtype=torch.float64)
    return torch.pow(2.0, exponents).to(dtype).view(1, num_classes)


def first_max_classes(logits: torch.Tensor) -> torch.Tensor:
    """Index of the first maximal logit per pixel: ``[N, C, H, W]`` → int64 ``[N, H, W]`` (on the CPU).

    On the CPU a blocked, cache-resident pass (maximum, equality, one matrix product per block) that
    is several times faster than ``torch.argmax(dim=1)``; elsewhere ``torch.argmax``. Pixels whose
    largest logit is NaN or +inf get class 0 on the CPU (the official softmax makes them NaN).
    """
    return _first_max_classes(logits).long().cpu()


def _first_max_classes(logits: torch.Tensor) -> torch.Tensor:
    """:func:`first_max_classes` as int32 on the CPU path (int64 from ``torch.argmax`` elsewhere)."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be [N, C, H, W], got {list(logits.shape)}")
    num_frames, num_classes, height, width = logits.shape
    if logits.device.type != "cpu" or num_classes > MAX_PACKED_CLASSES or logits.numel() == 0:
        return logits.argmax(dim=1)
    work_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    num_pixels = height * width
    flat = logits.detach().reshape(num_frames, num_classes, num_pixels)
    weights = _packing_weights(num_classes, work_dtype)
    block = min(PIXELS_PER_BLOCK, num_pixels)
    hits = torch.empty(num_classes, block, dtype=work_dtype)
    tops = torch.empty(num_frames, 1, num_pixels, dtype=work_dtype)
    packed = torch.empty(num_frames, 1, num_pixels, dtype=work_dtype)
    for frame in range(num_frames):
        for start in range(0, num_pixels, block):
            stop = min(start + block, num_pixels)
            values = flat[frame, :, start:stop].to(work_dtype)  # [C, block]
            top = tops[frame, :, start:stop]
            torch.amax(values, dim=0, keepdim=True, out=top)
            block_hits = hits[:, : stop - start]
            torch.eq(values, top, out=block_hits)
            torch.mm(weights, block_hits, out=packed[frame, :, start:stop])
    bits_dtype, mantissa_bits, bias = _FLOAT_LAYOUT[work_dtype]
    first_class = (bias + _packing_exponent(num_classes)) // 2
    classes = torch.bitwise_right_shift(packed.view(bits_dtype), mantissa_bits + 1).neg_().add_(first_class)
    classes.masked_fill_(~torch.isfinite(tops), 0)
    return classes.to(torch.int32).view(num_frames, height, width)


def _valid_runs(frame_valid: torch.Tensor) -> List[Tuple[int, int]]:
    """``[start, stop)`` ranges of consecutive True entries of a bool ``[N]`` tensor."""
    valid = frame_valid.tolist()
    runs, start = [], None
    for index, flag in enumerate(valid + [False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index))
            start = None
    return runs


def frame_class_counts(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-frame pixel counts ``[N, 3, C]`` int64: rows ``inter``, ``pred``, ``lab`` (official histograms).

    ``predicted`` and ``labels``: integer ``[N, H, W]`` CPU class maps with values in ``0..C-1``.
    One ``bincount`` of ``(frame, predicted, labelled)`` gives every frame's confusion matrix.
    """
    num_frames = predicted.shape[0]
    bins_per_frame = num_classes * num_classes
    key_dtype = torch.int32 if num_frames * bins_per_frame < 2**31 else torch.int64
    keys = torch.add(labels.reshape(num_frames, -1).to(key_dtype), predicted.reshape(num_frames, -1).to(key_dtype), alpha=num_classes)
    keys += torch.arange(num_frames, dtype=key_dtype).view(-1, 1) * bins_per_frame
    confusion = torch.bincount(keys.view(-1), minlength=num_frames * bins_per_frame)
    confusion = confusion.view(num_frames, num_classes, num_classes)  # [frame, predicted, labelled]
    inter = torch.diagonal(confusion, dim1=1, dim2=2)
    return torch.stack([inter, confusion.sum(dim=2), confusion.sum(dim=1)], dim=1)


def frame_scores(counts: torch.Tensor) -> torch.Tensor:
    """Official per-frame, per-class ``[N, 3, C]`` float64: ``IoU_c``, ``F_c`` and ``union_c > 0``.

    ``counts``: ``[N, 3, C]`` from :func:`frame_class_counts`.
    """
    inter, pred, lab = counts.double().unbind(dim=1)
    union = pred + lab - inter
    iou = inter / (IOU_EPS + union)
    precision = inter / pred
    recall = inter / lab
    fscore = torch.nan_to_num((1 + F_BETA2) * precision * recall / (F_BETA2 * precision + recall), nan=0.0)
    return torch.stack([iou, fscore, (union > 0).double()], dim=1)


def _as_tensor(value: TensorLike) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


class AVSSMetric:
    """Dataset-level AVSS mIoU and F-score, accumulated batch by batch (see the module docstring).

    ``update(logits [N, C, H, W], labels [N, H, W] int64, frame_valid [N] bool = None)`` per batch;
    ``compute(variant)`` → ``{"miou", "fscore", "miou_no_last_class", "fscore_no_last_class",
    "per_class_iou" [C], "per_class_fscore" [C], "class_frames" [C]}``.
    """

    def __init__(self, num_classes: int = 71):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self._sums = torch.zeros(len(VARIANTS), STATE_ROWS, num_classes, dtype=torch.float64)

    def reset(self) -> None:
        self._sums.zero_()

    def update(self, logits: TensorLike, labels: TensorLike, frame_valid: Optional[TensorLike] = None) -> None:
        """Add one batch: ``logits`` ``[N, C, H, W]``, ``labels`` ``[N, H, W]`` (0..C-1), ``frame_valid`` ``[N]``.

        The arg-max is only computed for valid frames (padded frames are predicted background).
        """
        logits = _as_tensor(logits)
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N, {self.num_classes}, H, W], got {list(logits.shape)}")
        valid = self._frame_valid(frame_valid, logits.shape[0])
        labels = self._checked_classes(labels, "labels", torch.Size([logits.shape[0], *logits.shape[2:]]))
        predicted = torch.zeros(labels.shape, dtype=torch.int32)
        for start, stop in _valid_runs(valid):
            predicted[start:stop] = _first_max_classes(logits[start:stop]).cpu()
        self._accumulate(predicted, labels, valid)

    def update_classes(self, predicted: TensorLike, labels: TensorLike, frame_valid: Optional[TensorLike] = None) -> None:
        """Add one batch of predicted class maps ``[N, H, W]`` (e.g. an arg-max taken on the GPU).

        Frames with ``frame_valid = False`` are scored as predicted background in the official sums
        (their ``predicted`` entries are ignored) and skipped in the real-frames sums.
        """
        predicted = self._checked_classes(predicted, "predictions")
        labels = self._checked_classes(labels, "labels", predicted.shape)
        valid = self._frame_valid(frame_valid, predicted.shape[0])
        self._accumulate(predicted.masked_fill(~valid.view(-1, 1, 1), 0), labels, valid)

    def _accumulate(self, predicted: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> None:
        scores = frame_scores(frame_class_counts(predicted, labels, self.num_classes))  # [N, 3, C]
        self._sums[VARIANTS.index(OFFICIAL)] += scores.sum(dim=0)
        self._sums[VARIANTS.index(REAL_FRAMES)] += scores[valid].sum(dim=0)

    def _checked_classes(self, classes: TensorLike, name: str, shape: Optional[torch.Size] = None) -> torch.Tensor:
        """Integer ``[N, H, W]`` class maps in ``0..C-1`` (of ``shape`` when given), on the CPU."""
        classes = _as_tensor(classes).detach().cpu()
        if classes.ndim != 3 or (shape is not None and classes.shape != shape):
            expected = list(shape) if shape is not None else "[N, H, W]"
            raise ValueError(f"{name} must be {expected} class maps, got {list(classes.shape)}")
        if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
            raise ValueError(f"{name} must be integer class indices, got {classes.dtype}")
        if classes.numel():
            low, high = torch.aminmax(classes)
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"{name} must lie in 0..{self.num_classes - 1}, got {int(low)}..{int(high)}")
        return classes

    @staticmethod
    def _frame_valid(frame_valid: Optional[TensorLike], num_frames: int) -> torch.Tensor:
        if frame_valid is None:
            return torch.ones(num_frames, dtype=torch.bool)
        valid = _as_tensor(frame_valid).detach().cpu().reshape(-1)
        if valid.shape[0] != num_frames:
            raise ValueError(f"frame_valid must have one entry per frame ({num_frames}), got {valid.shape[0]}")
        return valid.bool()

    def state(self) -> torch.Tensor:
        """The additive sums, float64 ``[2 variants, 3 (IoU sum, F sum, class frames), C]`` (a copy)."""
        return self._sums.clone()

    def merge(self, state: torch.Tensor) -> None:
        """Add another metric's :meth:`state` (e.g. from another process or data shard)."""
        self._sums += self._checked_state(state)

    def load_state(self, state: torch.Tensor) -> None:
        """Replace the sums, e.g. with an all-reduced (summed over processes) :meth:`state`."""
        self._sums = self._checked_state(state).clone()

    def _checked_state(self, state: torch.Tensor) -> torch.Tensor:
        if tuple(state.shape) != tuple(self._sums.shape):
            raise ValueError(f"an AVSSMetric state is {list(self._sums.shape)}, got {list(state.shape)}")
        return state.detach().cpu().double()

    def compute(self, variant: str = OFFICIAL) -> Dict[str, object]:
        """Dataset numbers of ``variant`` (``official`` or ``real_frames``); see the module docstring."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown AVSS metric variant '{variant}' (expected one of {VARIANTS})")
        iou_sum, fscore_sum, class_frames = self._sums[VARIANTS.index(variant)].numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class_iou = np.nan_to_num(iou_sum / class_frames, nan=0.0)
            per_class_fscore = np.nan_to_num(fscore_sum / class_frames, nan=0.0)
        return {
            "miou": float(per_class_iou.mean()),
            "fscore": float(per_class_fscore.mean()),
            "miou_no_last_class": float(per_class_iou[:-1].mean()),
            "fscore_no_last_class": float(per_class_fscore[:-1].mean()),
            "per_class_iou": per_class_iou,
            "per_class_fscore": per_class_fscore,
            "class_frames": class_frames.astype(np.int64),
        }


__all__ = [
    "AVSSMetric",
    "OFFICIAL",
    "REAL_FRAMES",
    "VARIANTS",
    "VARIANT_LABELS",
    "first_max_classes",
    "frame_class_counts",
    "frame_scores",
]
