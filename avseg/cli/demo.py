"""``avseg-demo`` / ``tools/demo.py``: segment the sounding objects of a video and write an overlay mp4.

Examples::

    python tools/demo.py --ckpt best.pth --video clip.mp4 --out clip_avs.mp4
    python tools/demo.py --ckpt best.pth --video clip.mp4 --out o.mp4 --fps 10 --save-masks masks/ --rle masks.json
    python tools/demo.py --ckpt best.pth --frames frames/ --audio clip.wav --out o.mp4

Exit status 2 with a one-line message naming the file, before anything is decoded where possible, for
bad input (missing file or checkpoint, unreadable container, no audio without ``--allow-silent``, shorter
than 0.975 s), an output whose folder is not writable, and an output at an input (symlinks resolved).
Outputs are written to temporary files and renamed when complete: never half-written.

A folder or quoted glob pattern as ``--video`` segments every video into the ``--out`` folder (resumable,
summary CSV, sharded over ``torchrun`` ranks; :mod:`avseg.inference.batch_demo`)::

    torchrun --nproc_per_node=4 tools/demo.py --ckpt best.pth --video "videos/**/*.mp4" --out results/ --overlay
"""
from __future__ import annotations

import argparse
import time
from typing import List, Optional

from avseg.cli.common import add_debug_argument, run_cli
from avseg.engine.run_setup import setup_logging
from avseg.errors import MediaError
from avseg.inference.batch_demo import MASK_FORMATS, BatchRequest, check_batch_options, is_batch_input, run_batch_demo
from avseg.inference.outputs import check_demo_request, describe_outputs, tqdm_progress, write_outputs
from avseg.inference.segmenter import DEFAULT_MAX_FPS, Segmenter
from avseg.inference.video import choose_fps


OUTPUT_NOTE = ("Outputs are never inputs: an output path that resolves to the video, frames folder, sound or "
               "checkpoint is refused (exit 2) before anything is decoded. An existing output file is replaced "
               "atomically, and only once its new content is complete.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avseg-demo", description=__doc__.split("\n\n")[0],
                                     epilog=OUTPUT_NOTE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="avseg checkpoint (weights + config)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="input video with sound (mp4, mov, mkv, webm, ...), or a folder or a quoted "
                                        "glob pattern of videos (then --out is a folder)")
    source.add_argument("--frames", help="input folder of frames (natural name order); give the sound with --audio")
    parser.add_argument("--audio", help="sound file for --frames (wav, flac, ... or a video's audio track)")
    parser.add_argument("--frame-rate", type=float, default=None,
                        help="frames per second of the --frames folder (default: frames / audio seconds, rounded)")
    parser.add_argument("--out", help="output mp4: frames with a mask overlay and contour, the original sound "
                                      "(for a folder of videos: the output folder)")
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's, capped by --max-fps)")
    parser.add_argument("--max-fps", type=float, default=DEFAULT_MAX_FPS,
                        help=f"cap of the default output frame rate (default {DEFAULT_MAX_FPS:g})")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask threshold on the foreground probability")
    parser.add_argument("--save-masks", metavar="DIR", help="also write one binary mask PNG per output frame (0/255)")
    parser.add_argument("--rle", metavar="JSON", help="also write the masks as COCO RLE in a JSON file")
    parser.add_argument("--strip", metavar="PNG", help="also write a PNG strip of frames with their masks")
    parser.add_argument("--strip-frames", type=int, default=6, help="number of frames in the --strip PNG")
    parser.add_argument("--legend", metavar="PNG", help="semantic models: also write a colour key of the classes "
                                                        "present (PNG, and JSON beside it)")
    parser.add_argument("--class-names", metavar="JSON", help="semantic models: label2idx.json giving the class names")
    parser.add_argument("--masks", choices=MASK_FORMATS, default="png",
                        help="folder of videos: masks per video as PNGs or one COCO RLE JSON (default png)")
    parser.add_argument("--overlay", action="store_true", help="folder of videos: also write each overlay mp4")
    parser.add_argument("--allow-silent", action="store_true", help="run on input without sound (silence), with a warning")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward pass")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_argument(parser)
    return parser


def batch_main(args: argparse.Namespace) -> int:
    check_batch_options({"--save-masks": args.save_masks, "--rle": args.rle, "--strip": args.strip, "--legend": args.legend})
    request = BatchRequest(masks=args.masks, overlay=args.overlay, fps=args.fps, max_fps=args.max_fps, threshold=args.threshold,
                           allow_silent=args.allow_silent, class_names=args.class_names)
    run_batch_demo(args.ckpt, args.video, args.out, request, device=args.device, batch_size=args.batch_size,
                   progress=not args.quiet).finish()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.video and is_batch_input(args.video):
        return batch_main(args)
    if args.masks != "png" or args.overlay:
        raise MediaError("--masks and --overlay are for a folder of videos; for one video use --out, --save-masks, --rle")
    outputs = dict(out=args.out, save_masks=args.save_masks, rle=args.rle, strip=args.strip, legend=args.legend)
    check_demo_request(args.ckpt, args.video, args.frames, args.audio, class_names=args.class_names, **outputs)
    seg = Segmenter.from_checkpoint(args.ckpt, device=args.device, batch_size=args.batch_size, threshold=args.threshold)
    if args.video:
        media = seg.open_video(args.video, args.allow_silent)
    else:
        media = seg.open_frames(args.frames, args.audio, args.frame_rate, args.allow_silent)
    info = media.info
    fps = choose_fps(info.fps, args.fps, args.max_fps)
    print(f"input:   {info.path} ({info.width}x{info.height}, {info.duration:.2f} s, {float(info.fps):.3g} fps, "
          f"audio: {'none (silence)' if media.silent else (media.audio_path or info.audio.codec)})")
    started = time.perf_counter()
    with tqdm_progress("segmenting", "clip", disable=args.quiet) as progress:
        result = seg.predict_media(media, fps, progress=progress)
    elapsed = time.perf_counter() - started
    print(f"model:   {args.ckpt} on {seg.device}; {len(result)} frames at {float(fps):.3g} fps in "
          f"{len(result.window_starts)} window(s) of {result.clip_seconds} s; {elapsed:.1f} s "
          f"({len(result) / max(elapsed, 1e-9):.1f} frames/s)")
    summary = write_outputs(media, result, strip_frames=args.strip_frames, checkpoint=args.ckpt,
                            class_names=args.class_names, **outputs)
    print("\n".join(describe_outputs(summary, len(result), **outputs)))
    return 0


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
