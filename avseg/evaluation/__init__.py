"""AVSBench-exact metrics and the dataset-level evaluator.

* :func:`avsbench_miou`, :func:`avsbench_fscore`: one batch, exactly as the official code (see
  :mod:`avseg.evaluation.metrics`).
* :func:`build_evaluator`: the evaluator for a config, by the task of its model's registry record (``avs`` →
  :class:`AVSBenchEvaluator`, or :class:`AVSSEvaluator` when ``data.task`` is avss; ``image``, the AE/VAE
  models → ``avseg.vae.evaluation.VaeEvaluator``).
* :class:`AVSSMetric`: the official AVSS per-class mIoU / F and the real-frames variant
  (:mod:`avseg.evaluation.semantic_metrics`).
* :func:`evaluate_audio_modes` / :func:`parse_audio_modes`: one evaluation per audio mode
  (:mod:`avseg.evaluation.audio_modes`); ``tools/eval.py``'s pipeline is :mod:`avseg.evaluation.runner`,
  ``tools/compare.py``'s is :mod:`avseg.evaluation.compare`.
"""
from avseg.evaluation.audio_modes import evaluate_audio_modes, parse_audio_modes
from avseg.evaluation.evaluator import (
    AUDIO_MODES,
    AudioCounterfactual,
    AVSBenchEvaluator,
    EvalResult,
    format_table,
    inference_keys,
    loader_indices,
    shuffle_partners,
    silent_log_mel,
    summarize,
    with_audio_mode,
    write_metrics_json,
)
from avseg.evaluation.metrics import (
    FrameScores,
    avsbench_fscore,
    avsbench_miou,
    batch_independent_scores,
    frame_scores,
    official_scores,
    threshold_bins,
)
from avseg.evaluation.semantic_metrics import AVSSEvaluator, AVSSMetric, AVSSResult, format_avss_table
from avseg.evaluation.rle import SavedPredictions, decode_mask, encode_mask, write_predictions



def build_evaluator(cfg, out_dir=None):
    """The evaluator for ``cfg``: image models → ``VaeEvaluator(cfg)``, AVS models → AVSBench (or AVSS) metrics.

    ``out_dir`` (AVS only) is where masks, predictions and the grid go when ``cfg.eval`` asks for them.
    """
    from avseg.models import registry

    if registry.get(cfg.model.name).task == "image":
        from avseg.vae.evaluation import VaeEvaluator

        return VaeEvaluator(cfg)
    return AVSBenchEvaluator.from_config(cfg, out_dir=out_dir)


__all__ = [
    "AVSSEvaluator",
    "AVSSMetric",
    "AVSSResult",
    "AUDIO_MODES",
    "AVSBenchEvaluator",
    "AudioCounterfactual",
    "EvalResult",
    "FrameScores",
    "SavedPredictions",
    "avsbench_fscore",
    "avsbench_miou",
    "batch_independent_scores",
    "build_evaluator",
    "decode_mask",
    "encode_mask",
    "evaluate_audio_modes",
    "format_avss_table",
    "format_table",
    "frame_scores",
    "inference_keys",
    "loader_indices",
    "official_scores",
    "parse_audio_modes",
    "shuffle_partners",
    "silent_log_mel",
    "summarize",
    "threshold_bins",
    "with_audio_mode",
    "write_metrics_json",
    "write_predictions",
]
