"""``avseg-web``: a browser demo of an AVS checkpoint (Gradio; ``pip install 'avseg[web]'``).

Examples::

    avseg-web --ckpt runs/quickstart/train/best.pth            # then open http://127.0.0.1:7860
    avseg-web --ckpt best.pth --runtime onnx --max-fps 10 --port 8000

Upload an mp4 with sound or pick a bundled synthetic clip: the page shows the mask overlay with the
clip's own sound, a frame strip, and the same clip segmented with shuffled sound (its own sound shifted
circularly by half its length) and with silence; a slider sets the mask threshold. The server listens
on 127.0.0.1 only unless ``--host`` says otherwise, and makes no outside request.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from avseg.cli.common import add_debug_argument, run_cli
from avseg.engine.run_setup import setup_logging
from avseg.inference.web_app import DEFAULT_MAX_SECONDS, DEFAULT_WEB_FPS, build_app, launch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avseg-web", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="avseg checkpoint of a TPAVI or ECMVAE model (or an exported .onnx with --runtime onnx)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="eager PyTorch or onnxruntime (CPU)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N (torch runtime)")
    parser.add_argument("--max-fps", type=float, default=DEFAULT_WEB_FPS,
                        help=f"output frame rate cap (default {DEFAULT_WEB_FPS:g}; each frame is one forward pass per audio version)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help=f"longest upload accepted (default {DEFAULT_MAX_SECONDS:g} s)")
    parser.add_argument("--workdir", default=None, help="folder for bundled clips and outputs (default: a new temporary folder)")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    runtime_model = None
    if args.runtime == "onnx":
        from avseg.inference.onnx_runtime import load_onnx_model

        runtime_model = load_onnx_model(args.ckpt)
    app = build_app(args.ckpt, device="cpu" if runtime_model is not None else args.device, max_fps=args.max_fps,
                    max_seconds=args.max_seconds, workdir=args.workdir, runtime_model=runtime_model)
    print(f"avseg-web: serving {args.ckpt} on http://{args.host}:{args.port} (Ctrl+C to stop)")
    launch(app, args.host, args.port, block=True)
    return 0


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
