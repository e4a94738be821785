"""Check an AVSBench copy: every expected file exists and decodes.

``check_dataset(root, "s4" | "ms3")`` checks the v1 layout, ``"avss"`` the semantic layout (all sets in
``metadata.csv``). Frames and masks must decode as images, wavs as audio long enough for one VGGish
example, and (v1) ``.pkl`` log-mels as safely unpicklable tensors of shape ``[N, 1, 96, 64]``; v1 masks
must have the size of their frame (``resize_masks=True`` accepts other sizes, as the loader then does).
avss: every ``labels_rgb`` pixel must have a palette colour, and ``label2idx.json``, when present, must list
71 classes (without it the binary semantic tasks still load, ``data.task=avss`` does not: a note says so).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Union

import numpy as np

from avseg.audio.vggish_input import MIN_SAMPLES, SAMPLE_RATE
from avseg.data.avsbench_dataset import (
    ClipRecord,
    check_mask_size,
    masks_must_match_frames,
    read_frame,
    read_mask,
    read_semantic_index,
    read_v1_index,
)
from avseg.data.safe_pickle import load_log_mel_pickle
from avseg.data.semantic_labels import AVSS_NUM_CLASSES, read_class_names, read_label_image
from avseg.errors import AvsegError, DatasetError

PathLike = Union[str, os.PathLike]
CHECK_TASKS = ("s4", "ms3", "avss")


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`: clips per split, files checked and the problems found."""

    root: Path
    task: str
    clips: Dict[str, int] = field(default_factory=dict)
    masks: Dict[str, int] = field(default_factory=dict)
    files_checked: int = 0
    problems: List[str] = field(default_factory=list)
    layout_hint: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_problems: int = 20) -> str:
        layout = "semantic" if self.task == "avss" else "v1"
        lines = [f"AVSBench {self.task} ({layout} layout) at {self.root}", f"{'split':<8} {'clips':>6} {'masks':>6}"]
        for split in sorted(self.clips):
            lines.append(f"{split:<8} {self.clips[split]:>6} {self.masks.get(split, 0):>6}")
        lines.append(f"{'total':<8} {sum(self.clips.values()):>6} {sum(self.masks.values()):>6}")
        lines.append(f"checked {self.files_checked} files: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)"))
        lines.extend(f"note: {note}" for note in self.notes)
        if self.problems and self.layout_hint:
            lines.append(f"  expected {self.layout_hint}")
        for problem in self.problems[:max_problems]:
            lines.append(f"  {problem}")
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


def _check_wav(path: Path) -> None:
    import soundfile

    if not path.is_file():
        raise DatasetError(f"missing audio: {path}")
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot decode audio ({exc})") from None
    if data.shape[0] * SAMPLE_RATE / sample_rate < MIN_SAMPLES:
        raise DatasetError(f"{path}: audio too short ({data.shape[0] / sample_rate:.3f} s; VGGish needs 0.975 s)")


def _check_log_mel(path: Path) -> None:
    if not path.is_file():
        raise DatasetError(f"missing log-mel: {path}")
    load_log_mel_pickle(path)


def _check_frames_and_masks(record: ClipRecord, check_sizes: bool, report: CheckReport, palette_labels: bool) -> None:
    frames: Dict[int, np.ndarray] = {}
    for k, path in enumerate(record.frames):
        report.files_checked += 1
        try:
            frames[k] = read_frame(path)
        except AvsegError as exc:
            report.problems.append(str(exc))
    for k, path in enumerate(record.masks):
        if path is None:
            continue
        report.files_checked += 1
        try:
            if palette_labels:
                read_label_image(path)
            else:
                mask = read_mask(path)
                if check_sizes and k in frames:
                    check_mask_size(path, mask, record.frames[k], frames[k])
        except AvsegError as exc:
            report.problems.append(str(exc))


def _check_clip(record: ClipRecord, check_log_mel: bool, check_sizes: bool, report: CheckReport, palette_labels: bool) -> None:
    _check_frames_and_masks(record, check_sizes, report, palette_labels)
    checks = [(_check_wav, record.wav)]
    if check_log_mel and record.log_mel is not None:
        checks.append((_check_log_mel, record.log_mel))
    for check, path in checks:
        report.files_checked += 1
        try:
            check(path)
        except AvsegError as exc:
            report.problems.append(str(exc))


def check_dataset(root: PathLike, task: str, check_log_mel: bool = True, progress: bool = False, resize_masks: bool = False) -> CheckReport:
    """Check every file the ``task`` index lists under ``root``; problems are collected, not raised.

    v1 masks must have their frame's size unless ``resize_masks`` (as in :class:`AVSBenchDataset`).
    """
    if task not in CHECK_TASKS:
        raise DatasetError(f"unknown task '{task}' (expected one of {CHECK_TASKS})")
    report = CheckReport(root=Path(root), task=task)
    try:
        records = read_semantic_index(root) if task == "avss" else read_v1_index(root, task)
    except DatasetError as exc:
        report.problems.append(str(exc))
        return report
    if not records:
        report.problems.append(f"{root}: the {task} index lists no clips")
    report.layout_hint = records[0].layout_hint if records else ""
    report.clips = dict(Counter(record.split for record in records))
    masks: Counter = Counter()
    for record in records:
        masks[record.split] += sum(record.mask_valid)
    report.masks = dict(masks)
    semantic = task == "avss"
    class_list = Path(root) / "label2idx.json"
    if semantic and not class_list.exists():
        report.notes.append(f"no {class_list}: the binary semantic tasks load, data.task=avss (71 classes) needs it")
    elif semantic:
        report.files_checked += 1
        try:
            read_class_names(class_list, AVSS_NUM_CLASSES)
        except DatasetError as exc:
            report.problems.append(str(exc))
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc=f"check {task}", unit="clip")
    check_sizes = masks_must_match_frames("semantic" if semantic else "v1", resize_masks)
    for record in iterator:
        _check_clip(record, check_log_mel, check_sizes, report, semantic)
    return report
