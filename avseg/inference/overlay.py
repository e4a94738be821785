"""Drawing masks: a translucent coloured overlay with a contour, and a PNG strip of frames with masks.

Binary masks (bool ``[H, W]``) are drawn in one colour (:func:`overlay_mask`); semantic class maps
(integer ``[H, W]``, 0 = background) in the official AVSBench-semantic palette, one colour per class
(:func:`overlay_classes`); :func:`overlay_prediction` picks by dtype. :func:`legend_image` draws the
colour key of the classes present.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple, Union

import cv2
import numpy as np

from avseg.data.semantic_labels import BACKGROUND_CLASS, classes_to_colours, semantic_palette
from avseg.errors import MediaError
from avseg.fileio import atomic_write_bytes

Color = Tuple[int, int, int]
DEFAULT_COLOR: Color = (255, 40, 40)
CONTOUR_COLOR: Color = (255, 255, 0)
# The official AVSBench-semantic palette (its first 71 colours), extended by the same bit-interleaving rule to
# 256 classes so that class maps of any semantic model up to 256 classes can be drawn.
CLASS_PALETTE = semantic_palette(256)


def contour_width(height: int, width: int) -> int:
    """Contour thickness in pixels: about 0.4 % of the shorter side, at least 1."""
    return max(1, round(min(height, width) / 250))


def mask_contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels of ``mask`` ``[H, W]`` (bool) on its boundary, ``thickness`` pixels wide, inside the mask."""
    mask_u8 = mask.astype(np.uint8)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    eroded = cv2.erode(mask_u8, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (mask_u8 > 0) & (eroded == 0)


def overlay_mask(image: np.ndarray, mask: np.ndarray, color: Color = DEFAULT_COLOR, alpha: float = 0.45,
                 contour: bool = True, contour_color: Color = CONTOUR_COLOR) -> np.ndarray:
    """Blend ``color`` over the masked pixels of RGB ``uint8 [H, W, 3]`` and draw the mask's contour.

    ``mask`` is ``[H, W]`` bool (same size as the image). Returns a new ``uint8 [H, W, 3]`` image.
    """
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    out = image.copy()
    if not mask.any():
        return out
    tint = np.asarray(color, np.float32)
    out[mask] = ((1.0 - alpha) * image[mask].astype(np.float32) + alpha * tint).round().astype(np.uint8)
    if contour:
        out[mask_contour(mask, contour_width(*mask.shape))] = contour_color
    return out


def class_boundaries(classes: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels of a class map (integer ``[H, W]``, values 0..255) within ``thickness`` pixels of another class
    or of the image border: bool ``[H, W]`` (for a 0/1 map, the inside contour of :func:`mask_contour`)."""
    labels = classes.astype(np.uint8)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    lowest = cv2.erode(labels, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    highest = cv2.dilate(labels, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return lowest != highest


def overlay_classes(image: np.ndarray, classes: np.ndarray, palette: np.ndarray = CLASS_PALETTE, alpha: float = 0.5,
                    contour: bool = True, background: int = BACKGROUND_CLASS) -> np.ndarray:
    """Blend each class's palette colour over its pixels and outline each class region in its colour.

    ``image``: RGB uint8 ``[H, W, 3]`` or ``[T, H, W, 3]``; ``classes``: integer ``[H, W]`` or ``[T, H, W]``
    of the same size, ``background`` pixels left as they are. ``palette``: uint8 ``[C, 3]``, at most 256
    colours (default :data:`CLASS_PALETTE`: the official AVSS colours for classes 0..70). Returns a new uint8
    image of the shape of ``image``.
    """
    classes = np.asarray(classes)
    if classes.shape != image.shape[:-1] or image.shape[-1] != 3:
        raise ValueError(f"class map {list(classes.shape)} and RGB image {list(image.shape)} differ in size")
    if len(palette) > 256:
        raise ValueError(f"at most 256 classes can be drawn, the palette has {len(palette)}")
    colours = classes_to_colours(classes, palette)  # checks the dtype and the class range
    foreground = classes != background
    out = image.copy()
    out[foreground] = ((1.0 - alpha) * image[foreground].astype(np.float32)
                       + alpha * colours[foreground].astype(np.float32)).round().astype(np.uint8)
    if contour:
        height, width = classes.shape[-2:]
        flat_classes, flat_out, flat_colours = (a.reshape(-1, height, width, *a.shape[classes.ndim:])
                                                for a in (classes, out, colours))
        for frame_classes, frame_out, frame_colours in zip(flat_classes, flat_out, flat_colours):
            edge = class_boundaries(frame_classes, contour_width(height, width)) & (frame_classes != background)
            frame_out[edge] = frame_colours[edge]
    return out


def overlay_prediction(image: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Draw a frame's prediction: a bool mask ``[H, W]`` with :func:`overlay_mask`, an integer class map
    ``[H, W]`` with :func:`overlay_classes` (official palette)."""
    if prediction.dtype == bool:
        return overlay_mask(image, prediction)
    return overlay_classes(image, prediction)


def legend_image(entries: Sequence[Tuple[str, Color]], row_height: int = 28, min_width: int = 160) -> np.ndarray:
    """A colour key: one row per ``(name, (r, g, b))`` entry, a swatch then the name, on white.

    Returns RGB uint8 ``[rows * row_height + 8, W, 3]``; with no entries, one row saying so.
    """
    rows = list(entries) or [("no class present", None)]
    scale, thickness = row_height / 40, 1
    text_width = max(cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for name, _ in rows)
    swatch = row_height - 8
    image = np.full((len(rows) * row_height + 8, max(min_width, swatch + text_width + 24), 3), 255, np.uint8)
    for row, (name, colour) in enumerate(rows):
        top = 4 + row * row_height
        if colour is not None:
            cv2.rectangle(image, (6, top + 4), (6 + swatch, top + 4 + swatch), tuple(int(c) for c in colour), thickness=-1)
            cv2.rectangle(image, (6, top + 4), (6 + swatch, top + 4 + swatch), (0, 0, 0), thickness=1)
        cv2.putText(image, name, (swatch + 14, top + row_height - 9), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    return image


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner on a dark box (for strips)."""
    out = image.copy()
    scale = max(0.35, image.shape[0] / 400)
    thickness = max(1, round(scale * 1.5))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(out, (0, 0), (w + 6, h + base + 6), (0, 0, 0), thickness=-1)
    cv2.putText(out, text, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def frame_strip(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[str] = (),
                tile_height: int = 160, color: Color = DEFAULT_COLOR) -> np.ndarray:
    """Two rows, one column per frame: the frames above, the frames with their mask overlay below.

    ``frames``: RGB ``uint8 [H, W, 3]``; ``masks``: bool ``[H, W]`` (drawn in ``color``) or integer class
    maps ``[H, W]`` (drawn in the palette, :func:`overlay_classes`); ``labels`` (e.g. timestamps) are
    written on the top row. Each tile is scaled to ``tile_height`` pixels, keeping the aspect ratio.
    Returns RGB ``uint8 [2 * tile_height + gap, W_total, 3]``.
    """
    if not frames or len(frames) != len(masks):
        raise ValueError(f"need as many masks as frames (got {len(frames)} frames, {len(masks)} masks), at least one")
    gap = 4
    columns = []
    for index, (frame, mask) in enumerate(zip(frames, masks)):
        height, width = frame.shape[:2]
        size = (max(1, round(width * tile_height / height)), tile_height)
        top = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        drawn = overlay_mask(frame, mask, color) if mask.dtype == bool else overlay_classes(frame, mask)
        bottom = cv2.resize(drawn, size, interpolation=cv2.INTER_AREA)
        if index < len(labels):
            top = _label(top, labels[index])
        spacer = np.full((gap, size[0], 3), 255, np.uint8)
        columns.append(np.concatenate([top, spacer, bottom], axis=0))
        columns.append(np.full((2 * tile_height + gap, gap, 3), 255, np.uint8))
    return np.concatenate(columns[:-1], axis=1)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB ``uint8 [H, W, 3]`` or grey ``uint8 [H, W]`` image."""
    array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise MediaError("PNG encoding failed")
    return data.tobytes()


def save_png(path: Union[str, Path], image: np.ndarray) -> Path:
    """Write an RGB or grey ``uint8`` image as PNG, atomically."""
    path = Path(path)
    atomic_write_bytes(path, encode_png(image))
    return path
