"""Convert official release weights (any format a model record converts) into an avseg checkpoint.

    python tools/convert_checkpoint.py --from avsbench --cfg avsbench/s4_tpavi_r50.yaml \\
        --vggish pretrained/vggish-10086976.pth S4_best.pth checkpoints/s4_tpavi_r50.pth

The config describes the architecture (backbone, neck width, fusion stages); its pretrained backbone
file is not read (the release holds the backbone). The ``--from`` choices are the formats of the
registered models (:func:`avseg.models.registry.formats`). The official checkpoints do not contain VGGish, so
its weights come from ``--vggish`` (else from ``model.audio.weights``). The output holds every weight
plus the config, so ``tools/eval.py --ckpt OUT`` and the demo need no other file.
"""
from __future__ import annotations

import argparse
import os
from typing import List

from avseg.cli.common import add_config_arguments, add_debug_argument, config_from_args, run_cli
from avseg.errors import CheckpointError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    from avseg.models import registry

    parser = argparse.ArgumentParser(description="Convert official release weights to an avseg checkpoint.")
    parser.add_argument("--from", dest="source", required=True, choices=registry.formats(), help="format of IN")
    parser.add_argument("--vggish", help="audio encoder weights (vggish-10086976.pth); overrides model.audio.weights")
    parser.add_argument("input", metavar="IN", help="official state dict (.pth)")
    parser.add_argument("output", metavar="OUT", help="avseg checkpoint to write")
    add_config_arguments(parser)
    add_debug_argument(parser)
    return parser


def main(argv: List[str]) -> int:
    from avseg.checkpoint import save_checkpoint
    from avseg.models.factory import build_model_for_checkpoint, load_weights

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if cfg is None:
        return 0
    if not os.path.isfile(args.input):
        raise CheckpointError(f"checkpoint not found: {args.input}")
    if args.vggish:
        cfg.model.audio.weights = args.vggish
    audio_weights = cfg.model.audio.weights
    if cfg.model.fusion and audio_weights and not os.path.isfile(audio_weights):
        raise ConfigError(f"audio encoder weights not found: {audio_weights} (pass --vggish PATH)")
    if cfg.model.fusion and not audio_weights and cfg.model.audio.freeze:
        raise ConfigError(
            "official checkpoints do not contain the VGGish weights; pass --vggish vggish-10086976.pth "
            "(or set model.audio.weights)"
        )
    model = build_model_for_checkpoint(cfg, keep_audio_weights=True)
    report = load_weights(model, args.input, expected_format=args.source)
    print(report.describe())
    save_checkpoint(args.output, model.state_dict(), cfg, converted_from=os.path.abspath(args.input), source_format=args.source)
    print(f"wrote {args.output}")
    return 0


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
