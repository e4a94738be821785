"""AVSBench datasets: S4 and MS3 in the AVSBench-object v1 layout, and the AVSBench-semantic layout.

v1 layout (``root`` is the folder that holds ``Single-source/`` and ``Multi-sources/``, like the
official ``avsbench_data/``)::

    Single-source/s4_meta_data.csv                       name, start_time, category, split
    Single-source/s4_data/visual_frames/<split>/<category>/<name>/<name>_<k>.png     k = 1..5
    Single-source/s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png          train: k = 1 only
    Single-source/s4_data/audio_wav/<split>/<category>/<name>.wav
    Single-source/s4_data/audio_log_mel/<split>/<category>/<name>.pkl                [5, 1, 96, 64]
    Single-source/s4_data/raw_videos/<split>/<category>/<name>.mp4                   (prepare input)
    Multi-sources/ms3_meta_data.csv                      video_id, split
    Multi-sources/ms3_data/visual_frames/<name>/<name>.mp4_<k>.png                    no split folder
    Multi-sources/ms3_data/gt_masks/<split>/<name>/<name>_<k>.png                     all 5 frames
    Multi-sources/ms3_data/audio_wav/<split>/<name>.wav
    Multi-sources/ms3_data/audio_log_mel/<split>/<name>.pkl
    Multi-sources/ms3_data/raw_videos/<name>.mp4

Semantic layout (``root`` holds ``metadata.csv`` with columns ``uid``, ``label`` ∈ {v1s, v1m, v2} and
``split``, and ``label2idx.json``)::

    <label>/<uid>/frames/<k>.jpg          k = 0..4 (v2: 0..9)
    <label>/<uid>/labels_rgb/<k>.png      every pixel in its class's palette colour (v1s train: only 0.png)
    <label>/<uid>/audio.wav

Binary tasks (s4, ms3, v1s, v1m, v2 in either layout): items are dicts with ``frames`` [T, 3, H, W]
(ImageNet-normalised), ``log_mel`` [T, 1, 96, 64], ``masks`` [T, 1, H, W] in {0, 1} (semantic: any
non-black pixel), ``mask_valid`` [T] bool, ``video_id`` str, ``category`` str.

The AVSS task (``task="avss"``, semantic layout, the released ``avss/color_dataloader.py``): clips of
the chosen ``subsets`` padded to T = 10 frames; items add ``labels`` [10, H, W] int64 (class of the
71-colour palette, 0 = background; 0 on padded and unannotated frames), ``frame_valid`` [10] bool (real
frames: 5 for v1s/v1m, 10 for v2) and ``subset`` str; ``masks`` is ``labels > 0``. Padded frames are zero
after normalisation and their log-mel examples are zero (the released padding). Train-split frames and
labels are resized so that the short edge is ``image_size`` and centre-cropped, val/test ones resized to
``image_size`` (frames bilinear, labels nearest), exactly as released. A label colour outside the
palette is a :class:`DatasetError` naming the file and the colour (the release maps it to background).

Safety: every CSV value that becomes part of a path (v1 name, split, category; semantic uid) must be one
plain file name, checked when the index is read, so no row can point outside ``root``. In the v1 layout a
mask whose size differs from its frame is an error (``resize_masks=True`` resizes it instead); the
semantic layout resizes frames and masks independently, as its released loader does.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from avseg.audio.io import load_log_mel
from avseg.audio.vggish_input import pad_examples
from avseg.config import AVSS_SUBSETS
from avseg.data.safe_pickle import load_log_mel_pickle
from avseg.data.semantic_labels import AVSS_NUM_CLASSES, read_class_names, read_label_image
from avseg.errors import AvsegError, DatasetError
from avseg.fileio import atomic_torch_save, plain_name_problem
from avseg.weights import load_weights_only

PathLike = Union[str, os.PathLike]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUTS = ("v1", "semantic")
AUDIO_SOURCES = ("auto", "pkl", "wav")
V1_TASKS = ("s4", "ms3")
SEMANTIC_SETS = {"s4": "v1s", "ms3": "v1m", "v1s": "v1s", "v1m": "v1m", "v2": "v2"}  # binary task → its label set
SEMANTIC_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}
AVSS_TASK = "avss"
AVSS_CLIP_FRAMES = 10  # every AVSS clip is padded to the v2 length
DATASET_TASKS = tuple(SEMANTIC_SETS) + (AVSS_TASK,)
AUDIO_PADDINGS = ("repeat", "zeros")
V1_FRAMES = 5
FEATURE_CACHE_VERSION = 2  # 2: the cache holds all examples of the wav, fitted to T when read


@dataclass(frozen=True)
class V1TaskLayout:
    """Folder and file names of one v1 task."""

    task_dir: str
    csv_name: str
    data_dir: str
    pattern: str  # human-readable summary for error messages


V1_LAYOUT: Dict[str, V1TaskLayout] = {
    "s4": V1TaskLayout(
        "Single-source",
        "s4_meta_data.csv",
        "s4_data",
        "Single-source/s4_data/{visual_frames,gt_masks}/<split>/<category>/<name>/<name>_<k>.png, "
        "audio_wav|audio_log_mel/<split>/<category>/<name>.wav|.pkl",
    ),
    "ms3": V1TaskLayout(
        "Multi-sources",
        "ms3_meta_data.csv",
        "ms3_data",
        "Multi-sources/ms3_data/visual_frames/<name>/<name>.mp4_<k>.png, gt_masks/<split>/<name>/<name>_<k>.png, "
        "audio_wav|audio_log_mel/<split>/<name>.wav|.pkl",
    ),
}
SEMANTIC_PATTERN = "<root>/metadata.csv (uid, label, split); <label>/<uid>/frames/<k>.jpg, labels_rgb/<k>.png, audio.wav"


@dataclass(frozen=True)
class ClipRecord:
    """One clip: where its files are and which frames are annotated.

    ``masks[k]`` is None for a frame without ground truth (S4/v1s train frames 2..5).
    ``log_mel`` is None in the semantic layout; ``raw_video`` is where ``prepare_avsbench`` reads;
    ``subset`` is the semantic label set (v1s, v1m, v2), ``""`` in the v1 layout.
    """

    video_id: str
    split: str
    category: str
    frames: Tuple[Path, ...]
    masks: Tuple[Optional[Path], ...]
    wav: Path
    log_mel: Optional[Path]
    raw_video: Optional[Path]
    layout_hint: str
    subset: str = ""

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def mask_valid(self) -> Tuple[bool, ...]:
        return tuple(path is not None for path in self.masks)


# ----------------------------------------------------------------------------- paths
def v1_task_root(root: PathLike, task: str) -> Path:
    """``<root>/Single-source`` or ``<root>/Multi-sources``."""
    return Path(root) / V1_LAYOUT[_check_v1_task(task)].task_dir


def v1_csv_path(root: PathLike, task: str) -> Path:
    return v1_task_root(root, task) / V1_LAYOUT[task].csv_name


def v1_clip_record(root: PathLike, task: str, name: str, split: str, category: str = "", num_frames: int = V1_FRAMES) -> ClipRecord:
    """Paths of one clip in the v1 layout (S4: only frame 1 annotated in train; MS3: all frames)."""
    layout = V1_LAYOUT[_check_v1_task(task)]
    data = v1_task_root(root, task) / layout.data_dir
    ks = range(1, num_frames + 1)
    if task == "s4":
        frames = tuple(data / "visual_frames" / split / category / name / f"{name}_{k}.png" for k in ks)
        masks = tuple(data / "gt_masks" / split / category / name / f"{name}_{k}.png" for k in ks)
        wav = data / "audio_wav" / split / category / f"{name}.wav"
        log_mel = data / "audio_log_mel" / split / category / f"{name}.pkl"
        raw_video = data / "raw_videos" / split / category / f"{name}.mp4"
        if split == "train":
            masks = masks[:1] + (None,) * (num_frames - 1)
    else:
        frames = tuple(data / "visual_frames" / name / f"{name}.mp4_{k}.png" for k in ks)
        masks = tuple(data / "gt_masks" / split / name / f"{name}_{k}.png" for k in ks)
        wav = data / "audio_wav" / split / f"{name}.wav"
        log_mel = data / "audio_log_mel" / split / f"{name}.pkl"
        raw_video = data / "raw_videos" / f"{name}.mp4"
    return ClipRecord(name, split, category, frames, masks, wav, log_mel, raw_video, f"{task.upper()} v1 layout: {layout.pattern}")


def semantic_clip_record(root: PathLike, label_set: str, uid: str, split: str, category: str = "") -> ClipRecord:
    """Paths of one clip in the semantic layout (v1s train: only frame 0 used for supervision)."""
    num_frames = SEMANTIC_FRAMES[label_set]
    clip_dir = Path(root) / label_set / uid
    frames = tuple(clip_dir / "frames" / f"{k}.jpg" for k in range(num_frames))
    masks: Tuple[Optional[Path], ...] = tuple(clip_dir / "labels_rgb" / f"{k}.png" for k in range(num_frames))
    if label_set == "v1s" and split == "train":
        masks = masks[:1] + (None,) * (num_frames - 1)
    raw_video = Path(root) / "raw_videos" / f"{uid}.mp4"
    return ClipRecord(uid, split, category, frames, masks, clip_dir / "audio.wav", None, raw_video,
                      f"semantic layout: {SEMANTIC_PATTERN}", label_set)


def clip_frames(layout: str, task: str) -> int:
    """Frames per clip T that a dataset of ``task`` in ``layout`` yields (avss: 10, padded)."""
    if task == AVSS_TASK:
        return AVSS_CLIP_FRAMES
    if layout == "semantic" and task in SEMANTIC_SETS:
        return SEMANTIC_FRAMES[SEMANTIC_SETS[task]]
    return V1_FRAMES


def _check_v1_task(task: str) -> str:
    if task not in V1_LAYOUT:
        hint = " (the semantic layout has v1s, v1m, v2 and avss)" if task in DATASET_TASKS else ""
        raise DatasetError(f"unknown AVSBench v1 task '{task}' (expected one of {V1_TASKS}){hint}")
    return task


# ----------------------------------------------------------------------------- index files
def _read_csv(path: Path, layout_hint: str) -> Tuple[List[str], List[List[str]]]:
    if not path.is_file():
        raise DatasetError(f"metadata file not found: {path} (expected {layout_hint})")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [[cell.strip() for cell in row] for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot be read as CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: empty CSV (expected a header row and one row per clip)")
    return rows[0], rows[1:]


def _column(header: List[str], name: str, path: Path) -> int:
    if name not in header:
        raise DatasetError(f"{path}: no '{name}' column (columns found: {', '.join(header)})")
    return header.index(name)


def _path_name(path: Path, line: int, column: str, value: str) -> str:
    """``value`` of a CSV cell that becomes a file or folder name; refused unless it is one plain name."""
    problem = plain_name_problem(value)
    if problem is not None:
        raise DatasetError(f"{path}, line {line}: {column} '{value}' {problem}; it names a file or folder, so it must be one plain name")
    return value


def read_v1_index(root: PathLike, task: str) -> List[ClipRecord]:
    """All clips listed in the task's meta CSV, in file order.

    Column 0 is the video name (read by position, as the official loaders do); ``split`` and, for S4,
    ``category`` are read by name, as the official loaders do. Every value that becomes part of a path
    (name, split, category) must be one plain file name, so no row can point outside ``root``.
    """
    path = v1_csv_path(root, task)
    header, rows = _read_csv(path, f"{task.upper()} v1 layout: {V1_LAYOUT[task].pattern}")
    split_col = _column(header, "split", path)
    category_col = _column(header, "category", path) if task == "s4" else None
    width = max(split_col, category_col or 0) + 1
    name_header = header[0] or "column 0"
    records = []
    for line, row in enumerate(rows, start=2):
        if len(row) < width:
            raise DatasetError(f"{path}, line {line}: expected at least {width} columns ({', '.join(header[:width])}), got {row}")
        name = _path_name(path, line, name_header, row[0])
        split = _path_name(path, line, "split", row[split_col])
        category = _path_name(path, line, "category", row[category_col]) if category_col is not None else ""
        records.append(v1_clip_record(root, task, name, split, category))
    return records


def read_semantic_index(root: PathLike, label_sets: Optional[Sequence[str]] = None) -> List[ClipRecord]:
    """Clips of ``metadata.csv`` (columns ``uid``, ``label``, ``split`` by name) in the given sets.

    ``uid`` becomes a folder name and must be one plain file name.
    """
    path = Path(root) / "metadata.csv"
    header, rows = _read_csv(path, SEMANTIC_PATTERN)
    uid_col, label_col, split_col = (_column(header, name, path) for name in ("uid", "label", "split"))
    category_col = header.index("a_obj") if "a_obj" in header else None
    records = []
    for line, row in enumerate(rows, start=2):
        if len(row) <= max(uid_col, label_col, split_col):
            raise DatasetError(f"{path}, line {line}: too few columns for header {header}: {row}")
        label_set = row[label_col]
        if label_set not in SEMANTIC_FRAMES:
            raise DatasetError(f"{path}, line {line}: label '{label_set}' is not one of {tuple(SEMANTIC_FRAMES)}")
        uid = _path_name(path, line, "uid", row[uid_col])
        if label_sets is not None and label_set not in label_sets:
            continue
        category = row[category_col] if category_col is not None and category_col < len(row) else ""
        records.append(semantic_clip_record(root, label_set, uid, row[split_col], category))
    return records


# ----------------------------------------------------------------------------- decoding
def read_frame(path: Path, size: Optional[Tuple[int, int]] = None, layout_hint: str = "") -> np.ndarray:
    """An RGB frame as uint8 ``[H, W, 3]``, resized (bilinear) to ``size = (H, W)`` when it differs."""
    return resize_frame(np.asarray(_open_image(path, "frame", layout_hint).convert("RGB")), size)


def resize_frame(frame: np.ndarray, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` resized (PIL bilinear) to ``size = (H, W)``; unchanged when None or equal."""
    if size is None or frame.shape[:2] == tuple(size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


def mask_foreground(image: Image.Image) -> np.ndarray:
    """Binary foreground ``[H, W]`` of a mask image: palette index, grey value or any RGB channel ``> 0``."""
    if image.mode in ("RGB", "RGBA", "LA", "PA"):
        channels = {"RGB": 3, "RGBA": 3, "LA": 1, "PA": 1}[image.mode]
        return (np.asarray(image)[..., :channels] > 0).any(axis=-1)
    return np.asarray(image) > 0


def read_mask(path: Path, size: Optional[Tuple[int, int]] = None, layout_hint: str = "") -> np.ndarray:
    """A ground-truth mask as bool ``[H, W]`` (binarised ``> 0``), resized (nearest) to ``size = (H, W)``."""
    return resize_mask(mask_foreground(_open_image(path, "mask", layout_hint)), size)


def resize_mask(mask: np.ndarray, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """bool ``[H, W]`` resized (nearest) to ``size = (H, W)``; unchanged when None or equal."""
    if size is None or mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)) > 0


def check_mask_size(mask_path: Path, mask: np.ndarray, frame_path: Path, frame: np.ndarray) -> None:
    """Raise :class:`DatasetError` naming both files unless ``mask`` [H, W] has the size of ``frame`` [H, W, 3]."""
    if mask.shape[:2] != frame.shape[:2]:
        (mask_h, mask_w), (frame_h, frame_w) = mask.shape[:2], frame.shape[:2]
        raise DatasetError(
            f"{mask_path}: mask is {mask_w}x{mask_h} px but its frame {frame_path} is {frame_w}x{frame_h} px; "
            "masks are not stretched to their frame unless data.resize_masks=true"
        )


def semantic_geometry(image: Image.Image, size: Tuple[int, int], crop: bool, resample: int) -> Image.Image:
    """The released AVSS geometry (``crop_resize_img`` / ``resize_img``) of a PIL image; ``size = (H, W)``.

    ``crop``: scale so the short edge is ``S = H = W`` (the long edge ``int(long * S / short)``), then cut
    the centre ``S x S`` window at ``(round((w - S) / 2), round((h - S) / 2))`` (Python rounding, half to
    even). Otherwise a plain resize to ``(H, W)`` (aspect ratio not kept).
    """
    if not crop:
        return image.resize((size[1], size[0]), resample)
    if size[0] != size[1]:
        raise ValueError(f"the AVSS centre crop is square, got size {size}")
    side = size[0]
    width, height = image.size
    if width > height:
        new_w, new_h = int(1.0 * width * side / height), side
    else:
        new_w, new_h = side, int(1.0 * height * side / width)
    image = image.resize((new_w, new_h), resample)
    left, top = int(round((new_w - side) / 2.0)), int(round((new_h - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


def read_semantic_frame(path: Path, size: Tuple[int, int], crop: bool, layout_hint: str = "") -> np.ndarray:
    """An AVSS frame as uint8 ``[H, W, 3]`` after :func:`semantic_geometry` (bilinear)."""
    image = _open_image(path, "frame", layout_hint).convert("RGB")
    return np.asarray(semantic_geometry(image, size, crop, Image.BILINEAR))


def read_semantic_labels(path: Path, size: Tuple[int, int], crop: bool) -> np.ndarray:
    """A ``labels_rgb`` PNG as class map int64 ``[H, W]`` after :func:`semantic_geometry` (nearest).

    Every pixel of the stored image must have a palette colour (checked before resizing, so a stray
    colour cannot hide between sampled pixels); nearest-neighbour resizing of the class map picks the
    same pixels as the release's resizing of the colour image.
    """
    classes = read_label_image(path).astype(np.uint8)  # 71 classes fit in uint8 ("L" images)
    resized = semantic_geometry(Image.fromarray(classes), size, crop, Image.NEAREST)
    return np.asarray(resized).astype(np.int64)


def masks_must_match_frames(layout: str, resize_masks: bool) -> bool:
    """v1 masks are drawn on the frames, so a size difference is an error unless ``resize_masks``.

    The semantic release's loader resizes frames and masks to 224 independently, and their stored
    sizes are not documented to agree, so that layout keeps the released behaviour.
    """
    return layout == "v1" and not resize_masks


def _open_image(path: Path, kind: str, layout_hint: str) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"missing {kind}: {path}" + (f" (expected {layout_hint})" if layout_hint else ""))
    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:  # PIL raises several types for truncated/corrupt files
        raise DatasetError(f"{path}: cannot decode {kind} image ({type(exc).__name__}: {exc})") from None
    return image


def normalize_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` → ImageNet-normalised float ``[T, 3, H, W]``."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (tensor - mean) / std


def default_feature_cache() -> Path:
    """``$AVSEG_CACHE/log_mel`` or ``~/.cache/avseg/log_mel``."""
    base = os.environ.get("AVSEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "avseg")
    return Path(base) / "log_mel"


def fit_examples(examples: torch.Tensor, num: int, padding: str = "repeat") -> torch.Tensor:
    """Log-mel examples ``[N, 1, 96, 64]`` → exactly ``[num, 1, 96, 64]``; extra examples are dropped.

    ``padding``: ``repeat`` (AVSBench S4/MS3: the last example repeated) or ``zeros`` (AVSS, VGGish
    ``_preprocess``: zero examples appended; the release fails on more than ``num`` examples, avseg keeps
    the first ``num``).
    """
    if padding == "repeat":
        return pad_examples(examples, num)[:num]
    if padding != "zeros":
        raise ValueError(f"padding must be one of {AUDIO_PADDINGS}, got '{padding}'")
    fitted = examples.new_zeros((num, *examples.shape[1:]))
    count = min(num, examples.shape[0])
    fitted[:count] = examples[:count]
    return fitted


class LogMelSource:
    """Log-mel examples ``[T, 1, 96, 64]`` of a clip from its ``.pkl`` or computed from its wav (cached).

    ``padding``: how short audio is filled up to T (:func:`fit_examples`).
    """

    def __init__(self, audio_source: str = "auto", resampler: str = "soxr", feature_cache: Optional[PathLike] = None,
                 padding: str = "repeat"):
        if audio_source not in AUDIO_SOURCES:
            raise DatasetError(f"data.audio_source must be one of {AUDIO_SOURCES}, got '{audio_source}'")
        if padding not in AUDIO_PADDINGS:
            raise ValueError(f"padding must be one of {AUDIO_PADDINGS}, got '{padding}'")
        self.audio_source = audio_source
        self.resampler = resampler
        self.padding = padding
        if feature_cache is None:
            self.cache_dir: Optional[Path] = default_feature_cache()
        elif str(feature_cache).lower() in ("off", "none", ""):
            self.cache_dir = None
        else:
            self.cache_dir = Path(feature_cache)

    def __call__(self, record: ClipRecord, num_frames: Optional[int] = None) -> torch.Tensor:
        """``[num_frames, 1, 96, 64]`` (default: the clip's number of frames)."""
        num = num_frames or record.num_frames
        use_pkl = self.audio_source == "pkl" or (self.audio_source == "auto" and record.log_mel is not None and record.log_mel.is_file())
        if use_pkl:
            if record.log_mel is None:
                raise DatasetError(f"clip {record.video_id}: audio_source 'pkl' needs .pkl log-mels, which the {record.layout_hint} does not have; use 'wav' or 'auto'")
            if not record.log_mel.is_file():
                raise DatasetError(f"missing log-mel: {record.log_mel} (expected {record.layout_hint}); use audio_source 'wav' or 'auto' to compute it from the wav")
            examples = load_log_mel_pickle(record.log_mel).float()
        else:
            examples = self._from_wav(record.wav, record.layout_hint)
        return fit_examples(examples, num, self.padding)

    def _cache_path(self, wav: Path) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        stat = wav.stat()
        key = f"{wav.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.resampler}|{FEATURE_CACHE_VERSION}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"

    def _from_wav(self, wav: Path, layout_hint: str) -> torch.Tensor:
        """All VGGish examples ``[N, 1, 96, 64]`` of ``wav`` (N >= 1), from the cache when it has them."""
        if not wav.is_file():
            raise DatasetError(f"missing audio: {wav} (expected {layout_hint})")
        cache = self._cache_path(wav)
        if cache is not None and cache.is_file():
            try:
                return load_weights_only(cache)
            except Exception:
                cache.unlink(missing_ok=True)
        try:
            examples = load_log_mel(wav, resampler=self.resampler)
        except AvsegError as exc:
            raise DatasetError(str(exc)) from None
        if cache is not None:
            try:
                atomic_torch_save(examples, cache)
            except OSError:
                pass  # a read-only cache folder only costs recomputation
        return examples


# ----------------------------------------------------------------------------- dataset
class AVSBenchDataset(Dataset):
    """AVSBench clips (v1 or semantic layout) as dicts of tensors: binary S4/MS3, or the 71-class AVSS task.

    Args:
        root: v1: the folder holding ``Single-source/`` and ``Multi-sources/``; semantic: the folder with
            ``metadata.csv`` (and, for avss, ``label2idx.json``).
        task: ``s4`` or ``ms3``; in the semantic layout also ``v1s``/``v1m`` (same as s4/ms3), ``v2`` or
            ``avss`` (class labels of the ``subsets``, padded to 10 frames).
        split: ``train``, ``val`` or ``test`` (any value of the CSV's split column).
        layout: ``v1`` or ``semantic``.
        image_size: output frame size (int or ``(H, W)``); frames are resized bilinearly, masks nearest.
        audio_source: ``pkl`` (official log-mels), ``wav`` (computed, cached) or ``auto`` (pkl when present).
        resampler: ``soxr`` or ``resampy`` for wavs not at 16 kHz.
        feature_cache: folder for computed log-mels (None: ``~/.cache/avseg/log_mel``; ``"off"``: no cache).
        resize_masks: v1 layout: resize a mask whose size differs from its frame instead of raising
            :class:`DatasetError` (the semantic layout always resizes both, as its released loader does).
        transform: optional callable ``(frames [T,3,H,W], masks [T,1,H,W], mask_valid [T]) -> (frames, masks)``
            (avss: the class maps ``labels[:, None]`` take the place of the masks).
        subsets: avss only: the label sets to read (any of v1s, v1m, v2; default all three).
        train_crop: avss only: the released train geometry (short-edge resize + centre crop) instead of the
            val/test resize; None: crop exactly when ``split == "train"``, as the release decides.
    """

    def __init__(
        self,
        root: PathLike,
        task: str = "s4",
        split: str = "train",
        layout: str = "v1",
        image_size: Union[int, Tuple[int, int]] = 224,
        audio_source: str = "auto",
        resampler: str = "soxr",
        feature_cache: Optional[PathLike] = None,
        resize_masks: bool = False,
        transform: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]] = None,
        subsets: Sequence[str] = AVSS_SUBSETS,
        train_crop: Optional[bool] = None,
    ):
        self.root = Path(root)
        self.task = task
        self.split = split
        self.layout = layout
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.transform = transform
        self.check_mask_sizes = masks_must_match_frames(layout, resize_masks)
        self.semantic_classes = task == AVSS_TASK
        self.class_names: Optional[List[str]] = None
        self.train_crop = split == "train" if train_crop is None else train_crop
        if layout == "v1":
            if not self.root.is_dir():
                raise DatasetError(f"dataset root not found: {self.root} (expected the folder holding Single-source/ and Multi-sources/)")
            all_records = read_v1_index(self.root, task)
        elif layout == "semantic":
            if task not in DATASET_TASKS:
                raise DatasetError(f"unknown task '{task}' for the semantic layout (expected one of {DATASET_TASKS})")
            if audio_source == "pkl":
                raise DatasetError("the AVSBench-semantic layout has no .pkl log-mels: use data.audio_source 'wav' or 'auto'")
            if self.semantic_classes:
                label_sets = self._check_avss_options(subsets)
                self.class_names = read_class_names(self.root / "label2idx.json", AVSS_NUM_CLASSES)
            else:
                label_sets = [SEMANTIC_SETS[task]]
            all_records = read_semantic_index(self.root, label_sets)
        else:
            raise DatasetError(f"unknown dataset layout '{layout}' (expected one of {LAYOUTS})")
        self.records = [record for record in all_records if record.split == split]
        if not self.records:
            splits = sorted({record.split for record in all_records})
            raise DatasetError(f"{self.root}: no {task} clips in split '{split}' ({layout} layout; splits present: {splits})")
        padding = "zeros" if self.semantic_classes else "repeat"
        self.log_mel_source = LogMelSource(audio_source, resampler, feature_cache, padding)

    def _check_avss_options(self, subsets: Sequence[str]) -> List[str]:
        unknown = [subset for subset in subsets if subset not in AVSS_SUBSETS]
        if unknown or not subsets:
            raise ValueError(f"subsets must be a non-empty list of {AVSS_SUBSETS}, got {list(subsets)}")
        if self.train_crop and self.image_size[0] != self.image_size[1]:
            raise ValueError(f"the AVSS train crop is square: image_size must be one number, got {self.image_size}")
        return list(subsets)

    @property
    def num_classes(self) -> int:
        """Classes of the ``labels`` (avss: 71, background included); 1 (foreground) for the binary tasks."""
        return len(self.class_names) if self.class_names is not None else 1

    def __len__(self) -> int:
        return len(self.records)

    def load_log_mel(self, index: int) -> torch.Tensor:
        """Clip ``index``'s ``log_mel`` ``[T, 1, 96, 64]`` exactly as its item has it, without decoding frames."""
        return self.log_mel_source(self.records[index], AVSS_CLIP_FRAMES if self.semantic_classes else None)

    def __getitem__(self, index: int) -> Dict[str, object]:
        record = self.records[index]
        if self.semantic_classes:
            return self._avss_item(index)
        height, width = self.image_size
        stored_frames = [read_frame(path, None, record.layout_hint) for path in record.frames]
        masks = torch.zeros(record.num_frames, 1, height, width)
        for k, path in enumerate(record.masks):
            if path is not None:
                mask = read_mask(path, None, record.layout_hint)
                if self.check_mask_sizes:
                    check_mask_size(path, mask, record.frames[k], stored_frames[k])
                masks[k, 0] = torch.from_numpy(resize_mask(mask, self.image_size))
        frames = normalize_frames(np.stack([resize_frame(frame, self.image_size) for frame in stored_frames]))
        mask_valid = torch.tensor(record.mask_valid, dtype=torch.bool)
        if self.transform is not None:
            frames, masks = self.transform(frames, masks, mask_valid)
        return {
            "frames": frames,
            "log_mel": self.load_log_mel(index),
            "masks": masks,
            "mask_valid": mask_valid,
            "video_id": record.video_id,
            "category": record.category,
        }

    def _avss_item(self, index: int) -> Dict[str, object]:
        """Clip ``index`` of the AVSS task, padded to 10 frames (see the module docstring for the keys)."""
        record = self.records[index]
        height, width = self.image_size
        count = record.num_frames
        frames = torch.zeros(AVSS_CLIP_FRAMES, 3, height, width)
        stored = [read_semantic_frame(path, self.image_size, self.train_crop, record.layout_hint) for path in record.frames]
        frames[:count] = normalize_frames(np.stack(stored))
        labels = torch.zeros(AVSS_CLIP_FRAMES, height, width, dtype=torch.int64)
        for k, path in enumerate(record.masks):
            if path is not None:
                labels[k] = torch.from_numpy(read_semantic_labels(path, self.image_size, self.train_crop))
        frame_valid = torch.arange(AVSS_CLIP_FRAMES) < count
        mask_valid = torch.zeros(AVSS_CLIP_FRAMES, dtype=torch.bool)
        mask_valid[:count] = torch.tensor(record.mask_valid, dtype=torch.bool)
        if self.transform is not None:
            frames, label_maps = self.transform(frames, labels[:, None], mask_valid)
            labels = label_maps[:, 0]
        return {
            "frames": frames,
            "log_mel": self.load_log_mel(index),
            "labels": labels,
            "masks": (labels > 0).float()[:, None],
            "frame_valid": frame_valid,
            "mask_valid": mask_valid,
            "video_id": record.video_id,
            "category": record.category,
            "subset": record.subset,
        }
