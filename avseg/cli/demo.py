"""``avseg-demo`` / ``tools/demo.py``: segment the sounding objects of a video and write an overlay mp4.

Examples::

    python tools/demo.py --ckpt best.pth --video clip.mp4 --out clip_avs.mp4
    python tools/demo.py --ckpt best.pth --video clip.mp4 --out o.mp4 --fps 10 --save-masks masks/ --rle masks.json
    python tools/demo.py --ckpt best.pth --frames frames/ --audio clip.wav --out o.mp4

Exit status 2 with a one-line message for bad input (missing file, unreadable container, no video
stream, no audio without ``--allow-silent``, shorter than 0.975 s). Every output is written to a
temporary file first and renamed when complete.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from avseg.cli.common import add_debug_argument, run_cli
from avseg.errors import MediaError
from avseg.fileio import atomic_write_text
from avseg.engine.run_setup import setup_logging
from avseg.evaluation.rle import encode_mask
from avseg.inference import overlay
from avseg.inference.segmenter import DEFAULT_MAX_FPS, MediaInput, Prediction, Segmenter
from avseg.inference.video import Mp4Writer, choose_fps, iter_frames_at


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avseg-demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="avseg checkpoint (weights + config)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="input video with sound (mp4, mov, mkv, webm, ...)")
    source.add_argument("--frames", help="input folder of frames (natural name order); give the sound with --audio")
    parser.add_argument("--audio", help="sound file for --frames (wav, flac, ... or a video's audio track)")
    parser.add_argument("--frame-rate", type=float, default=None,
                        help="frames per second of the --frames folder (default: frames / audio seconds, rounded)")
    parser.add_argument("--out", help="output mp4: frames with a mask overlay and contour, the original sound")
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's, capped by --max-fps)")
    parser.add_argument("--max-fps", type=float, default=DEFAULT_MAX_FPS,
                        help=f"cap of the default output frame rate (default {DEFAULT_MAX_FPS:g})")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask threshold on the foreground probability")
    parser.add_argument("--save-masks", metavar="DIR", help="also write one binary mask PNG per output frame (0/255)")
    parser.add_argument("--rle", metavar="JSON", help="also write the masks as COCO RLE in a JSON file")
    parser.add_argument("--strip", metavar="PNG", help="also write a PNG strip of frames with their masks")
    parser.add_argument("--strip-frames", type=int, default=6, help="number of frames in the --strip PNG")
    parser.add_argument("--allow-silent", action="store_true", help="run on input without sound (silence), with a warning")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward pass")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_argument(parser)
    return parser


def strip_indices(count: int, columns: int) -> List[int]:
    """``columns`` frame indices spread evenly over ``count`` frames (the middle of equal parts)."""
    columns = max(1, min(columns, count))
    return sorted({int((part + 0.5) * count / columns) for part in range(columns)})


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.out or args.save_masks or args.rle or args.strip):
        raise MediaError("nothing to write: give --out OUT.mp4 (and/or --save-masks, --rle, --strip)")
    if args.audio and not args.frames:
        raise MediaError("--audio goes with --frames; a --video brings its own audio track")
    if args.out and Path(args.out).suffix.lower() != ".mp4":
        raise MediaError(f"--out must end in .mp4, got {args.out}")
    if not 0.0 <= args.threshold <= 1.0:
        raise MediaError(f"--threshold is a probability in [0, 1], got {args.threshold}")

    setup_logging()
    seg = Segmenter.from_checkpoint(args.ckpt, device=args.device, batch_size=args.batch_size, threshold=args.threshold)
    if args.video:
        media = seg.open_video(args.video, args.allow_silent)
    else:
        media = seg.open_frames(args.frames, args.audio, args.frame_rate, args.allow_silent)
    info = media.info
    fps = choose_fps(info.fps, args.fps, args.max_fps)
    print(f"input:   {info.path} ({info.width}x{info.height}, {info.duration:.2f} s, {float(info.fps):.3g} fps, "
          f"audio: {'none (silence)' if media.silent else (media.audio_path or info.audio.codec)})")

    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(desc="segmenting", unit="clip", file=sys.stderr, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    started = time.perf_counter()
    result = seg.predict_media(media, fps, progress=progress if bar is not None else None)
    elapsed = time.perf_counter() - started
    if bar is not None:
        bar.close()
    print(f"model:   {args.ckpt} on {seg.device}; {len(result)} frames at {float(fps):.3g} fps in "
          f"{len(result.window_starts)} window(s) of {result.clip_seconds} s; {elapsed:.1f} s "
          f"({len(result) / max(elapsed, 1e-9):.1f} frames/s)")

    summary = write_outputs(media, result, out=args.out, save_masks=args.save_masks, rle=args.rle, strip=args.strip,
                            strip_frames=args.strip_frames, checkpoint=args.ckpt)
    if args.out:
        print(f"video:   {args.out} ({summary['frames_written']} frames, audio {summary['audio']})")
    if args.save_masks:
        print(f"masks:   {args.save_masks}/000000.png ... {len(result) - 1:06d}.png")
    if args.rle:
        print(f"rle:     {args.rle}")
    if args.strip:
        print(f"strip:   {args.strip}")
    coverage = summary["coverage"]
    print(f"masks cover {100 * np.mean(coverage):.1f} % of the frame on average "
          f"(min {100 * min(coverage):.1f} %, max {100 * max(coverage):.1f} %)")
    return 0


def write_outputs(media: MediaInput, result: Prediction, out: Optional[str] = None, save_masks: Optional[str] = None,
                  rle: Optional[str] = None, strip: Optional[str] = None, strip_frames: int = 6,
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


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
