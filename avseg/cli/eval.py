"""``tools/eval.py`` / ``avseg-eval``: AVSBench mIoU and F of a checkpoint, or of saved predictions.

Examples::

    python tools/eval.py --ckpt runs/s4/best.pth                       # config from the checkpoint
    python tools/eval.py --ckpt runs/s4/best.pth --split val data.root=/data/avsbench
    python tools/eval.py --ckpt runs/s4/best.pth --audio normal,shuffle,silent --save-rle --save-masks
    python tools/eval.py --cfg configs/avsbench/s4_tpavi_pvt.yaml --load S4_best.pth   # official weights
    python tools/eval.py --preds runs/s4/eval_test/preds.json           # score saved predictions
    torchrun --nproc_per_node=4 tools/eval.py --ckpt runs/s4/best.pth   # same numbers, 4 processes

Outputs (``--out``, default ``<checkpoint folder>/eval_<split>``): ``metrics.json`` (official and
batch-independent numbers per audio mode, per-category table), ``per_video[_<audio>].csv``,
``grid[_<audio>].png``, and with ``--save-masks`` / ``--save-rle`` the PNG masks and ``preds.json``
(COCO RLE plus the F threshold-bin sidecar). See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig

from avseg.cli.common import add_debug_argument, run_cli
from avseg.config import apply_overrides, config_from_dict, config_to_dict, config_to_yaml, load_config
from avseg.errors import CheckpointError, ConfigError


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
    parser.add_argument("--audio", help="normal | shuffle | silent, or several comma-separated (default: cfg.eval.audio)")
    parser.add_argument("--save-masks", action="store_true", help="write each predicted mask as a PNG")
    parser.add_argument("--save-rle", action="store_true", help="write preds.json (COCO RLE + threshold-bin sidecar)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.root=/data/avsbench")
    add_debug_argument(parser)
    return parser


# ----------------------------------------------------------------------------- config and model
def _config_for_checkpoint(args: argparse.Namespace, payload: Dict[str, Any]) -> DictConfig:
    stored_name = payload.get("model_name") or payload["config"].model.name
    if not args.cfg:
        return apply_overrides(payload["config"], args.overrides)
    cfg = load_config(args.cfg, args.overrides)
    if cfg.model.name != stored_name:
        raise CheckpointError(
            f"{args.ckpt}: holds a '{stored_name}' model, but {args.cfg} configures model.name '{cfg.model.name}' "
            "(leave out --cfg to use the checkpoint's own config)"
        )
    return cfg


def _load_checkpoint_model(path: str, cfg: DictConfig, payload: Dict[str, Any]):
    from avseg.models.factory import LoadReport, build_model_for_checkpoint

    state_dict = payload.get("model")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: the checkpoint has no 'model' state dict")
    model = build_model_for_checkpoint(cfg)
    own = model.state_dict()
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if shapes:
        raise CheckpointError(f"{path}: {len(shapes)} tensors do not fit the '{cfg.model.name}' model of the config: " + "; ".join(shapes[:6]))
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        report = LoadReport(path, "avseg", list(result.missing_keys), list(result.unexpected_keys))
        raise CheckpointError(f"{path}: weights do not match the '{cfg.model.name}' model of the config\n{report.describe()}")
    return model


def _resolve(args: argparse.Namespace):
    """``(cfg, model or None, predictions or None, source description)`` for the arguments."""
    from avseg.checkpoint import read_checkpoint
    from avseg.evaluation.rle import SavedPredictions

    if args.ckpt:
        try:
            payload = read_checkpoint(args.ckpt)
        except CheckpointError as exc:
            if "not an avseg checkpoint" in str(exc):
                raise CheckpointError(f"{exc}; or evaluate them directly with --load {args.ckpt} --cfg CFG") from None
            raise
        cfg = _config_for_checkpoint(args, payload)
        return cfg, lambda: _load_checkpoint_model(args.ckpt, cfg, payload), None, {"checkpoint": str(args.ckpt)}
    if args.load:
        if not args.cfg:
            raise ConfigError("--load reads official weights, which carry no config: pass --cfg too")
        cfg = load_config(args.cfg, args.overrides)

        def load_official():
            from avseg.engine.run_setup import get_logger
            from avseg.models import load_weights
            from avseg.models.factory import build_model_for_checkpoint

            # Official files hold the backbone (no pretrained backbone file needed), but not VGGish.
            model = build_model_for_checkpoint(cfg, keep_audio_weights=True)
            get_logger().info(load_weights(model, args.load).describe())
            return model

        return cfg, load_official, None, {"weights": str(args.load)}
    predictions = SavedPredictions(args.preds)
    if args.cfg:
        cfg = load_config(args.cfg, args.overrides)
    elif isinstance(predictions.meta.get("config"), dict):
        cfg = apply_overrides(config_from_dict(predictions.meta["config"]), args.overrides)
    else:
        raise ConfigError(f"{args.preds} carries no config: pass --cfg to say which dataset it was made on")
    return cfg, None, predictions, {"predictions": str(args.preds)}


def evaluate_audio_modes(model, cfg: DictConfig, split: str, modes: Sequence[str], ctx, out_dir: Path, meta: Dict[str, Any]) -> list:
    """Evaluate ``model`` on ``split`` once per audio mode (normal | shuffle | silent); one result per mode.

    Sets ``cfg.eval.audio`` to each mode in turn; the evaluator writes its per-mode outputs into ``out_dir``.
    """
    from avseg.data import build_dataset
    from avseg.engine.run_setup import get_logger
    from avseg.engine.trainer import build_eval_loader
    from avseg.evaluation import AVSBenchEvaluator, with_audio_mode

    results = []
    for mode in modes:
        cfg.eval.audio = mode
        dataset = with_audio_mode(build_dataset(cfg, split, train=False), mode, cfg.eval.shuffle_seed)
        loader = build_eval_loader(dataset, cfg.eval.batch_size, cfg, ctx)
        evaluator = AVSBenchEvaluator.from_config(cfg, out_dir=str(out_dir), meta={**meta, "config": config_to_dict(cfg)})
        get_logger().info(f"{meta.get('name', '')}: evaluating {len(dataset)} clips of '{split}' with audio '{mode}'")
        results.append(evaluator.run(model, loader, ctx.device))
    return results


def _audio_modes(text: str) -> List[str]:
    from avseg.evaluation import AUDIO_MODES

    modes = [mode.strip() for mode in text.split(",") if mode.strip()]
    bad = [mode for mode in modes if mode not in AUDIO_MODES]
    if bad or not modes:
        raise ConfigError(f"--audio / eval.audio: '{text}' is not a comma-separated list of {', '.join(AUDIO_MODES)}")
    return list(dict.fromkeys(modes))


def _default_out(args: argparse.Namespace, cfg: DictConfig, split: str) -> str:
    if args.ckpt:
        return str(Path(args.ckpt).resolve().parent / f"eval_{split}")
    if args.preds:
        return str(Path(args.preds).resolve().parent / f"scored_{Path(args.preds).stem}")
    return str(Path("runs") / (cfg.name or "eval") / f"eval_{split}_{time.strftime('%Y%m%d-%H%M%S')}")


# ----------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, build, predictions, source = _resolve(args)
    split = args.split or (predictions.meta.get("split") if predictions is not None else None) or cfg.eval.split
    if predictions is not None:
        if args.audio:
            raise ConfigError("--audio applies to a model; saved predictions were made with one sound already")
        modes = [str(predictions.meta.get("audio", "normal"))]
    else:
        modes = _audio_modes(args.audio or cfg.eval.audio)
    cfg.eval.split = split
    cfg.eval.audio = ",".join(modes)
    cfg.eval.save_masks = bool(args.save_masks or cfg.eval.save_masks)
    cfg.eval.save_rle = bool(args.save_rle or cfg.eval.save_rle)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0

    from avseg.data import build_dataset
    from avseg.engine.distributed import barrier, broadcast_object, init_distributed, shutdown_distributed
    from avseg.engine.run_setup import get_logger, make_run_dir, setup_logging
    from avseg.evaluation import VAE_MODELS, AVSBenchEvaluator, format_table, write_metrics_json

    ctx = init_distributed(cfg.device)
    try:
        cfg.output_dir = None  # never the training run's folder: a checkpoint's config names it
        run_dir = make_run_dir(cfg, args.out or _default_out(args, cfg, split)) if ctx.is_main else None
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None))
        setup_logging(run_dir, ctx.rank)
        logger = get_logger()
        meta = {"name": cfg.name, "dataset": cfg.data.name, "split": split, "data_root": cfg.data.root, **source}
        if cfg.model.name not in VAE_MODELS:
            meta["task"] = cfg.data.task

        if predictions is not None:
            evaluator = AVSBenchEvaluator.from_config(cfg, out_dir=str(run_dir), save_masks=False, save_rle=False, num_vis=0, meta=meta)
            dataset = build_dataset(cfg, split, train=False)
            results = [evaluator.score_predictions(predictions, dataset, num_workers=cfg.data.num_workers)]
        else:
            model = build().to(ctx.device)
            if cfg.model.name in VAE_MODELS:
                return _evaluate_vae(cfg, model, split, ctx, run_dir, meta)
            results = evaluate_audio_modes(model, cfg, split, modes, ctx, run_dir, meta)
        if ctx.is_main:
            write_metrics_json(run_dir / "metrics.json", results, {**meta, "batch_clips": cfg.eval.batch_size})
            print(format_table(results))
            logger.info(f"wrote {run_dir / 'metrics.json'}")
        barrier()
        return 0
    finally:
        shutdown_distributed()


def _evaluate_vae(cfg: DictConfig, model, split: str, ctx, run_dir: Path, meta: Dict[str, Any]) -> int:
    """Image AE/VAE checkpoints: the VAE evaluator's numbers in ``metrics.json``."""
    import json

    from avseg.data import build_dataset
    from avseg.engine.trainer import build_eval_loader
    from avseg.evaluation import build_evaluator
    from avseg.fileio import atomic_write_text

    loader = build_eval_loader(build_dataset(cfg, split, train=False), cfg.eval.batch_size, cfg, ctx)
    metrics = build_evaluator(cfg).evaluate(model, loader, ctx.device)
    if ctx.is_main:
        payload = {**meta, "results": {"vae": {"metrics": {k: float(v) for k, v in metrics.items()}}}}
        atomic_write_text(run_dir / "metrics.json", json.dumps(payload, indent=2) + "\n")
        print("\n".join(f"{name}: {value:.6g}" for name, value in metrics.items()))
    return 0


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
