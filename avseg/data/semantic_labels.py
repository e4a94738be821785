"""AVSBench-semantic (AVSS) labels: the official 71-colour palette, colour masks ↔ class maps, class names.

The official loader (``avs_scripts/avss/color_dataloader.py``, ``_getpallete(71)``) colours class ``j``
with the PASCAL-VOC bit-interleaving palette: bits 0, 1, 2 of ``j`` go to the top bit of R, G, B,
bits 3, 4, 5 to the next bit, and so on (0 → black = background, 1 → (128, 0, 0), 2 → (0, 128, 0),
8 → (64, 0, 0)). ``labels_rgb/<k>.png`` stores every pixel in its class colour.

The official ``color_mask_to_label`` turns a colour outside the palette silently into class 0;
:func:`colours_to_classes` raises a :class:`~avseg.errors.DatasetError` naming the file and the colour
instead, so a damaged or resampled mask cannot pass as background.

``label2idx.json`` (``background`` first, then the 70 class names): the official code uses only its
key order and count (the values are never read); :func:`read_class_names` does the same.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from avseg.errors import DatasetError

PathLike = Union[str, os.PathLike]

AVSS_NUM_CLASSES = 71
BACKGROUND_CLASS = 0


def semantic_palette(num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
    """The official palette ``_getpallete(num_classes)`` as uint8 ``[num_classes, 3]`` (RGB per class)."""
    if not 1 <= num_classes <= 256:
        raise ValueError(f"the bit-interleaving palette has 1..256 distinct colours, got num_classes={num_classes}")
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        label, bit = index, 0
        while label > 0:
            for channel in range(3):
                palette[index, channel] |= ((label >> channel) & 1) << (7 - bit)
            bit += 1
            label >>= 3
    return palette


AVSS_PALETTE = semantic_palette()


def _packed(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` → int32 ``[...]`` holding ``R << 16 | G << 8 | B``."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colours_to_classes(rgb: np.ndarray, source: PathLike = "<array>", palette: np.ndarray = AVSS_PALETTE) -> np.ndarray:
    """Colour mask uint8 ``[H, W, 3]`` → class map int64 ``[H, W]`` (index of each pixel's palette colour).

    A colour that is not in ``palette`` raises :class:`DatasetError` naming ``source``, the colour, how
    many pixels have it and where the first one is.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise DatasetError(f"{source}: a colour mask must be uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    palette_keys = _packed(palette)
    order = np.argsort(palette_keys, kind="stable")
    sorted_keys = palette_keys[order]
    keys = _packed(rgb)
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    known = sorted_keys[position] == keys
    if not known.all():
        rows, cols = np.nonzero(~known)
        colour = tuple(int(v) for v in rgb[rows[0], cols[0]])
        raise DatasetError(
            f"{source}: colour {colour} (first at row {rows[0]}, column {cols[0]}; {len(rows)} pixels) is not in the "
            f"{len(palette)}-class AVSBench-semantic palette (expected exact palette colours, e.g. background (0, 0, 0))"
        )
    return order[position].astype(np.int64)


def classes_to_colours(classes: np.ndarray, palette: np.ndarray = AVSS_PALETTE) -> np.ndarray:
    """Class map (integer ``[H, W]``, values ``0..len(palette)-1``) → colour mask uint8 ``[H, W, 3]``."""
    classes = np.asarray(classes)
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"class maps must hold integers, got {classes.dtype}")
    if classes.size and (classes.min() < 0 or classes.max() >= len(palette)):
        raise ValueError(f"class indices must lie in 0..{len(palette) - 1}, got {classes.min()}..{classes.max()}")
    return palette[classes]


def read_label_image(path: PathLike, palette: np.ndarray = AVSS_PALETTE) -> np.ndarray:
    """A ``labels_rgb`` PNG as a class map int64 ``[H, W]`` (opened with ``convert('RGB')`` as the official loader)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing semantic label image: {path}")
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the semantic label image ({exc})") from None
    return colours_to_classes(rgb, path, palette)


def read_class_names(path: PathLike, num_classes: Optional[int] = AVSS_NUM_CLASSES) -> List[str]:
    """Class names from ``label2idx.json``, in key order (JSON only; the values are not used, as officially).

    ``num_classes``: the number of keys required (the official loader asserts 71); None accepts any count.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read the class list {path} ({exc})") from None
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"{path}: expected a JSON object mapping class names to indices, background first")
    names = list(mapping)
    if num_classes is not None and len(names) != num_classes:
        raise DatasetError(f"{path}: {len(names)} classes, expected {num_classes} (background + {num_classes - 1})")
    return names


__all__ = [
    "AVSS_NUM_CLASSES",
    "AVSS_PALETTE",
    "BACKGROUND_CLASS",
    "classes_to_colours",
    "colours_to_classes",
    "read_class_names",
    "read_label_image",
    "semantic_palette",
]
