"""What ``tools/eval.py`` runs: a checkpoint, official weights or saved predictions → ``metrics.json``.

:func:`resolve_source` turns the command's choice into an :class:`EvalSource` (the config, and a model
to build or the predictions to score); :func:`evaluate_source` evaluates it on one split (AVS models with
every audio mode, image AE/VAE models with their own evaluator, the model kind from the registry) and
writes ``metrics.json`` with the evaluator's per-mode files into the run folder (with a ``robust``
section when negative audio modes were evaluated). Under ``torchrun``
every rank calls it and rank 0 writes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from omegaconf import DictConfig
from torch import nn

from avseg.config import apply_overrides, config_from_dict, load_config
from avseg.errors import CheckpointError, ConfigError
from avseg.evaluation.rle import SavedPredictions


@dataclass
class EvalSource:
    """The config, and either ``build_model()`` (a checkpoint or official weights) or saved ``predictions``.

    ``description`` (``{"checkpoint": path}``, ``{"weights": path}`` or ``{"predictions": path}``) goes into
    ``metrics.json``.
    """

    cfg: DictConfig
    build_model: Optional[Callable[[], nn.Module]]
    predictions: Optional[SavedPredictions]
    description: Dict[str, str]

    def default_out(self, split: str) -> str:
        """``<checkpoint folder>/eval_<split>``, ``<preds folder>/scored_<preds name>`` or ``runs/<name>/eval_<split>_<time>``."""
        if "checkpoint" in self.description:
            return str(Path(self.description["checkpoint"]).resolve().parent / f"eval_{split}")
        if self.predictions is not None:
            path = Path(self.description["predictions"])
            return str(path.resolve().parent / f"scored_{path.stem}")
        return str(Path("runs") / (self.cfg.name or "eval") / f"eval_{split}_{time.strftime('%Y%m%d-%H%M%S')}")


def resolve_source(cfg_path: Optional[str], overrides: Sequence[str], ckpt: Optional[str] = None,
                   load: Optional[str] = None, preds: Optional[str] = None) -> EvalSource:
    """The :class:`EvalSource` of exactly one of ``ckpt`` (avseg checkpoint, its own config unless
    ``cfg_path``), ``load`` (official weights, needs ``cfg_path``) or ``preds`` (``preds.json``)."""
    from avseg.checkpoint import read_checkpoint

    if ckpt:
        try:
            payload = read_checkpoint(ckpt)
        except CheckpointError as exc:
            if "not an avseg checkpoint" in str(exc):
                raise CheckpointError(f"{exc}; or evaluate them directly with --load {ckpt} --cfg CFG") from None
            raise
        stored_name = payload.get("model_name") or payload["config"].model.name
        if not cfg_path:
            cfg = apply_overrides(payload["config"], overrides)
        else:
            cfg = load_config(cfg_path, overrides)
            if cfg.model.name != stored_name:
                raise CheckpointError(
                    f"{ckpt}: holds a '{stored_name}' model, but {cfg_path} configures model.name '{cfg.model.name}' "
                    "(leave out --cfg to use the checkpoint's own config)"
                )

        def load_checkpoint_model() -> nn.Module:
            from avseg.models import load_model

            return load_model(ckpt, cfg=cfg)

        return EvalSource(cfg, load_checkpoint_model, None, {"checkpoint": str(ckpt)})
    if load:
        if not cfg_path:
            raise ConfigError("--load reads official weights, which carry no config: pass --cfg too")
        cfg = load_config(cfg_path, overrides)

        def load_official() -> nn.Module:
            from avseg.engine.run_setup import get_logger
            from avseg.models import load_weights
            from avseg.models.factory import build_model_for_checkpoint

            # Official files hold the backbone (no pretrained backbone file needed), but not VGGish.
            model = build_model_for_checkpoint(cfg, keep_audio_weights=True)
            get_logger().info(load_weights(model, load).describe())
            return model

        return EvalSource(cfg, load_official, None, {"weights": str(load)})
    predictions = SavedPredictions(preds)
    if cfg_path:
        cfg = load_config(cfg_path, overrides)
    elif isinstance(predictions.meta.get("config"), dict):
        cfg = apply_overrides(config_from_dict(predictions.meta["config"]), overrides)
    else:
        raise ConfigError(f"{preds} carries no config: pass --cfg to say which dataset it was made on")
    return EvalSource(cfg, None, predictions, {"predictions": str(preds)})


def prepare_config(source: EvalSource, split: Optional[str], audio: Optional[str], save_masks: bool, save_rle: bool) -> List[str]:
    """Set ``source.cfg``'s ``eval.split``, ``eval.audio`` and the file switches; returns the audio modes.

    The split defaults to the one saved predictions were made on, else ``cfg.eval.split``; saved
    predictions have one audio mode already (``audio`` is then an error).
    """
    from avseg.evaluation.audio_modes import parse_audio_modes

    cfg, predictions = source.cfg, source.predictions
    cfg.eval.split = split or (predictions.meta.get("split") if predictions is not None else None) or cfg.eval.split
    if predictions is not None:
        if audio:
            raise ConfigError("--audio applies to a model; saved predictions were made with one sound already")
        modes = [str(predictions.meta.get("audio", "normal"))]
    else:
        modes = parse_audio_modes(audio or cfg.eval.audio)
    cfg.eval.audio = ",".join(modes)
    cfg.eval.save_masks = bool(save_masks or cfg.eval.save_masks)
    cfg.eval.save_rle = bool(save_rle or cfg.eval.save_rle)
    return modes


def evaluate_source(source: EvalSource, modes: Sequence[str], out: Optional[str] = None) -> Path:
    """Evaluate on ``cfg.eval.split`` (see :func:`prepare_config`), write ``metrics.json``, print the table.

    Returns the run folder (``out``, default :meth:`EvalSource.default_out`).
    """
    from avseg.data import build_dataset
    from avseg.engine.distributed import barrier, broadcast_object, init_distributed, shutdown_distributed
    from avseg.engine.run_setup import get_logger, make_run_dir, setup_logging
    from avseg.evaluation import AVSBenchEvaluator, format_table, write_metrics_json
    from avseg.evaluation.audio_modes import evaluate_audio_modes
    from avseg.evaluation.robust import format_robust_table, robust_section
    from avseg.models import registry

    cfg, split = source.cfg, source.cfg.eval.split
    image_model = registry.get(cfg.model.name).task == "image"
    ctx = init_distributed(cfg.device)
    try:
        cfg.output_dir = None  # never the training run's folder: a checkpoint's config names it
        run_dir = make_run_dir(cfg, out or source.default_out(split)) if ctx.is_main else None
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None))
        setup_logging(run_dir, ctx.rank)
        meta: Dict[str, Any] = {"name": cfg.name, "dataset": cfg.data.name, "split": split, "data_root": cfg.data.root,
                                **source.description}
        if not image_model:
            meta["task"] = cfg.data.task
        if source.predictions is not None:
            evaluator = AVSBenchEvaluator.from_config(cfg, out_dir=str(run_dir), save_masks=False, save_rle=False, num_vis=0, meta=meta)
            dataset = build_dataset(cfg, split, train=False)
            results = [evaluator.score_predictions(source.predictions, dataset, num_workers=cfg.data.num_workers)]
        else:
            model = source.build_model().to(ctx.device)
            if image_model:
                _evaluate_image_model(cfg, model, split, ctx, run_dir, meta)
                return run_dir
            results = evaluate_audio_modes(model, cfg, split, modes, ctx, run_dir, meta)
        if ctx.is_main:
            write_metrics_json(run_dir / "metrics.json", results,
                               {**meta, "batch_clips": cfg.eval.batch_size, **robust_section(results)})
            print(format_table(results))
            robust_table = format_robust_table(results)
            if robust_table:
                print("\n" + robust_table)
            get_logger().info(f"wrote {run_dir / 'metrics.json'}")
        barrier()
        return run_dir
    finally:
        shutdown_distributed()


def _evaluate_image_model(cfg: DictConfig, model: nn.Module, split: str, ctx, run_dir: Path, meta: Dict[str, Any]) -> None:
    """Image AE/VAE checkpoints: the VAE evaluator's numbers in ``metrics.json``."""
    from avseg.data import build_dataset
    from avseg.data.loaders import build_eval_loader
    from avseg.evaluation import build_evaluator
    from avseg.fileio import atomic_write_text

    loader = build_eval_loader(build_dataset(cfg, split, train=False), cfg.eval.batch_size, cfg, ctx)
    metrics = build_evaluator(cfg).evaluate(model, loader, ctx.device)
    if ctx.is_main:
        payload = {**meta, "results": {"vae": {"metrics": {k: float(v) for k, v in metrics.items()}}}}
        atomic_write_text(run_dir / "metrics.json", json.dumps(payload, indent=2) + "\n")
        print("\n".join(f"{name}: {value:.6g}" for name, value in metrics.items()))
