"""AVSBench-exact metrics and the dataset-level evaluator.

* :func:`avsbench_miou`, :func:`avsbench_fscore`: one batch, exactly as the official code (see
  :mod:`avseg.evaluation.metrics`).
* :func:`build_evaluator`: the evaluator for a config (AVS → :class:`AVSBenchEvaluator`; the image
  AE/VAE models → ``avseg.vae.evaluation.VaeEvaluator``).
"""
from avseg.evaluation.evaluator import (
    AUDIO_MODES,
    AudioCounterfactual,
    AVSBenchEvaluator,
    EvalResult,
    format_table,
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
from avseg.evaluation.rle import SavedPredictions, decode_mask, encode_mask, write_predictions

VAE_MODELS = ("conv_ae", "fashion_vae", "faces_vae")


def build_evaluator(cfg, out_dir=None):
    """The evaluator for ``cfg``: VAE model names → ``VaeEvaluator(cfg)``, otherwise AVSBench metrics.

    ``out_dir`` (AVS only) is where masks, predictions and the grid go when ``cfg.eval`` asks for them.
    """
    if cfg.model.name in VAE_MODELS:
        from avseg.vae.evaluation import VaeEvaluator

        return VaeEvaluator(cfg)
    return AVSBenchEvaluator.from_config(cfg, out_dir=out_dir)


__all__ = [
    "AUDIO_MODES",
    "AVSBenchEvaluator",
    "AudioCounterfactual",
    "EvalResult",
    "FrameScores",
    "SavedPredictions",
    "VAE_MODELS",
    "avsbench_fscore",
    "avsbench_miou",
    "batch_independent_scores",
    "build_evaluator",
    "decode_mask",
    "encode_mask",
    "format_table",
    "frame_scores",
    "loader_indices",
    "official_scores",
    "shuffle_partners",
    "silent_log_mel",
    "summarize",
    "threshold_bins",
    "with_audio_mode",
    "write_metrics_json",
    "write_predictions",
]
