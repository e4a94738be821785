"""Segment a folder (or glob) of videos: resumable, one progress bar, a summary CSV, sharded over torchrun ranks.

``tools/demo.py --ckpt C --video DIR|GLOB --out OUT [--masks png|rle] [--overlay]`` lists the videos
(``DIR``: every file with a video suffix under it, recursively; ``GLOB``: the files it matches;
hidden files and folders are skipped), sorts them by their path relative to the input root, and writes
for each video ``OUT/<relative path without suffix>/``:

* ``masks/000000.png ...`` (``--masks png``) or ``masks.json`` (``--masks rle``, COCO RLE),
* ``overlay.mp4`` with ``--overlay``, ``legend.png`` and ``legend.json`` for a semantic model,
* ``done.json`` (the marker: what was asked, frame count, duration), written last.

A video's folder is built in ``OUT/.avseg-partial/new/<name>/`` and renamed into place only when all
its files, marker included, are complete, so ``OUT/<name>/`` is either whole or absent; a kill leaves
at most a partial folder, which the next run removes and redoes. A video counts as done when its
folder holds a marker whose settings (input size and time, checkpoint, fps, threshold, outputs) equal
this run's; a done video is skipped, one done with other settings is redone and its folder replaced.

A video that cannot be segmented (no audio, corrupt file, too short...) is recorded with its error
and the batch goes on. ``OUT/summary.csv`` (written atomically by rank 0 after every rank finished)
has one row per video: ``video, output, status (done | skipped | error), frames, seconds, elapsed_s, error``.

Under ``torchrun --nproc_per_node=N`` (multi-node too: ``RANK``/``WORLD_SIZE``) every rank builds the
same sorted list and takes every ``WORLD_SIZE``-th video from its ``RANK`` (:func:`shard`): no video is
done twice, and rank 0 gathers the rows for the summary.
"""
from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from avseg.data.semantic_labels import read_class_names
from avseg.errors import AvsegError, MediaError
from avseg.fileio import atomic_write_text
from avseg.inference.outputs import check_writable, num_classes_of, write_outputs
from avseg.inference.segmenter import DEFAULT_MAX_FPS, Segmenter
from avseg.inference.video import choose_fps

LOGGER = logging.getLogger("avseg")

PathLike = Union[str, os.PathLike]
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
MARKER = "done.json"
MARKER_FORMAT = "avseg-demo-video"
PARTIAL = ".avseg-partial"
SUMMARY = "summary.csv"
SUMMARY_COLUMNS = ("video", "output", "status", "frames", "seconds", "elapsed_s", "error")
MASK_FORMATS = ("png", "rle")
DIST_TIMEOUT_MINUTES = 24 * 60  # ranks wait for the slowest one before the summary is merged


@dataclass(frozen=True)
class BatchRequest:
    """What to write per video and how to segment it (the demo's options for a folder)."""

    masks: str = "png"
    overlay: bool = False
    fps: Optional[float] = None
    max_fps: Optional[float] = DEFAULT_MAX_FPS
    threshold: float = 0.5
    allow_silent: bool = False
    class_names: Optional[str] = None

    def __post_init__(self):
        if self.masks not in MASK_FORMATS:
            raise MediaError(f"--masks must be one of {', '.join(MASK_FORMATS)}, got '{self.masks}'")


@dataclass
class BatchReport:
    """The rows of a batch run (every rank's on rank 0, this rank's elsewhere) and where the summary went."""

    rows: List[Dict[str, str]]
    summary: Optional[Path] = None
    rank: int = 0
    world_size: int = 1
    failures: List[Dict[str, str]] = field(default_factory=list)

    def lines(self) -> List[str]:
        """What to print at the end: counts per status, the summary path and the first errors."""
        counts = {status: sum(row["status"] == status for row in self.rows) for status in ("done", "skipped", "error")}
        lines = [f"videos:  {len(self.rows)} ({counts['done']} segmented, {counts['skipped']} already done, "
                 f"{counts['error']} failed)" + (f" over {self.world_size} ranks" if self.world_size > 1 else "")]
        if self.summary is not None:
            lines.append(f"summary: {self.summary}")
        return lines

    def failure_message(self) -> str:
        shown = "; ".join(row["error"] if row["video"] in row["error"] else f"{row['video']}: {row['error']}"
                          for row in self.failures[:3])
        more = f"; and {len(self.failures) - 3} more" if len(self.failures) > 3 else ""
        return f"{len(self.failures)} of {len(self.rows)} videos failed ({shown}{more}); see {self.summary}"

    def finish(self) -> None:
        """On rank 0: print :meth:`lines`, then raise :class:`MediaError` (exit status 2) when a video failed."""
        if self.rank != 0:
            return
        print("\n".join(self.lines()))
        if self.failures:
            raise MediaError(self.failure_message())


def check_batch_options(single_video_outputs: Dict[str, Optional[str]]) -> None:
    """Refuse the one-video outputs (option → value) in the folder mode."""
    given = [option for option, value in single_video_outputs.items() if value]
    if given:
        raise MediaError(f"{', '.join(given)}: for one video only; a folder of videos takes --masks png|rle and --overlay")


# ----------------------------------------------------------------------------- the list of videos
def is_batch_input(spec: PathLike) -> bool:
    """True when ``--video`` names a folder or a glob pattern (not an existing file)."""
    path = Path(spec)
    return path.is_dir() or (glob.has_magic(str(spec)) and not path.exists())


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def list_videos(spec: PathLike) -> Tuple[List[Path], Path]:
    """The videos of a folder (recursively, by suffix) or a glob pattern, and the root their names are relative to.

    Sorted by the path relative to the root, so every rank and every run sees the same order. Hidden
    files and folders (``.name``) are skipped. No video raises :class:`MediaError` naming ``spec``.
    """
    path = Path(spec)
    if path.is_dir():
        root = path
        found = [p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() and _visible(p, root)]
        hint = f"no video files ({', '.join(VIDEO_SUFFIXES)}) under the folder (a folder of frames goes with --frames)"
    else:
        matched = [Path(p) for p in glob.glob(str(spec), recursive=True)]
        found = [p for p in matched if p.is_file()]
        root = Path(os.path.commonpath([str(p.parent) for p in found])) if found else path.parent
        found = [p for p in found if _visible(p, root)]
        hint = "the pattern matches no file"
    if not found:
        raise MediaError(f"--video {spec}: {hint}")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix()), root


def output_names(videos: Sequence[Path], root: Path) -> List[str]:
    """Each video's output folder name: its path relative to ``root`` without the suffix (``a/clip``).

    A name that two videos would share (``clip.mp4``, ``clip.mov``), that is also the folder of another
    video's name (``a.mp4`` beside ``a/b.mp4``) or that is the summary's name keeps its suffix
    (``clip_mp4``); a clash that remains raises :class:`MediaError` naming both videos.
    """
    stems = [video.relative_to(root).with_suffix("").as_posix() for video in videos]
    taken = {SUMMARY} | {parent.as_posix() for stem in stems for parent in Path(stem).parents}
    names = [stem if stems.count(stem) == 1 and stem not in taken else f"{stem}_{video.suffix.lstrip('.').lower()}"
             for stem, video in zip(stems, videos)]
    owner: Dict[str, Path] = {}
    for name, video in zip(names, videos):
        if name in owner:
            raise MediaError(f"{video} and {owner[name]} would both write to the output folder {name}; rename one")
        owner[name] = video
    for name, video in zip(names, videos):
        for parent in (p.as_posix() for p in Path(name).parents):
            if parent in owner:
                raise MediaError(f"the output folder {parent} of {owner[parent]} would hold the one of {video}; rename one")
    return names


def rank_and_world_size() -> Tuple[int, int]:
    """``RANK`` and ``WORLD_SIZE`` from torchrun's environment (0 and 1 for a plain run)."""
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1)):
        text = os.environ.get(name, "")
        try:
            values.append(int(text) if text else default)
        except ValueError:
            raise MediaError(f"environment variable {name}='{text}' is not an integer (torchrun sets it)") from None
    rank, world_size = values
    if not 0 <= rank < world_size:
        raise MediaError(f"RANK={rank} must lie in 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    return rank, world_size


def shard(items: Sequence, rank: int, world_size: int) -> List[int]:
    """Indices of the items of ``rank``: ``rank, rank + world_size, ...`` (disjoint, covering all ranks)."""
    return list(range(rank, len(items), world_size))


# ----------------------------------------------------------------------------- one video
def _file_stamp(path: PathLike) -> Dict[str, object]:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def video_settings(video: Path, request: BatchRequest, checkpoint: PathLike) -> Dict[str, object]:
    """What a video's outputs depend on; a marker with other settings means the video is redone.

    ``allow_silent`` is left out: it decides whether a video without sound runs, not what a done one holds.
    """
    options = {key: value for key, value in asdict(request).items() if key != "allow_silent"}
    return {"input": video.name, **_file_stamp(video), "checkpoint": os.path.realpath(checkpoint),
            "checkpoint_stamp": _file_stamp(checkpoint), **options}


def read_marker(folder: Path) -> Optional[dict]:
    """The ``done.json`` of an output folder, or None when absent or not an avseg marker."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None


def is_done(folder: Path, settings: Dict[str, object]) -> Optional[dict]:
    """The marker of ``folder`` when the video is done with these ``settings`` and its outputs all exist."""
    marker = read_marker(folder)
    if marker is None or marker.get("settings") != json.loads(json.dumps(settings)):
        return None
    return marker if all((folder / output).exists() for output in marker.get("outputs", [])) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def segment_video(seg: Segmenter, video: Path, name: str, out: Path, request: BatchRequest,
                  settings: Dict[str, object]) -> Dict[str, object]:
    """Segment one video into ``out/name/`` through a staging folder; returns its marker.

    Raises :class:`MediaError` for an unusable video or when ``out/name`` exists but is not an avseg output.
    """
    final = out / name
    if final.exists() and read_marker(final) is None:
        raise MediaError(f"{final} exists and is not an avseg demo output (no {MARKER}); move it away")
    staging, old = out / PARTIAL / "new" / name, out / PARTIAL / "old" / name
    _remove(staging)  # what a killed run left
    staging.mkdir(parents=True)
    media = seg.open_video(video, request.allow_silent)
    result = seg.predict_media(media, choose_fps(media.info.fps, request.fps, request.max_fps), request.threshold)
    outputs = {"save_masks": "masks"} if request.masks == "png" else {"rle": "masks.json"}
    if request.overlay:
        outputs["out"] = "overlay.mp4"
    if num_classes_of(result) > 1:
        outputs["legend"] = "legend.png"
    summary = write_outputs(media, result, checkpoint=str(settings["checkpoint"]), class_names=request.class_names,
                            **{key: staging / value for key, value in outputs.items()})
    files = sorted(outputs.values()) + (["legend.json"] if "legend" in outputs else [])
    marker = {"format": MARKER_FORMAT, "version": 1, "settings": settings, "outputs": files, "frames": len(result),
              "seconds": round(media.info.duration, 6), "fps": str(result.fps), "audio": "none" if media.silent else "input",
              "classes": summary["classes"]}
    atomic_write_text(staging / MARKER, json.dumps(marker, indent=1))
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # done before with other settings: swap the folders, then drop the old one
        _remove(old)
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, old)
    os.replace(staging, final)
    _remove(old)
    return marker


def _remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file (what finished videos left of the staging area)."""
    if not folder.is_dir():
        return
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [folder]:
        with contextlib.suppress(OSError):
            path.rmdir()


def _row(video: Path, final: Path, status: str, marker: Optional[dict] = None, elapsed: float = 0.0,
         error: str = "") -> Dict[str, str]:
    return {"video": str(video), "output": "" if status == "error" else str(final), "status": status,
            "frames": str(marker["frames"]) if marker else "", "seconds": f"{marker['seconds']:.3f}" if marker else "",
            "elapsed_s": f"{elapsed:.2f}", "error": error}


def run_batch(seg: Segmenter, videos: Sequence[Path], names: Sequence[str], out: PathLike, request: BatchRequest,
              checkpoint: PathLike, rank: int = 0, world_size: int = 1, progress: bool = True) -> List[Dict[str, str]]:
    """Segment this rank's share of ``videos`` (:func:`shard`) into ``out``; returns one summary row per video.

    Done videos are skipped; a video's error is recorded in its row and the next video follows.
    ``progress``: a tqdm bar over this rank's videos on stderr.
    """
    from tqdm import tqdm

    out = Path(out)
    rows = []
    mine = shard(videos, rank, world_size)
    with tqdm(total=len(mine), unit="video", desc="videos", file=sys.stderr, disable=not progress) as bar:
        for index in mine:
            video, name = videos[index], names[index]
            bar.set_postfix_str(name, refresh=False)
            final, started = out / name, time.perf_counter()
            try:
                settings = video_settings(video, request, checkpoint)
                marker = is_done(final, settings)
                if marker is not None:
                    rows.append(_row(video, final, "skipped", marker))
                else:
                    marker = segment_video(seg, video, name, out, request, settings)
                    rows.append(_row(video, final, "done", marker, time.perf_counter() - started))
            except Exception as exc:  # one video's failure (user error or a library's) must not stop the batch
                message = str(exc) if isinstance(exc, AvsegError) else f"{type(exc).__name__}: {exc}"
                LOGGER.debug("%s failed", video, exc_info=True)
                _remove(out / PARTIAL / "new" / name)
                rows.append(_row(video, final, "error", elapsed=time.perf_counter() - started, error=message))
            bar.update(1)
    return rows


def write_summary(path: PathLike, rows: Sequence[Dict[str, str]]) -> Path:
    """Write the summary CSV (:data:`SUMMARY_COLUMNS`) atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
    return Path(path)


def check_batch_request(spec: PathLike, out: Optional[PathLike], checkpoint: PathLike,
                        class_names: Optional[PathLike] = None) -> Tuple[List[Path], List[str]]:
    """The folder mode's checks before any video is decoded; returns the sorted videos and their output names.

    ``out`` must be given, writable and apart from the inputs: not the input folder (the folder given, or
    the common folder of the videos a pattern matches), not inside it and not holding it; and no output
    (a video's folder, the summary) may be the checkpoint or the class-name file, or hold them.
    """
    if not out:
        raise MediaError("--out OUT_FOLDER is required with a folder or pattern of videos")
    videos, root = list_videos(spec)
    target, source = Path(os.path.realpath(out)), Path(os.path.realpath(root))
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        relation = "is" if target == source else ("lies inside" if target.is_relative_to(source) else "holds")
        raise MediaError(f"--out {out} {relation} the input folder {root}; write the outputs to a folder apart from the videos")
    if class_names:
        read_class_names(class_names, None)
    names = output_names(videos, root)
    read = {"--ckpt": checkpoint, "--class-names": class_names}
    for written in [target / SUMMARY, target / PARTIAL] + [target / name for name in names]:
        for option, given in read.items():
            if given and Path(os.path.realpath(given)).is_relative_to(written):
                raise MediaError(f"--out {out}: the output {written} would replace {option} {given}; "
                                 "write the outputs elsewhere")
    check_writable("--out", out, folder=True)
    return videos, names


def run_batch_demo(checkpoint: PathLike, spec: PathLike, out: PathLike, request: BatchRequest,
                   device: Optional[str] = None, batch_size: int = 4, progress: bool = True) -> BatchReport:
    """The folder mode end to end: checks, torchrun process group, this rank's videos, the merged summary.

    Rank 0 writes ``out/summary.csv`` with every rank's rows (in the sorted order of the videos).
    """
    from avseg.engine.distributed import gather_to_main, init_distributed, shutdown_distributed

    videos, names = check_batch_request(spec, out, checkpoint, request.class_names)
    rank, world_size = rank_and_world_size()
    context = init_distributed(device or "auto", timeout_minutes=DIST_TIMEOUT_MINUTES)
    try:
        seg = Segmenter.from_checkpoint(checkpoint, device=context.device, batch_size=batch_size,
                                        threshold=request.threshold)
        rows = run_batch(seg, videos, names, out, request, checkpoint, rank, world_size, progress and rank == 0)
        gathered = gather_to_main(rows)
    finally:
        shutdown_distributed()
    if gathered is None:
        return BatchReport(rows, None, rank, world_size, [row for row in rows if row["status"] == "error"])
    _remove_empty_folders(Path(out) / PARTIAL)
    order = {str(video): position for position, video in enumerate(videos)}
    merged = sorted((row for part in gathered for row in part), key=lambda row: order[row["video"]])
    summary = write_summary(Path(out) / SUMMARY, merged)
    return BatchReport(merged, summary, rank, world_size, [row for row in merged if row["status"] == "error"])
