"""``avseg-export`` / ``tools/export.py``: write an AVS checkpoint as ONNX or TorchScript for serving.

Examples::

    python tools/export.py --ckpt best.pth --format onnx --out model.onnx
    python tools/export.py --ckpt best.pth --format torchscript --out model.pt
    python tools/export.py --ckpt ecmvae.pth --format onnx --out m.onnx model.ecmvae.num_samples=1

The graph takes ``frames [B, T, 3, S, S]`` (normalised) and ``log_mel [B, T, 1, 96, 64]`` and returns
``logits [B, T, 1, S, S]``; ``B`` and ``T`` are dynamic, ``S`` is the model's image size. ECMVAE
exports its deterministic path (latent means). ``--check`` runs the written file once against eager
PyTorch and prints the largest difference.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from avseg.cli.common import add_debug_argument, run_cli
from avseg.inference.export import DEFAULT_OPSET, FORMATS, export_checkpoint, max_difference


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avseg-export", description=__doc__.split("\n\n")[0],
                                     epilog="The output is written to a temporary file and renamed over --out when "
                                            "complete; --out may not be the checkpoint.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="avseg checkpoint (weights + config) of a TPAVI or ECMVAE model")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime, ...) or torchscript (torch.jit.load)")
    parser.add_argument("--out", required=True, help="output file (.onnx for --format onnx; e.g. .pt for torchscript)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--check", action="store_true", help="compare the written file with eager PyTorch on random inputs")
    parser.add_argument("overrides", nargs="*", help="dotted key=value changes of the stored config")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    path = export_checkpoint(args.ckpt, args.out, args.format, opset=args.opset, overrides=args.overrides)
    print(f"wrote {path} ({args.format}, {path.stat().st_size / 1e6:.1f} MB): frames [B, T, 3, S, S], "
          f"log_mel [B, T, 1, 96, 64] -> logits [B, T, 1, S, S]")
    if args.check:
        print(f"check: max |exported - eager| = {max_difference(args.ckpt, path, args.format):.3g} "
              "(batch 2, 3 frames; batch 1, 5 frames)")
    return 0


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
