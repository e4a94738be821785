"""The demo's outputs: the overlay mp4, mask PNGs, COCO RLE JSON and a frame strip of one prediction.

:func:`check_outputs_not_inputs` runs before anything is decoded: an output that resolves (symlinks
included) to an input, or that would write into an input frame folder, is refused. Every file is
written to a temporary file beside its target and renamed over it only once complete, so an existing
output is replaced atomically and only by a finished file.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np

from avseg.errors import MediaError
from avseg.evaluation.rle import encode_mask
from avseg.fileio import atomic_write_text
from avseg.inference import overlay
from avseg.inference.segmenter import MediaInput, Prediction
from avseg.inference.video import Mp4Writer, iter_frames_at

PathLike = Union[str, os.PathLike]


def check_outputs_not_inputs(
    inputs: Mapping[str, Optional[PathLike]],
    files: Mapping[str, Optional[PathLike]] = {},
    folders: Mapping[str, Optional[PathLike]] = {},
) -> None:
    """Refuse (:class:`MediaError`) outputs that would overwrite or write into what is read.

    ``inputs``: option name → file or folder that is read; ``files``: option name → output file;
    ``folders``: option name → output folder (files are written directly inside it). Unset (None) entries
    are skipped. Paths are compared after ``realpath`` (symlinks resolved). Refused: an output file that is
    an input, or lies directly in an input folder; an output folder that is an input folder or an input
    file; two outputs at the same path.
    """
    read = {option: Path(os.path.realpath(path)) for option, path in inputs.items() if path is not None}
    read_folders = {option: path for option, path in read.items() if path.is_dir()}
    written: Dict[Path, str] = {}

    def claim(option: str, path: Path, given: PathLike) -> None:
        if path in written:
            raise MediaError(f"{option} {given} and {written[path]} name the same output path; give each its own")
        written[path] = option

    outputs = [(option, given, True) for option, given in files.items()] + [(option, given, False) for option, given in folders.items()]
    for option, given, is_file in outputs:
        if given is None:
            continue
        path = Path(os.path.realpath(given))
        for source, source_path in read.items():
            if path == source_path:
                raise MediaError(f"{option} {given} is the input {source} {inputs[source]}; write the output elsewhere")
        for source, folder in read_folders.items() if is_file else ():
            if path.parent == folder:
                raise MediaError(f"{option} {given} lies in the input folder {source} {inputs[source]}; write the output elsewhere")
        claim(option, path, given)


def check_demo_request(ckpt: PathLike, video: Optional[PathLike] = None, frames: Optional[PathLike] = None,
                       audio: Optional[PathLike] = None, out: Optional[PathLike] = None, save_masks: Optional[PathLike] = None,
                       rle: Optional[PathLike] = None, strip: Optional[PathLike] = None) -> None:
    """The demo's argument checks, before anything is read: something to write, ``audio`` only with ``frames``,
    an ``.mp4`` ``out``, and no output at an input (:func:`check_outputs_not_inputs`)."""
    if not (out or save_masks or rle or strip):
        raise MediaError("nothing to write: give --out OUT.mp4 (and/or --save-masks, --rle, --strip)")
    if audio and not frames:
        raise MediaError("--audio goes with --frames; a --video brings its own audio track")
    if out and Path(out).suffix.lower() != ".mp4":
        raise MediaError(f"--out must end in .mp4, got {out}")
    check_outputs_not_inputs({"--video": video, "--frames": frames, "--audio": audio, "--ckpt": ckpt},
                             files={"--out": out, "--rle": rle, "--strip": strip}, folders={"--save-masks": save_masks})


def describe_outputs(summary: dict, frames: int, out: Optional[PathLike] = None, save_masks: Optional[PathLike] = None,
                     rle: Optional[PathLike] = None, strip: Optional[PathLike] = None) -> List[str]:
    """Lines telling what :func:`write_outputs` wrote (``summary`` is its return value) and the mask coverage."""
    lines = []
    if out:
        lines.append(f"video:   {out} ({summary['frames_written']} frames, audio {summary['audio']})")
    if save_masks:
        lines.append(f"masks:   {save_masks}/000000.png ... {frames - 1:06d}.png")
    if rle:
        lines.append(f"rle:     {rle}")
    if strip:
        lines.append(f"strip:   {strip}")
    coverage = summary["coverage"]
    lines.append(f"masks cover {100 * np.mean(coverage):.1f} % of the frame on average "
                 f"(min {100 * min(coverage):.1f} %, max {100 * max(coverage):.1f} %)")
    return lines


@contextlib.contextmanager
def tqdm_progress(desc: str, unit: str, disable: bool = False) -> Iterator[Optional[Callable[[int, int], None]]]:
    """A ``progress(done, total)`` callback that drives a tqdm bar on stderr (None when ``disable``)."""
    if disable:
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


def strip_indices(count: int, columns: int) -> List[int]:
    """``columns`` frame indices spread evenly over ``count`` frames (the middle of equal parts)."""
    columns = max(1, min(columns, count))
    return sorted({int((part + 0.5) * count / columns) for part in range(columns)})


def write_outputs(media: MediaInput, result: Prediction, out: Optional[PathLike] = None, save_masks: Optional[PathLike] = None,
                  rle: Optional[PathLike] = None, strip: Optional[PathLike] = None, strip_frames: int = 6,
                  checkpoint: str = "") -> dict:
    """Decode the input once more and write the requested outputs of a prediction.

    ``out``: overlay mp4 with the original sound; ``save_masks``: folder of 0/255 PNGs; ``rle``: COCO RLE
    JSON; ``strip``: PNG strip of ``strip_frames`` frames with masks. Returns ``frames_written``, ``audio``
    (copied | encoded | none) and per-frame mask ``coverage``.
    """
    info = media.info
    writer = None
    if out:
        audio = {}
        if not media.silent:  # the original sound: the video's own track or the frame folder's sound file
            audio = dict(audio_from=media.audio_path or info.path, audio_offset=-info.start_pts_seconds)
        writer = Mp4Writer(out, result.fps, info.width, info.height, **audio)
    strip_at = set(strip_indices(len(result), strip_frames)) if strip else set()
    strip_images, strip_masks, strip_labels = [], [], []
    rle_frames, coverage = [], []
    with writer if writer is not None else contextlib.nullcontext():
        for index, frame in iter_frames_at(info, result.timestamps):
            mask = result.mask(index)
            coverage.append(float(mask.mean()))
            if writer is not None:
                writer.write(overlay.overlay_mask(frame, mask))
            if save_masks:
                overlay.save_png(Path(save_masks) / f"{index:06d}.png", mask.astype(np.uint8) * 255)
            if rle:
                rle_frames.append({"index": index, "time": round(float(result.timestamps[index]), 6),
                                   "segmentation": encode_mask(mask)})
            if index in strip_at:
                strip_images.append(frame)
                strip_masks.append(mask)
                strip_labels.append(f"{result.timestamps[index]:.2f} s")
    if rle:
        document = {"input": str(info.path), "checkpoint": str(checkpoint), "fps": str(result.fps),
                    "threshold": result.threshold, "height": info.height, "width": info.width, "frames": rle_frames}
        atomic_write_text(rle, json.dumps(document))
    if strip:
        overlay.save_png(strip, overlay.frame_strip(strip_images, strip_masks, strip_labels))
    return {"frames_written": writer.frames_written if writer is not None else 0,
            "audio": writer.audio_mode if writer is not None else "none", "coverage": coverage}
