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
  (what the official model's zero logits give), whatever logits are passed for them; real frames
  without an annotation (``mask_valid = False``, their label is the all-background padding) are scored
  against that padding, as the official code does;
* ``real_frames``: only real, annotated frames (``frame_valid`` and ``mask_valid``); padded frames add
  nothing.

Arg-max ties: the official takes ``argmax(softmax(logits))``; softmax is monotonic, so this is the
first maximal logit except where two logits differ by less than float32 rounding of the softmax (the
official then keeps the lower index). Here the arg-max is the first maximal logit; a pixel with a NaN
logit or an infinite maximum gets class 0, as the official softmax turns such a pixel into NaNs.

Speed: on the CPU a compiled kernel (``avseg/evaluation/_class_confusion.c``, built by ``pip install``)
reads float32 logits once and gives every pixel's arg-max and every frame's confusion counts in the
same pass, frames split over ``torch.get_num_threads()`` threads. Without it (no C compiler at install,
``fused=False``, logits on a GPU or not float32) one ``max_pool2d`` pass gives the arg-max
(:func:`first_max_classes`) and one ``bincount`` of int32 ``(frame, predicted, labelled)`` keys the
confusion counts; both paths give the same class maps and counts. Both variants come from the same
per-frame scores.

The sums are float64 (the official accumulates in float32; the difference is far below 1e-6). They
are additive: :meth:`AVSSMetric.state` gives one ``[2, 3, C]`` tensor that can be all-reduced (summed)
across processes and loaded back with :meth:`AVSSMetric.load_state`.

:class:`AVSSEvaluator` runs a model over a loader of AVSS clips (``labels`` ``[B, T, H, W]``,
``frame_valid`` and ``mask_valid`` ``[B, T]``, logits ``[B, T, C, H, W]``), all-reduces the sums under
``torch.distributed`` and writes the per-class CSV (:data:`PER_CLASS_FIELDS`); ``tools/eval.py`` uses it
for configs with ``data.task: avss`` and prints both variants (:func:`format_avss_table`).
"""
from __future__ import annotations

import csv
import functools
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

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

TensorLike = Union[torch.Tensor, np.ndarray]

try:
    from avseg.evaluation import _class_confusion
except ImportError:  # built by `pip install` where a C compiler is present; the torch path gives the same numbers
    _class_confusion = None


def fused_kernel_available() -> bool:
    """Whether the compiled arg-max + confusion kernel was built (``avseg/evaluation/_class_confusion.c``)."""
    return _class_confusion is not None


def _check_fused(fused: Optional[bool]) -> None:
    """``fused=True`` asks for the compiled kernel: an error when it is not built."""
    if fused and _class_confusion is None:
        raise RuntimeError("fused=True: the compiled AVSS kernel avseg.evaluation._class_confusion is not built "
                           "(reinstall avseg with a C compiler present, or pass fused=None/False)")


def pixels_as_channels(logits: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` contiguous logits seen as a channels-last ``[N, H·W, 1, C]`` tensor (a view, no copy):
    each pixel a channel and the classes the width, so a ``(1, C)`` pooling window reduces the class axis."""
    num_frames, num_classes = logits.shape[:2]
    return logits.reshape(num_frames, num_classes, -1).transpose(1, 2).unsqueeze(2)


def first_max_classes(logits: torch.Tensor) -> torch.Tensor:
    """Index of the first maximal logit per pixel: ``[N, C, H, W]`` → int64 ``[N, H, W]`` (on the CPU).

    Equals ``torch.argmax(logits, dim=1)`` (ties → the lowest index), except that a pixel with a NaN
    logit or an infinite maximum gets class 0, as the official softmax turns such a pixel into NaNs.
    On the CPU one pass of ``max_pool2d(return_indices=True)`` over the class axis of
    :func:`pixels_as_channels`: the pooling kernel keeps a running maximum and its
    index for all pixels at once (a strict ``>``, so the first maximum wins), several times faster than
    ``torch.argmax(dim=1)``, whose reduction runs across the strided class axis.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be [N, C, H, W], got {list(logits.shape)}")
    num_frames, num_classes, height, width = logits.shape
    logits = logits.detach()
    if logits.numel() == 0:
        return torch.zeros(num_frames, height, width, dtype=torch.long)
    if logits.device.type != "cpu":
        top, classes = logits.max(dim=1)
    else:
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        top, classes = torch.nn.functional.max_pool2d(pixels_as_channels(logits), kernel_size=(1, num_classes), return_indices=True)
    classes = classes.view(num_frames, height, width)
    if not bool(torch.isfinite(torch.stack(torch.aminmax(top))).all()):  # one cheap pass decides
        classes.masked_fill_(~torch.isfinite(top.view(num_frames, height, width)), 0)
    return classes.cpu()


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


def frame_confusions(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-frame confusion counts ``[N, C, C]`` int64, indexed ``[frame, predicted, labelled]``.

    ``predicted`` and ``labels``: integer ``[N, H, W]`` CPU class maps with values in ``0..C-1``.
    One ``bincount`` of ``(frame, predicted, labelled)`` keys gives every frame's confusion matrix.
    """
    num_frames = predicted.shape[0]
    bins_per_frame = num_classes * num_classes
    key_dtype = torch.int32 if num_frames * bins_per_frame < 2**31 else torch.int64
    keys = torch.add(labels.reshape(num_frames, -1).to(key_dtype), predicted.reshape(num_frames, -1).to(key_dtype), alpha=num_classes)
    keys += torch.arange(num_frames, dtype=key_dtype).view(-1, 1) * bins_per_frame
    confusion = torch.bincount(keys.view(-1), minlength=num_frames * bins_per_frame)
    return confusion.view(num_frames, num_classes, num_classes)


def class_counts(confusion: torch.Tensor) -> torch.Tensor:
    """Official per-frame histograms ``[N, 3, C]`` (rows ``inter``, ``pred``, ``lab``) of ``[N, C, C]`` confusions."""
    inter = torch.diagonal(confusion, dim1=1, dim2=2)
    return torch.stack([inter, confusion.sum(dim=2), confusion.sum(dim=1)], dim=1)


def frame_class_counts(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-frame pixel counts ``[N, 3, C]`` int64 of class maps ``[N, H, W]``: rows ``inter``, ``pred``, ``lab``."""
    return class_counts(frame_confusions(predicted, labels, num_classes))


@functools.lru_cache(maxsize=None)
def _thread_pool(threads: int, process_id: int) -> ThreadPoolExecutor:
    """One pool per thread count and process (a forked child gets its own: the parent's threads are not there)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="avss-metric")


def classes_and_confusions(logits: torch.Tensor, labels: torch.Tensor, fused: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Arg-max class maps int64 ``[N, H, W]`` (as :func:`first_max_classes`) and confusions ``[N, C, C]``.

    ``logits`` ``[N, C, H, W]``; ``labels`` integer ``[N, H, W]`` CPU class maps in ``0..C-1``. ``fused``:
    None takes the compiled kernel for CPU float32 logits when it is built, False always the torch path
    (``max_pool2d`` + ``bincount``), True the kernel or an error when it is not built.
    """
    _check_fused(fused)
    num_frames, num_classes = logits.shape[:2]
    if fused is False or _class_confusion is None or logits.device.type != "cpu" or logits.dtype != torch.float32:
        classes = first_max_classes(logits)
        return classes, frame_confusions(classes, labels, num_classes)
    classes = torch.empty(labels.shape, dtype=torch.long)
    confusion = torch.empty(num_frames, num_classes, num_classes, dtype=torch.long)
    buffers = (logits.detach().contiguous().numpy(), labels.to(torch.int64).contiguous().numpy(), classes.numpy(), confusion.numpy())
    threads = max(1, min(torch.get_num_threads(), num_frames))
    bounds = [num_frames * part // threads for part in range(threads + 1)]
    if threads == 1:
        _class_confusion.argmax_confusion(*buffers, num_classes, 0, num_frames)
    else:
        pool = _thread_pool(threads, os.getpid())
        list(pool.map(lambda part: _class_confusion.argmax_confusion(*buffers, num_classes, bounds[part], bounds[part + 1]), range(threads)))
    return classes, confusion


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

    ``update(logits [N, C, H, W], labels [N, H, W] int64, frame_valid [N] = None, mask_valid [N] = None)``
    per batch (one pass fills both variants); ``compute(variant)`` → ``{"miou", "fscore", "miou_no_last_class", "fscore_no_last_class",
    "per_class_iou" [C], "per_class_fscore" [C], "class_frames" [C]}``. ``fused``: as in
    :func:`classes_and_confusions` (None: the compiled kernel when built).
    """

    def __init__(self, num_classes: int = 71, fused: Optional[bool] = None):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        _check_fused(fused)
        self.num_classes = num_classes
        self.fused = fused
        self._sums = torch.zeros(len(VARIANTS), STATE_ROWS, num_classes, dtype=torch.float64)

    def reset(self) -> None:
        self._sums.zero_()

    def update(self, logits: TensorLike, labels: TensorLike, frame_valid: Optional[TensorLike] = None,
               mask_valid: Optional[TensorLike] = None) -> torch.Tensor:
        """Add one batch: ``logits`` ``[N, C, H, W]``, ``labels`` ``[N, H, W]`` (0..C-1), flags ``[N]``.

        ``frame_valid``: real (not padded) frames; ``mask_valid``: annotated frames (None: all).
        The arg-max is only computed for real frames (padded frames are predicted background).
        Returns the scored class maps, int64 ``[N, H, W]`` on the CPU (0 on padded frames).
        """
        logits = _as_tensor(logits)
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N, {self.num_classes}, H, W], got {list(logits.shape)}")
        real = self._flags(frame_valid, logits.shape[0], "frame_valid")
        labels = self._checked_classes(labels, "labels", torch.Size([logits.shape[0], *logits.shape[2:]]))
        runs = _valid_runs(real)
        if runs == [(0, logits.shape[0])]:
            predicted, confusion = classes_and_confusions(logits, labels, self.fused)
        else:
            predicted = torch.zeros(labels.shape, dtype=torch.long)
            confusion = frame_confusions(predicted, labels, self.num_classes)
            for start, stop in runs:
                predicted[start:stop], confusion[start:stop] = classes_and_confusions(logits[start:stop], labels[start:stop], self.fused)
        self._accumulate(confusion, real & self._flags(mask_valid, logits.shape[0], "mask_valid"))
        return predicted

    def update_classes(self, predicted: TensorLike, labels: TensorLike, frame_valid: Optional[TensorLike] = None,
                       mask_valid: Optional[TensorLike] = None) -> None:
        """Add one batch of predicted class maps ``[N, H, W]`` (e.g. an arg-max taken on the GPU).

        Frames with ``frame_valid = False`` are scored as predicted background in the official sums
        (their ``predicted`` entries are ignored); the real-frames sums take the frames that are real and
        annotated (``mask_valid``, None: all).
        """
        predicted = self._checked_classes(predicted, "predictions")
        labels = self._checked_classes(labels, "labels", predicted.shape)
        real = self._flags(frame_valid, predicted.shape[0], "frame_valid")
        scored = real & self._flags(mask_valid, predicted.shape[0], "mask_valid")
        self._accumulate(frame_confusions(predicted.masked_fill(~real.view(-1, 1, 1), 0), labels, self.num_classes), scored)

    def _accumulate(self, confusion: torch.Tensor, scored: torch.Tensor) -> None:
        """Official sums over every frame of ``confusion`` ``[N, C, C]``, real-frames sums over the ``scored`` ``[N]`` frames."""
        scores = frame_scores(class_counts(confusion))  # [N, 3, C]
        self._sums[VARIANTS.index(OFFICIAL)] += scores.sum(dim=0)
        self._sums[VARIANTS.index(REAL_FRAMES)] += scores[scored].sum(dim=0)

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
    def _flags(flags: Optional[TensorLike], num_frames: int, name: str) -> torch.Tensor:
        """Bool ``[N]`` from per-frame flags (any shape with ``N`` entries); None → all True."""
        if flags is None:
            return torch.ones(num_frames, dtype=torch.bool)
        valid = _as_tensor(flags).detach().cpu().reshape(-1)
        if valid.shape[0] != num_frames:
            raise ValueError(f"{name} must have one entry per frame ({num_frames}), got {valid.shape[0]}")
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


# ----------------------------------------------------------------------------- dataset-level evaluation
AVSS_TASK = "avss"
PER_CLASS_FIELDS = ("class_index", "class_name", "iou", "fscore", "frames_present",
                    "iou_real_frames", "fscore_real_frames", "frames_present_real_frames")


@dataclass
class AVSSClip:
    """One evaluated clip of ``frames`` frames (padding included): ``sounding`` ``[M]`` is the fraction of
    non-background pixels predicted on each of its ``M`` real, annotated frames."""

    index: int
    video_id: str
    category: str
    frames: int
    sounding: np.ndarray


@dataclass
class AVSSResult:
    """One AVSS evaluation: flat ``metrics`` (official ``miou``/``fscore``, ``*_real_frames``), and per variant
    the :meth:`AVSSMetric.compute` dictionaries in ``variants``. Shaped like ``EvalResult`` where the
    evaluation pipeline reads it (``audio``, ``metrics``, ``clips`` with ``sounding``, ``summary()``)."""

    metrics: Dict[str, float]
    variants: Dict[str, Dict[str, object]]
    class_names: List[str]
    clips: List[AVSSClip]
    batch_clips: int
    audio: str = "normal"
    seconds: float = 0.0
    files: Dict[str, str] = field(default_factory=dict)
    task: str = AVSS_TASK
    fscore_from_binary: bool = False

    @property
    def num_frames(self) -> int:
        """Frames in the official sums (every frame, padding included)."""
        return sum(clip.frames for clip in self.clips)

    @property
    def num_real_frames(self) -> int:
        """Frames in the real-frames sums."""
        return sum(len(clip.sounding) for clip in self.clips)

    def labels(self) -> Dict[str, str]:
        labels = {"miou": VARIANT_LABELS[OFFICIAL], "fscore": VARIANT_LABELS[OFFICIAL],
                  "miou_real_frames": VARIANT_LABELS[REAL_FRAMES], "fscore_real_frames": VARIANT_LABELS[REAL_FRAMES],
                  "miou_no_last_class": "official miou_noBg: mean over classes 0..C-2 (drops the last class, not background)"}
        if "fpr" in self.metrics:
            from avseg.evaluation.robust import FPR_LABEL

            labels["fpr"] = FPR_LABEL
        return labels

    def per_class(self) -> List[Dict[str, object]]:
        """One row per class (:data:`PER_CLASS_FIELDS`): index, name, IoU, F, frames where it is in prediction ∪ GT."""
        official, real = self.variants[OFFICIAL], self.variants[REAL_FRAMES]
        return [
            dict(zip(PER_CLASS_FIELDS, (c, name, float(official["per_class_iou"][c]), float(official["per_class_fscore"][c]),
                                        int(official["class_frames"][c]), float(real["per_class_iou"][c]),
                                        float(real["per_class_fscore"][c]), int(real["class_frames"][c]))))
            for c, name in enumerate(self.class_names)
        ]

    def write_per_class_csv(self, path) -> None:
        from avseg.fileio import atomic_write_text

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(PER_CLASS_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.per_class())
        atomic_write_text(path, buffer.getvalue())

    def summary(self) -> Dict[str, object]:
        """The JSON-ready record of this evaluation (one audio mode of ``metrics.json``)."""
        return {"audio": self.audio, "task": self.task, "metrics": self.metrics, "labels": self.labels(),
                "clips": len(self.clips), "frames": self.num_frames, "real_frames": self.num_real_frames, "seconds": round(self.seconds, 3),
                "per_class": self.per_class(), "files": self.files}


def _class_names(dataset, num_classes: int) -> List[str]:
    """``dataset.class_names`` (through wrappers with ``.dataset``), else ``class_<i>``; checked against ``num_classes``."""
    while dataset is not None and getattr(dataset, "class_names", None) is None:
        dataset = getattr(dataset, "dataset", None)
    names = list(getattr(dataset, "class_names", None) or [f"class_{c}" for c in range(num_classes)])
    if len(names) != num_classes:
        raise ValueError(f"the dataset names {len(names)} classes (label2idx.json), the model predicts {num_classes}")
    return names


class AVSSEvaluator:
    """AVSS mIoU and F (official and real-frames variants) over a loader of clips, exact under DDP.

    ``run(model, loader, device)`` feeds every batch's logits ``[B, T, C, H, W]``, ``labels`` ``[B, T, H, W]``,
    ``frame_valid`` and ``mask_valid`` ``[B, T]`` to one :class:`AVSSMetric`; under ``torch.distributed``
    the per-class sums are all-reduced (summed: exact, the evaluation loader repeats no clip), so every
    rank holds the single-process result. ``out_dir`` (rank 0): ``per_class[_<audio>].csv``.
    """

    primary_metric = "miou"
    higher_is_better = True

    def __init__(self, num_classes: int = 71, batch_clips: int = 4, out_dir: Optional[str] = None,
                 progress: bool = True, meta: Optional[Dict[str, object]] = None):
        self.num_classes = int(num_classes)
        self.batch_clips = int(batch_clips)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.meta = dict(meta or {})

    @classmethod
    def from_config(cls, cfg, out_dir: Optional[str] = None, **overrides) -> "AVSSEvaluator":
        """``model.num_classes``, ``eval.batch_size``, progress bar ``train.progress``. The binary evaluator's
        files are not written: ``eval.save_masks`` / ``eval.save_rle`` with an ``out_dir`` are an error, the
        qualitative grid (``num_vis``) is skipped."""
        from avseg.errors import ConfigError

        if cfg.model.num_classes < 2:
            raise ConfigError(f"data.task '{AVSS_TASK}' needs a semantic model: model.num_classes is {cfg.model.num_classes}, "
                              "expected 71 (e.g. configs/avss.yaml)")
        wants_files = [key for key in ("save_masks", "save_rle") if overrides.get(key, cfg.eval[key])]
        if out_dir is not None and wants_files:
            raise ConfigError(f"eval.{wants_files[0]} (--{wants_files[0].replace('_', '-')}) writes binary masks; "
                              f"data.task '{AVSS_TASK}' writes per_class.csv instead")
        options = dict(num_classes=cfg.model.num_classes, batch_clips=cfg.eval.batch_size, out_dir=out_dir,
                       progress=bool(cfg.train.progress))
        options.update({key: value for key, value in overrides.items() if key in ("progress", "meta", "batch_clips")})
        return cls(**options)

    def evaluate(self, model, loader, device) -> Dict[str, float]:
        """Flat metrics (the trainer's protocol): ``miou``, ``fscore`` (official) and ``*_real_frames``."""
        return self.run(model, loader, device).metrics

    def run(self, model, loader, device) -> AVSSResult:
        """Evaluate ``model`` on every clip of ``loader``; write the per-class CSV to ``out_dir`` when set."""
        from avseg.engine.distributed import all_gather_objects, all_reduce_sum, get_rank, is_distributed, unwrap_model
        from avseg.errors import ConfigError
        from avseg.evaluation.evaluator import AudioCounterfactual, inference_keys, loader_indices

        device = torch.device(device)
        model = unwrap_model(model)
        input_keys = inference_keys(model)
        indices = loader_indices(loader)
        audio = loader.dataset.mode if isinstance(loader.dataset, AudioCounterfactual) else "normal"
        class_names = _class_names(loader.dataset, self.num_classes)
        metric = AVSSMetric(self.num_classes)
        clips: List[AVSSClip] = []
        was_training = model.training
        model.eval()
        start, position = time.perf_counter(), 0
        try:
            with torch.no_grad():
                for batch in self._progress(loader, get_rank()):
                    missing = [key for key in (*input_keys, "labels", "frame_valid") if key not in batch]
                    if missing:
                        raise ConfigError(f"the AVSS evaluation needs batch entries {missing}, which the dataset items lack")
                    logits = model(**{key: batch[key].to(device, non_blocking=True) for key in input_keys})["logits"]
                    batch_indices = indices[position : position + logits.shape[0]]
                    position += logits.shape[0]
                    clips += self._add_batch(metric, batch, batch_indices, logits)
        finally:
            model.train(was_training)
        if position != len(indices):
            raise RuntimeError(f"the loader yielded {position} clips but its sampler lists {len(indices)}")
        if is_distributed():
            reduced = all_reduce_sum(metric.state().to(device))  # float64 sums of integers and of per-frame scores
            metric.load_state(reduced.cpu())
            clips = [clip for part in all_gather_objects(clips) for clip in part]
            seconds = max(all_gather_objects(time.perf_counter() - start))
        else:
            seconds = time.perf_counter() - start
        clips.sort(key=lambda clip: clip.index)
        return self._finish(metric, class_names, clips, audio, seconds)

    def score_predictions(self, predictions, dataset, num_workers: int = 0):
        """Saved predictions (``preds.json``) hold binary masks: an AVSS evaluation needs the model."""
        from avseg.errors import ConfigError

        raise ConfigError(f"{predictions.path}: saved predictions are binary masks; evaluate an AVSS model "
                          "with --ckpt or --load instead of --preds")

    def _add_batch(self, metric: AVSSMetric, batch, batch_indices: List[int], logits: torch.Tensor) -> List[AVSSClip]:
        labels = batch["labels"]
        if logits.dim() != 5 or logits.shape[:2] != labels.shape[:2] or logits.shape[3:] != labels.shape[2:]:
            raise ValueError(f"the model's logits have shape {tuple(logits.shape)}; expected [B, T, C, H, W] matching "
                             f"the labels {tuple(labels.shape)}")
        frames, clip_frames = logits.shape[0] * logits.shape[1], int(logits.shape[1])
        frame_valid = batch["frame_valid"].reshape(-1).bool().cpu()
        mask_valid = batch["mask_valid"].reshape(-1).bool().cpu() if "mask_valid" in batch else torch.ones(frames, dtype=torch.bool)
        predicted = metric.update(logits.flatten(0, 1), labels.flatten(0, 1), frame_valid, mask_valid)
        sounding = (predicted != 0).flatten(1).double().mean(dim=1)[frame_valid & mask_valid].numpy()
        scored = (frame_valid & mask_valid).view(-1, clip_frames).sum(dim=1).tolist()
        bounds = np.cumsum([0] + scored)
        categories = batch.get("category", [""] * len(batch_indices))
        return [AVSSClip(int(index), str(batch["video_id"][b]), str(categories[b]), clip_frames, sounding[bounds[b]:bounds[b + 1]])
                for b, index in enumerate(batch_indices)]

    def _progress(self, iterable, rank: int):
        if not self.progress or rank != 0:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc="eval avss", unit="batch", leave=False, dynamic_ncols=True)

    def _finish(self, metric: AVSSMetric, class_names: List[str], clips: List[AVSSClip], audio: str, seconds: float) -> AVSSResult:
        from avseg.engine.distributed import get_rank
        from avseg.evaluation import robust

        variants = {variant: metric.compute(variant) for variant in VARIANTS}
        official, real = variants[OFFICIAL], variants[REAL_FRAMES]
        metrics = {"miou": official["miou"], "fscore": official["fscore"],
                   "miou_real_frames": real["miou"], "fscore_real_frames": real["fscore"],
                   "miou_no_last_class": official["miou_no_last_class"], "fscore_no_last_class": official["fscore_no_last_class"]}
        if audio in robust.NEGATIVE_MODES:
            metrics["fpr"] = robust.false_positive_rate(clips)
        result = AVSSResult(metrics, variants, class_names, clips, self.batch_clips, audio, seconds)
        if self.out_dir is not None and get_rank() == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / ("per_class.csv" if audio == "normal" else f"per_class_{audio}.csv")
            result.write_per_class_csv(path)
            result.files["per_class"] = path.name
        return result


def format_avss_table(results: Sequence[AVSSResult]) -> str:
    """Markdown: per audio mode both variants' mIoU and F, then the first result's classes that occur."""
    lines = [
        "| audio | mIoU official | F official | mIoU real frames | F real frames | clips | frames (official) | frames (real) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        m = result.metrics
        lines.append(f"| {result.audio} | {m['miou']:.4f} | {m['fscore']:.4f} | {m['miou_real_frames']:.4f} | "
                     f"{m['fscore_real_frames']:.4f} | {len(result.clips)} | {result.num_frames} | {result.num_real_frames} |")
    lines += ["", f"mIoU / F official = {VARIANT_LABELS[OFFICIAL]}: mean over all classes, never-seen classes count 0.",
              f"mIoU / F real frames = {VARIANT_LABELS[REAL_FRAMES]}: annotated frames only, same formulas."]
    if results:
        first = results[0]
        lines += ["", f"per class (audio={first.audio}; classes predicted or labelled somewhere; all in the per-class CSV):",
                  "| class | name | IoU | F | frames | IoU real frames | F real frames | frames (real) |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in first.per_class():
            if row["frames_present"] or row["frames_present_real_frames"]:
                lines.append(f"| {row['class_index']} | {row['class_name']} | {row['iou']:.4f} | {row['fscore']:.4f} | "
                             f"{row['frames_present']} | {row['iou_real_frames']:.4f} | {row['fscore_real_frames']:.4f} | "
                             f"{row['frames_present_real_frames']} |")
    return "\n".join(lines)


__all__ = [
    "AVSSClip",
    "AVSSEvaluator",
    "AVSSMetric",
    "AVSSResult",
    "AVSS_TASK",
    "class_counts",
    "classes_and_confusions",
    "PER_CLASS_FIELDS",
    "OFFICIAL",
    "REAL_FRAMES",
    "VARIANTS",
    "VARIANT_LABELS",
    "first_max_classes",
    "format_avss_table",
    "frame_class_counts",
    "frame_confusions",
    "fused_kernel_available",
    "frame_scores",
    "pixels_as_channels",
]
