"""Evaluation with audio modes: the ``--audio`` / ``eval.audio`` list and one AVSBench evaluation per mode.

``normal`` scores the clips with their own sound; ``shuffle``, ``silent``, ``noise`` and ``offscreen`` are
the counterfactuals of :class:`avseg.evaluation.evaluator.AudioCounterfactual`, all seeded by
``eval.shuffle_seed`` (the shuffle derangement, the noise waveforms, the off-screen donors). ``silent``,
``noise`` and ``offscreen`` are negative conditions: their results also carry the false-positive rate
(:mod:`avseg.evaluation.robust`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from omegaconf import DictConfig

from avseg.config import config_to_dict
from avseg.errors import ConfigError
from avseg.evaluation.evaluator import AUDIO_MODES, AVSBenchEvaluator, EvalResult, with_audio_mode


def parse_audio_modes(text: str, option: str = "--audio / eval.audio", normal_first: bool = False) -> List[str]:
    """The modes of a comma-separated list, each once in the given order; ``normal_first`` puts ``normal`` first
    (and allows an empty list). Unknown modes are a :class:`ConfigError` naming ``option``."""
    modes = [mode.strip() for mode in text.split(",") if mode.strip()]
    bad = [mode for mode in modes if mode not in AUDIO_MODES]
    if bad or not (modes or normal_first):
        raise ConfigError(f"{option}: '{text}' is not a comma-separated list of {', '.join(AUDIO_MODES)}")
    return list(dict.fromkeys((["normal"] if normal_first else []) + modes))


def evaluate_audio_modes(model, cfg: DictConfig, split: str, modes: Sequence[str], ctx, out_dir: Path,
                         meta: Dict[str, Any]) -> List[EvalResult]:
    """Evaluate ``model`` on ``split`` once per audio mode; one :class:`EvalResult` per mode.

    Sets ``cfg.eval.audio`` to each mode in turn; the evaluator writes its per-mode outputs into ``out_dir``.
    :func:`avseg.evaluation.robust.robust_section` summarises the negative modes among the results.
    """
    from avseg.data import build_dataset
    from avseg.engine.run_setup import get_logger
    from avseg.data.loaders import build_eval_loader

    results = []
    for mode in modes:
        cfg.eval.audio = mode
        dataset = with_audio_mode(build_dataset(cfg, split, train=False), mode, cfg.eval.shuffle_seed)
        loader = build_eval_loader(dataset, cfg.eval.batch_size, cfg, ctx)
        evaluator = AVSBenchEvaluator.from_config(cfg, out_dir=str(out_dir), meta={**meta, "config": config_to_dict(cfg)})
        get_logger().info(f"{meta.get('name', '')}: evaluating {len(dataset)} clips of '{split}' with audio '{mode}'")
        results.append(evaluator.run(model, loader, ctx.device))
    return results
