"""``tools/stream.py``: segment a live source (a video file played in real time, or a camera and a microphone).

Examples::

    python tools/stream.py --ckpt best.pth --video clip.mp4 --realtime
    python tools/stream.py --ckpt best.pth --video clip.mp4 --output center        # as fast as possible
    python tools/stream.py --ckpt best.pth --camera /dev/video0 --camera-format v4l2 --mic default --mic-format pulse

Prints the latency percentiles (from a frame's release to its mask; the inherent audio latency included),
the output frames per second and the dropped frames. Exit status 2 with a message naming the file for
a missing checkpoint, an unreadable video or one without an audio track.
"""
from __future__ import annotations

import argparse
from typing import List

from avseg.cli.common import add_debug_argument, run_cli
from avseg.engine.run_setup import setup_logging

DEVICE_NOTE = ("--camera/--mic open capture devices through PyAV (FFmpeg input formats such as v4l2, avfoundation, "
               "dshow, alsa, pulse). They are not tested: the project's test machines have no capture devices. "
               "Inherent latency: no mask before 0.975 s of audio (one VGGish example); each frame is paired with "
               "the last complete 0.96 s example, which ends 0-0.96 s before it (docs/demo.md, Live streams).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avseg-stream", description=__doc__.split("\n\n")[0], epilog=DEVICE_NOTE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="avseg checkpoint (weights + config)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="a video file with sound, played as a live source")
    source.add_argument("--camera", help="capture device for frames, e.g. /dev/video0 (untested here; needs --mic)")
    parser.add_argument("--mic", help="capture device for sound, e.g. default or hw:0 (untested here)")
    parser.add_argument("--camera-format", default=None, help="PyAV/FFmpeg input format of --camera, e.g. v4l2")
    parser.add_argument("--mic-format", default=None, help="PyAV/FFmpeg input format of --mic, e.g. pulse or alsa")
    parser.add_argument("--realtime", action="store_true",
                        help="play --video at its own frame rate, dropping frames when segmentation falls behind")
    parser.add_argument("--output", choices=("last", "center"), default="last",
                        help="segment the newest frame (last) or the centre frame of the clip, T//2 s older (center)")
    parser.add_argument("--queue", type=int, default=8, help="frames waiting at most (8); older ones are dropped, 1 keeps only the freshest")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds of the source")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    add_debug_argument(parser)
    return parser


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.camera is not None and args.mic is None:
        build_parser().error("--camera needs --mic (the models segment what sounds)")
    from avseg.inference.segmenter import Segmenter
    from avseg.inference.stream import device_source, file_source, run_stream

    segmenter = Segmenter.from_checkpoint(args.ckpt, device=args.device)
    if args.video is not None:
        items, fps = file_source(segmenter, args.video)
    else:
        items, fps = device_source(args.camera, args.mic, args.camera_format, args.mic_format)
    stream = segmenter.stream(output=args.output)
    realtime = args.realtime or args.video is None
    report = run_stream(stream, items, realtime=realtime, queue_size=args.queue, max_seconds=args.max_seconds)
    points = report.percentiles()
    print(f"source {fps:.2f} fps, {'real time' if realtime else 'as fast as possible'}, output={args.output}, "
          f"T = {stream.clip_seconds} s clips")
    print(f"frames pushed {report.frames}, dropped {report.dropped}, outputs {report.outputs} "
          f"in {report.seconds:.2f} s: {report.fps:.2f} fps")
    print("latency (s): " + ", ".join(f"p{p:g} {value:.3f}" for p, value in points.items())
          + f"; the returned frame is {stream.frame_delay:g} s behind the newest, whose own VGGish example "
          "ends 0-0.96 s before it (0.975 s of audio before the first output)")
    return 0


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
