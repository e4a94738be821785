"""The demo's outputs: the overlay mp4, mask PNGs, COCO RLE JSON, a frame strip and (semantic models) a legend.

:func:`check_demo_request` runs before anything is decoded: an output that resolves (symlinks included)
to an input, or that would write into an input frame folder, is refused (:func:`check_outputs_not_inputs`),
and so is an output whose folder cannot be written (:func:`check_writable`). Every file is written to a
temporary file beside its target and renamed over it only once complete, so an existing output is
replaced atomically and only by a finished file; the PNGs of ``--save-masks`` are written into a
temporary folder first and moved in only when every frame is done (:func:`staged_folder`).

A semantic model's prediction (``num_classes > 1``) is a class map per frame (integer ``[H, W]``,
0 = background): it is drawn in the official AVSBench-semantic palette, its mask PNGs are colour masks
in the ``labels_rgb`` format, its RLE holds one mask per class present, and the legend lists the classes
present with their names and colours.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from avseg.data.semantic_labels import BACKGROUND_CLASS, classes_to_colours, read_class_names
from avseg.errors import MediaError
from avseg.evaluation.rle import encode_class_map, encode_mask
from avseg.fileio import current_umask, atomic_write_text
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


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(option: str, path: PathLike, folder: bool = False) -> None:
    """Refuse (:class:`MediaError` naming ``option`` and the path) an output that cannot be written.

    ``path`` is an output file (or, with ``folder``, an output folder). Its nearest existing ancestor must
    be a folder in which a file can be created: this is probed by creating and removing a temporary file,
    so permissions, read-only file systems and a file in the way are all caught before anything is decoded.
    """
    target = Path(path)
    existing = target if folder else target.parent
    try:
        if folder and target.exists() and not target.is_dir():
            raise MediaError(f"{option} {path}: is a file; expected a folder")
        if not folder and target.is_dir():
            raise MediaError(f"{option} {path}: is a folder; expected a file name")
        existing = _nearest_existing(existing)
        if not existing.is_dir():
            raise MediaError(f"{option} {path}: {existing} is a file, not a folder; the output cannot be created")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise MediaError(f"{option} {path}: cannot write in the folder {existing} ({exc.strerror or exc})") from None


def legend_json_path(legend: PathLike) -> Path:
    """The JSON written beside a legend PNG: ``legend.png`` → ``legend.json``."""
    return Path(legend).with_suffix(".json")


def check_demo_request(ckpt: PathLike, video: Optional[PathLike] = None, frames: Optional[PathLike] = None,
                       audio: Optional[PathLike] = None, out: Optional[PathLike] = None, save_masks: Optional[PathLike] = None,
                       rle: Optional[PathLike] = None, strip: Optional[PathLike] = None,
                       legend: Optional[PathLike] = None, class_names: Optional[PathLike] = None) -> None:
    """The demo's argument checks, before anything is decoded: something to write, ``audio`` only with ``frames``,
    an ``.mp4`` ``out``, a ``.png`` ``legend``, a readable ``class_names`` file, no output at an input
    (:func:`check_outputs_not_inputs`) and every output writable (:func:`check_writable`)."""
    if not (out or save_masks or rle or strip or legend):
        raise MediaError("nothing to write: give --out OUT.mp4 (and/or --save-masks, --rle, --strip, --legend)")
    if audio and not frames:
        raise MediaError("--audio goes with --frames; a --video brings its own audio track")
    if out and Path(out).suffix.lower() != ".mp4":
        raise MediaError(f"--out must end in .mp4, got {out}")
    if legend and Path(legend).suffix.lower() != ".png":
        raise MediaError(f"--legend must end in .png (its JSON is written beside it), got {legend}")
    files = {"--out": out, "--rle": rle, "--strip": strip, "--legend": legend,
             "--legend (JSON)": legend_json_path(legend) if legend else None}
    if class_names:
        read_class_names(class_names, None)
    check_outputs_not_inputs({"--video": video, "--frames": frames, "--audio": audio, "--ckpt": ckpt,
                              "--class-names": class_names}, files=files, folders={"--save-masks": save_masks})
    for option, path in files.items():
        if path:
            check_writable(option, path)
    if save_masks:
        check_writable("--save-masks", save_masks, folder=True)


@contextlib.contextmanager
def staged_folder(folder: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; on success its files go into ``folder``, on error it is removed.

    When ``folder`` does not exist the temporary folder is renamed to it (all files appear at once);
    otherwise each file is moved in (``os.replace``, one rename per file) and other files stay.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())
        if not target.exists():
            os.replace(staging, target)
        else:
            for item in sorted(staging.iterdir()):
                os.replace(item, target / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------- semantic predictions
def num_classes_of(result: Prediction) -> int:
    """1 for a binary prediction, the number of classes (background included) for a semantic one."""
    return int(getattr(result, "num_classes", 1) or 1)


def frame_prediction(result: Prediction, index: int) -> np.ndarray:
    """Frame ``index`` at the frame size: bool mask ``[H, W]`` (binary model) or int class map ``[H, W]`` (semantic)."""
    return result.class_map(index) if num_classes_of(result) > 1 else result.mask(index)


def class_names_for(num_classes: int, names: Union[PathLike, Sequence[str], None] = None) -> List[str]:
    """Names of classes ``0 .. num_classes - 1``: from a ``label2idx.json`` (key order, as the official loader),
    from a list of names, or ``background, class 1, class 2, ...`` when ``names`` is None."""
    if names is None:
        return ["background"] + [f"class {index}" for index in range(1, num_classes)]
    if isinstance(names, (str, os.PathLike)):
        return read_class_names(names, num_classes)
    names = [str(name) for name in names]
    if len(names) != num_classes:
        raise MediaError(f"{len(names)} class names given for a model with {num_classes} classes (background included)")
    return names


class ClassTally:
    """Per-class pixel and frame counts over the class maps of a video, for its legend."""

    def __init__(self, num_classes: int):
        self.pixels = np.zeros(num_classes, np.int64)
        self.frames = np.zeros(num_classes, np.int64)
        self.total_pixels = 0

    def add(self, classes: np.ndarray) -> None:
        """Count one class map (integer ``[H, W]``)."""
        counts = np.bincount(classes.ravel(), minlength=len(self.pixels))
        if len(counts) > len(self.pixels):
            raise ValueError(f"class map holds class {len(counts) - 1}, the model has {len(self.pixels)} classes")
        self.pixels += counts
        self.frames += counts > 0
        self.total_pixels += classes.size

    def legend(self, names: Sequence[str], palette: np.ndarray = overlay.CLASS_PALETTE,
               background: int = BACKGROUND_CLASS) -> List[dict]:
        """The classes present (background left out), in class order: ``class``, ``name``, ``colour``
        (RGB), ``frames`` (how many frames show it) and ``pixel_fraction`` (of all pixels of all frames)."""
        return [{"class": int(index), "name": names[index], "colour": [int(c) for c in palette[index]],
                 "frames": int(self.frames[index]), "pixel_fraction": round(float(self.pixels[index]) / max(self.total_pixels, 1), 6)}
                for index in np.nonzero(self.pixels)[0] if index != background]


def write_legend(path: PathLike, classes: Sequence[dict], frames: int) -> Path:
    """Write the legend PNG at ``path`` and its JSON beside it (:func:`legend_json_path`), both atomically.

    ``classes``: :meth:`ClassTally.legend` entries. The JSON is ``{"palette", "background", "frames", "classes"}``.
    """
    rows = [(f"{entry['class']}  {entry['name']}", tuple(entry["colour"])) for entry in classes]
    overlay.save_png(path, overlay.legend_image(rows))
    document = {"palette": "AVSBench-semantic (official _getpallete)", "background": BACKGROUND_CLASS,
                "frames": frames, "classes": list(classes)}
    atomic_write_text(legend_json_path(path), json.dumps(document, indent=1))
    return Path(path)


def mask_image(prediction: np.ndarray) -> np.ndarray:
    """The PNG of a frame's prediction: 0/255 grey ``[H, W]`` for a bool mask, the palette colour mask
    ``[H, W, 3]`` (the release's ``labels_rgb`` format) for a class map."""
    if prediction.dtype == bool:
        return prediction.astype(np.uint8) * 255
    return classes_to_colours(prediction, overlay.CLASS_PALETTE)


def describe_outputs(summary: dict, frames: int, out: Optional[PathLike] = None, save_masks: Optional[PathLike] = None,
                     rle: Optional[PathLike] = None, strip: Optional[PathLike] = None,
                     legend: Optional[PathLike] = None) -> List[str]:
    """Lines telling what :func:`write_outputs` wrote (``summary`` is its return value), the mask coverage and,
    for a semantic model, the classes present."""
    lines = []
    if out:
        lines.append(f"video:   {out} ({summary['frames_written']} frames, audio {summary['audio']})")
    if save_masks:
        lines.append(f"masks:   {save_masks}/000000.png ... {frames - 1:06d}.png")
    if rle:
        lines.append(f"rle:     {rle}")
    if strip:
        lines.append(f"strip:   {strip}")
    if legend:
        lines.append(f"legend:  {legend} and {legend_json_path(legend)}")
    coverage = summary["coverage"]
    lines.append(f"masks cover {100 * np.mean(coverage):.1f} % of the frame on average "
                 f"(min {100 * min(coverage):.1f} %, max {100 * max(coverage):.1f} %)")
    if summary.get("classes") is not None:
        present = ", ".join(f"{entry['class']} {entry['name']} ({entry['frames']} frames)" for entry in summary["classes"])
        lines.append(f"classes: {present or 'none besides the background'}")
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
                  checkpoint: str = "", legend: Optional[PathLike] = None,
                  class_names: Union[PathLike, Sequence[str], None] = None) -> dict:
    """Decode the input once more and write the requested outputs of a prediction.

    ``out``: overlay mp4 with the original sound; ``save_masks``: folder of PNGs (0/255 masks, or palette
    colour masks for a semantic model); ``rle``: COCO RLE JSON (one RLE per class present for a semantic
    model); ``strip``: PNG strip of ``strip_frames`` frames with masks; ``legend`` (semantic models only):
    PNG colour key of the classes present, with its JSON beside it; ``class_names``: a ``label2idx.json``
    or a list of names for the legend and the RLE (default ``class N``). Returns ``frames_written``,
    ``audio`` (copied | encoded | none), per-frame ``coverage`` (fraction of non-background pixels) and
    ``classes`` (the legend entries; None for a binary model). Every output is whole or absent: an error
    while writing removes the unfinished files and raises :class:`MediaError` naming the file.
    """
    info = media.info
    num_classes = num_classes_of(result)
    if legend and num_classes == 1:
        raise MediaError(f"--legend {legend}: the checkpoint is a binary (1-class) model; a legend needs a semantic model")
    names = class_names_for(num_classes, class_names) if num_classes > 1 else None
    tally = ClassTally(num_classes) if num_classes > 1 else None
    strip_at = set(strip_indices(len(result), strip_frames)) if strip else set()
    strip_images, strip_masks, strip_labels = [], [], []
    rle_frames, coverage = [], []
    writer = masks_folder = None
    try:
        with contextlib.ExitStack() as stack:
            if out:
                audio = {}
                if not media.silent:  # the original sound: the video's own track or the frame folder's sound file
                    audio = dict(audio_from=media.audio_path or info.path, audio_offset=-info.start_pts_seconds)
                writer = stack.enter_context(Mp4Writer(out, result.fps, info.width, info.height, **audio))
            masks_folder = stack.enter_context(staged_folder(save_masks)) if save_masks else None
            for index, frame in iter_frames_at(info, result.timestamps):
                prediction = frame_prediction(result, index)
                coverage.append(float(np.mean(prediction != 0)))
                if tally is not None:
                    tally.add(prediction)
                if writer is not None:
                    writer.write(overlay.overlay_prediction(frame, prediction))
                if masks_folder is not None:
                    overlay.save_png(masks_folder / f"{index:06d}.png", mask_image(prediction))
                if rle:
                    encoded = ({"classes": encode_class_map(prediction, names)} if tally is not None
                               else {"segmentation": encode_mask(prediction)})
                    rle_frames.append({"index": index, "time": round(float(result.timestamps[index]), 6), **encoded})
                if index in strip_at:
                    strip_images.append(frame)
                    strip_masks.append(prediction)
                    strip_labels.append(f"{result.timestamps[index]:.2f} s")
        classes = tally.legend(names) if tally is not None else None
        if rle:
            document = {"input": str(info.path), "checkpoint": str(checkpoint), "fps": str(result.fps),
                        "height": info.height, "width": info.width}
            document.update({"num_classes": num_classes, "class_names": names} if tally is not None
                            else {"threshold": result.threshold})
            atomic_write_text(rle, json.dumps({**document, "frames": rle_frames}))
        if strip:
            overlay.save_png(strip, overlay.frame_strip(strip_images, strip_masks, strip_labels))
        if legend:
            write_legend(legend, classes, len(result))
    except OSError as exc:  # disk full, permissions changed while running...
        where = str(exc.filename or out or save_masks or rle or strip or legend)
        if masks_folder is not None:  # name the user's folder, not the temporary one
            where = where.replace(str(masks_folder), str(save_masks))
        raise MediaError(f"{where}: writing the output failed ({exc.strerror or exc}); nothing half-written was left") from None
    return {"frames_written": writer.frames_written if writer is not None else 0,
            "audio": writer.audio_mode if writer is not None else "none", "coverage": coverage, "classes": classes}
