"""``tools/eval.py`` / ``avseg-eval``: AVSBench mIoU and F of a checkpoint, or of saved predictions.

Examples::

    python tools/eval.py --ckpt runs/s4/best.pth                       # config from the checkpoint
    python tools/eval.py --ckpt runs/s4/best.pth --split val data.root=/data/avsbench
    python tools/eval.py --ckpt runs/s4/best.pth --audio normal,shuffle,silent --save-rle --save-masks
    python tools/eval.py --ckpt runs/s4/best.pth --audio normal,silent,noise,offscreen,shuffle   # negative audio: FPR
    python tools/eval.py --cfg configs/avsbench/s4_tpavi_pvt.yaml --load S4_best.pth   # official weights
    python tools/eval.py --preds runs/s4/eval_test/preds.json           # score saved predictions
    torchrun --nproc_per_node=4 tools/eval.py --ckpt runs/s4/best.pth   # same numbers, 4 processes
    python tools/eval.py --ckpt runs/avss/best.pth                     # AVSS: official + real-frames mIoU/F, per_class.csv

Outputs (``--out``, default ``<checkpoint folder>/eval_<split>``): ``metrics.json`` (official and
batch-independent numbers per audio mode, per-category table), ``per_video[_<audio>].csv``,
``grid[_<audio>].png``, and with ``--save-masks`` / ``--save-rle`` the PNG masks and ``preds.json``
(COCO RLE plus the F threshold-bin sidecar). AVSS configs (``data.task: avss``) write ``per_class[_<audio>].csv``
(class index, name from ``label2idx.json``, IoU, F, frames present; official and real-frames). See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from avseg.cli.common import add_debug_argument, run_cli
from avseg.config import config_to_yaml
from avseg.evaluation.runner import evaluate_source, prepare_config, resolve_source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avseg-eval",
        description="Evaluate an AVS model with the exact AVSBench metrics (mIoU, F), or score saved predictions.",
    )
    parser.add_argument("--cfg", help="config file or short name (optional with --ckpt or --preds: they carry theirs)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="an avseg checkpoint (best.pth / last.pth)")
    source.add_argument("--load", metavar="OFFICIAL.pth", help="official AVSBench / MMVAE-AVS weights (needs --cfg)")
    source.add_argument("--preds", help="preds.json written by --save-rle: score it without the model")
    parser.add_argument("--split", help="dataset split (default: cfg.eval.split; for --preds the split they were made on)")
    parser.add_argument("--out", help="output folder (default: <checkpoint or preds folder>/eval_<split>)")
    parser.add_argument("--audio", help="normal | shuffle | silent | noise | offscreen, or several comma-separated "
                        "(default: cfg.eval.audio); silent, noise and offscreen also report the false-positive rate")
    parser.add_argument("--save-masks", action="store_true", help="write each predicted mask as a PNG")
    parser.add_argument("--save-rle", action="store_true", help="write preds.json (COCO RLE + threshold-bin sidecar)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.root=/data/avsbench")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    source = resolve_source(args.cfg, args.overrides, ckpt=args.ckpt, load=args.load, preds=args.preds)
    modes = prepare_config(source, args.split, args.audio, args.save_masks, args.save_rle)
    if args.print_config:
        print(config_to_yaml(source.cfg), end="")
        return 0
    evaluate_source(source, modes, args.out)
    return 0


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
