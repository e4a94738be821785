"""Saved predictions: COCO RLE masks in a JSON file, plus an optional sidecar with the F threshold bins.

``preds.json``::

    {"format": "avseg-predictions", "version": 1,
     "threshold": 0.5,                     # masks are sigmoid(logits) > 0.5
     "split": "test", "audio": "normal", "config": {...},   # the config that produced them
     "fbins": "preds.fbins.npz" | null,     # sidecar, relative to this file
     "annotations": [{"clip_index": 0, "video_id": "...", "category": "...", "frame": 0,
                      "annotated": true, "segmentation": {"size": [H, W], "counts": "..."}}, ...]}

RLE stores binary masks, which is all the mIoU needs. The F-score needs probabilities, but only through
their *threshold bins* (how many of the 255 official thresholds each probability reaches, 0..255,
:func:`avseg.evaluation.metrics.threshold_bins`): an exact, lossless summary for F that fits in uint8.
The sidecar ``*.fbins.npz`` holds, per annotation in order, the zlib-compressed ``[H, W]`` uint8 bins
(``data``: all byte strings concatenated, ``offsets``: ``[num_annotations + 1]`` int64). With the
sidecar, scoring saved predictions reproduces the model's official F exactly; without it, F can only
be computed on the binary masks (reported as ``fscore_binary``, not comparable with the official F).

Semantic (AVSS) class maps are stored as one RLE per class present: :func:`encode_class_map` /
:func:`decode_class_map`.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools import mask as coco_mask

from avseg.errors import DatasetError
from avseg.fileio import atomic_path, atomic_write_text

PREDICTIONS_FORMAT = "avseg-predictions"
PREDICTIONS_VERSION = 1


def encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """Binary ``[H, W]`` mask → COCO RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Dict[str, Any]) -> np.ndarray:
    """COCO RLE (``counts`` as str or bytes) → bool ``[H, W]``."""
    counts = rle["counts"]
    encoded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(encoded).astype(bool)


def encode_class_map(classes: np.ndarray, names: Optional[Sequence[str]] = None, background: int = 0) -> List[Dict[str, Any]]:
    """Class map (integer ``[H, W]``) → one COCO RLE per class present, background left out, in class order.

    Each entry is ``{"class": c, "segmentation": {"size": [H, W], "counts": str}}``, plus ``"name"`` when
    ``names`` (indexed by class) is given.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes must be an integer class map [H, W], got {classes.dtype} {list(classes.shape)}")
    entries = []
    for index in np.unique(classes):
        if index == background:
            continue
        entry: Dict[str, Any] = {"class": int(index)}
        if names is not None:
            if not 0 <= index < len(names):
                raise ValueError(f"class {int(index)} has no name (names holds {len(names)} classes)")
            entry["name"] = str(names[index])
        entry["segmentation"] = encode_mask(classes == index)
        entries.append(entry)
    return entries


def decode_class_map(entries: Sequence[Dict[str, Any]], size: Sequence[int], background: int = 0) -> np.ndarray:
    """Inverse of :func:`encode_class_map`: int64 ``[H, W]`` class map of ``size`` ``(H, W)``.

    Pixels no entry covers are ``background``; an entry of another size, or two entries that overlap,
    raise ``ValueError`` (the per-class masks of one class map are disjoint).
    """
    height, width = (int(s) for s in size)
    classes = np.full((height, width), background, dtype=np.int64)
    covered = np.zeros((height, width), dtype=bool)
    for entry in entries:
        mask = decode_mask(entry["segmentation"])
        if mask.shape != (height, width):
            raise ValueError(f"class {entry['class']}: RLE of size {list(mask.shape)}, expected {[height, width]}")
        if (covered & mask).any():
            raise ValueError(f"class {entry['class']}: its mask overlaps another class's mask")
        classes[mask] = int(entry["class"])
        covered |= mask
    return classes


def pack_bins(bins: np.ndarray) -> bytes:
    """uint8 threshold bins ``[H, W]`` → zlib-compressed bytes."""
    return zlib.compress(np.ascontiguousarray(bins, dtype=np.uint8).tobytes(), 6)


def unpack_bins(packed: bytes, size: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pack_bins` for a mask of ``size`` ``(H, W)``."""
    bins = np.frombuffer(zlib.decompress(packed), dtype=np.uint8)
    if bins.size != int(size[0]) * int(size[1]):
        raise ValueError(f"threshold bins hold {bins.size} values, expected {size[0]}x{size[1]}")
    return bins.reshape(int(size[0]), int(size[1]))


def sidecar_path(json_path: Union[str, os.PathLike]) -> Path:
    """``preds.json`` → ``preds.fbins.npz`` beside it."""
    path = Path(json_path)
    return path.with_name(path.stem + ".fbins.npz")


def write_predictions(
    path: Union[str, os.PathLike],
    annotations: List[Dict[str, Any]],
    packed_bins: Optional[List[bytes]],
    meta: Dict[str, Any],
) -> Path:
    """Write ``preds.json`` (and the sidecar when ``packed_bins`` is given, one entry per annotation)."""
    path = Path(path)
    fbins_name = None
    if packed_bins is not None:
        if len(packed_bins) != len(annotations):
            raise ValueError(f"{len(packed_bins)} bin arrays for {len(annotations)} annotations")
        sidecar = sidecar_path(path)
        offsets = np.zeros(len(packed_bins) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in packed_bins])
        data = np.frombuffer(b"".join(packed_bins), dtype=np.uint8)
        with atomic_path(sidecar, suffix=".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, data=data, offsets=offsets)
        fbins_name = sidecar.name
    payload = {
        "format": PREDICTIONS_FORMAT,
        "version": PREDICTIONS_VERSION,
        "threshold": 0.5,
        **meta,
        "fbins": fbins_name,
        "annotations": annotations,
    }
    atomic_write_text(path, json.dumps(payload))
    return path


class SavedPredictions:
    """Predictions read back from ``preds.json``: look up a frame's mask and threshold bins.

    ``meta`` holds the JSON's top-level entries other than the annotations; ``has_bins`` tells whether
    the sidecar (and so the exact F) is available.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"predictions file not found: {self.path}")
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{self.path}: not a readable JSON file ({exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != PREDICTIONS_FORMAT:
            raise DatasetError(f"{self.path}: not an avseg predictions file (no 'format': '{PREDICTIONS_FORMAT}')")
        if payload.get("version", 0) > PREDICTIONS_VERSION:
            raise DatasetError(f"{self.path}: written by a newer avseg (version {payload['version']})")
        annotations = payload.pop("annotations", None)
        if not isinstance(annotations, list):
            raise DatasetError(f"{self.path}: 'annotations' must be a list")
        self.meta = payload
        self._index: Dict[Tuple[str, int], int] = {}
        for number, item in enumerate(annotations):
            segmentation = item.get("segmentation") if isinstance(item, dict) else None
            if not (isinstance(segmentation, dict) and {"size", "counts"} <= segmentation.keys() and {"video_id", "frame"} <= item.keys()):
                raise DatasetError(f"{self.path}: annotation {number} lacks video_id, frame or segmentation {{size, counts}}")
            self._index[(str(item["video_id"]), int(item["frame"]))] = number
        self._annotations = annotations
        self._bins_data: Optional[np.ndarray] = None
        self._bins_offsets: Optional[np.ndarray] = None
        if payload.get("fbins"):
            self._load_sidecar(self.path.parent / payload["fbins"], len(annotations))

    def _load_sidecar(self, sidecar: Path, count: int) -> None:
        if not sidecar.is_file():
            raise DatasetError(f"{self.path}: its threshold-bin sidecar {sidecar} is missing")
        try:
            with np.load(sidecar, allow_pickle=False) as arrays:
                self._bins_data, self._bins_offsets = arrays["data"], arrays["offsets"]
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"{sidecar}: not a threshold-bin sidecar ({exc})") from None
        if len(self._bins_offsets) != count + 1:
            raise DatasetError(f"{sidecar}: holds {len(self._bins_offsets) - 1} entries for {count} annotations")

    @property
    def has_bins(self) -> bool:
        return self._bins_data is not None

    def __len__(self) -> int:
        return len(self._annotations)

    def frame(self, video_id: str, frame: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(foreground bool [H, W], bins uint8 [H, W] or None)`` of one frame; missing ones raise."""
        number = self._index.get((str(video_id), int(frame)))
        if number is None:
            raise DatasetError(f"{self.path}: no prediction for video '{video_id}' frame {frame}")
        segmentation = self._annotations[number]["segmentation"]
        try:
            foreground = decode_mask(segmentation)
        except Exception as exc:  # pycocotools raises plain exceptions for malformed counts
            raise DatasetError(f"{self.path}: bad RLE for video '{video_id}' frame {frame} ({exc})") from None
        if not self.has_bins:
            return foreground, None
        start, stop = self._bins_offsets[number], self._bins_offsets[number + 1]
        try:
            bins = unpack_bins(self._bins_data[start:stop].tobytes(), segmentation["size"])
        except (zlib.error, ValueError) as exc:
            raise DatasetError(f"{self.path}: bad threshold bins for video '{video_id}' frame {frame} ({exc})") from None
        return foreground, bins
