"""Drawing masks: a translucent coloured overlay with a contour, and a PNG strip of frames with masks."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple, Union

import cv2
import numpy as np

from avseg.errors import MediaError
from avseg.fileio import atomic_write_bytes

Color = Tuple[int, int, int]
DEFAULT_COLOR: Color = (255, 40, 40)
CONTOUR_COLOR: Color = (255, 255, 0)


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

    ``frames``: RGB ``uint8 [H, W, 3]``; ``masks``: bool ``[H, W]``; ``labels`` (e.g. timestamps) are
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
        bottom = cv2.resize(overlay_mask(frame, mask, color), size, interpolation=cv2.INTER_AREA)
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
