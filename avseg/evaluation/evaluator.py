"""Dataset-level AVSBench evaluation: run a model over a loader of clips and score it exactly.

:class:`AVSBenchEvaluator` follows the avseg evaluator protocol (``evaluate(model, loader, device)``,
``primary_metric``, ``higher_is_better``) used by the trainer, and :meth:`AVSBenchEvaluator.run` gives
the full :class:`EvalResult` (per-video and per-category scores) used by ``tools/eval.py``.

Exactness and batches. The official numbers take the F maximum per test batch of ``batch_clips``
(4) clips. The evaluator keys every frame by its clip's *dataset index* (read from the loader's sampler,
which must keep the dataset order), so the official batches are always clips ``[0, 4), [4, 8), ...`` of
the dataset, whatever the loader's own batch size, and under ``torch.distributed`` the ranks' per-frame
statistics are gathered and regrouped in dataset order: the result equals a single-process evaluation.
Only frames whose ``mask_valid`` is true are scored.

Audio counterfactuals (:class:`AudioCounterfactual`, ``cfg.eval.audio``): ``shuffle`` pairs every clip
with another clip's log-mel (a fixed-seed derangement), ``silent`` gives every clip the log-mel of a
silent waveform from the real VGGish front end, ``noise`` seeded white noise and ``offscreen`` the sound
of a clip of another category group (:mod:`avseg.data.negative_audio`). Under the negative conditions
(silent, noise, offscreen) ``metrics`` also holds ``fpr`` (:mod:`avseg.evaluation.robust`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from avseg.config import EVAL_AUDIO_MODES
from avseg.data.negative_audio import clip_categories, clip_log_mel, noise_log_mel, offscreen_partners, silent_log_mel
from avseg.engine.distributed import all_gather_objects, gather_to_main, get_rank, unwrap_model
from avseg.errors import ConfigError
from avseg.evaluation import metrics as M
from avseg.evaluation import robust
from avseg.evaluation.rle import SavedPredictions, encode_mask, pack_bins, write_predictions
from avseg.fileio import atomic_path, atomic_write_text, join_inside
from avseg.models import registry

AUDIO_MODES = EVAL_AUDIO_MODES  # the schema's list: normal first, then the counterfactuals
MASK_KEYS = ("masks", "mask_valid", "labels")  # supervision: never passed to the model at inference


# ----------------------------------------------------------------------------- audio counterfactuals
def shuffle_partners(length: int, seed: int) -> np.ndarray:
    """A derangement of ``range(length)`` from ``seed``: clip ``i`` takes the sound of clip ``partners[i] != i``.

    A random order ``o`` is cycled (``o[j] -> o[j + 1]``), so no clip keeps its own sound.
    """
    if length < 2:
        raise ConfigError(f"eval.audio 'shuffle' needs at least 2 clips to swap sounds, the split has {length}")
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed)).numpy()
    partners = np.empty(length, dtype=np.int64)
    partners[order] = np.roll(order, -1)
    return partners


class AudioCounterfactual(Dataset):
    """An AVS dataset whose items carry another clip's sound (``shuffle``; ``offscreen``: a clip of another
    category group, :func:`~avseg.data.negative_audio.offscreen_partners`), silence (``silent``) or white
    noise (``noise``, seeded by ``(seed, index)``); frames and masks unchanged.

    The partner's log-mel comes from ``dataset.load_log_mel(index)`` when the dataset has it (no frames
    decoded), else from ``dataset[index]["log_mel"]``.
    """

    def __init__(self, dataset: Dataset, mode: str, seed: int = 0):
        if mode not in AUDIO_MODES[1:]:
            raise ConfigError(f"key 'eval.audio': '{mode}' is not one of {', '.join(AUDIO_MODES)}")
        self.dataset = dataset
        self.mode = mode
        self.seed = seed
        self.partners = shuffle_partners(len(dataset), seed) if mode == "shuffle" else None
        if mode == "offscreen":
            self.partners = offscreen_partners(clip_categories(dataset), seed)
        self._silence: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = dict(self.dataset[index])
        num_examples = item["log_mel"].shape[0]
        if self.partners is not None:
            item["log_mel"] = clip_log_mel(self.dataset, int(self.partners[index]), num_examples)
        elif self.mode == "noise":
            item["log_mel"] = noise_log_mel(num_examples, self.seed, index)
        else:
            if num_examples not in self._silence:
                self._silence[num_examples] = silent_log_mel(num_examples)
            item["log_mel"] = self._silence[num_examples].clone()
        return item


def with_audio_mode(dataset: Dataset, mode: str, seed: int = 0) -> Dataset:
    """``dataset`` itself for ``normal``, else wrapped in :class:`AudioCounterfactual`."""
    if mode == "normal":
        return dataset
    return AudioCounterfactual(dataset, mode, seed)


# ----------------------------------------------------------------------------- results
@dataclass
class ClipScores:
    """The scored frames of one clip: ``frames`` ``[M]`` frame numbers, ``scores`` their statistics."""

    index: int
    video_id: str
    category: str
    frames: np.ndarray
    scores: M.FrameScores
    sounding: Optional[np.ndarray] = None  # [M] fraction of each scored frame's pixels predicted sounding


def _nan_to_none(value: float) -> Optional[float]:
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class EvalResult:
    """Everything one evaluation produced. ``metrics`` is flat (what the trainer logs)."""

    metrics: Dict[str, float]
    clips: List[ClipScores]
    batch_clips: int
    audio: str = "normal"
    fscore_from_binary: bool = False
    seconds: float = 0.0
    files: Dict[str, str] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return sum(len(c.frames) for c in self.clips)

    def labels(self) -> Dict[str, str]:
        official = M.OFFICIAL_LABEL.format(clips=self.batch_clips)
        f_key = "fscore_binary" if self.fscore_from_binary else "fscore"
        labels = {
            "miou": official,
            f_key: official,
            "miou_batch_independent": M.BATCH_INDEPENDENT_MIOU_LABEL,
            f"{f_key}_batch_independent": M.BATCH_INDEPENDENT_F_LABEL,
        }
        if "fpr" in self.metrics:
            labels["fpr"] = robust.FPR_LABEL
        if self.fscore_from_binary:
            labels["note"] = "F computed on binarised predictions (no threshold bins saved): not the official F"
        return labels

    def per_video(self) -> List[Dict[str, Any]]:
        """One row per clip in dataset order: frames scored, mIoU (frame mean), F (its own curve's max)."""
        return [
            {
                "index": clip.index,
                "video_id": clip.video_id,
                "category": clip.category,
                "frames": len(clip.frames),
                "frames_with_object": int(clip.scores.has_object.sum()),
                "miou": M.miou_of(clip.scores) if len(clip.frames) else float("nan"),
                "fscore": M.fscore_of(clip.scores) if clip.scores.has_object.any() else float("nan"),
            }
            for clip in self.clips
        ]

    def per_category(self) -> Dict[str, Dict[str, Any]]:
        """Batch-independent scores per category (S4): mIoU over its frames, F over its frames' curves."""
        table: Dict[str, Dict[str, Any]] = {}
        for category in sorted({clip.category for clip in self.clips}):
            members = [clip for clip in self.clips if clip.category == category]
            scores = M.FrameScores.concatenate(clip.scores for clip in members)
            table[category] = {
                "clips": len(members),
                "frames": len(scores),
                "miou": M.miou_of(scores) if len(scores) else float("nan"),
                "fscore": M.fscore_of(scores) if scores.has_object.any() else float("nan"),
            }
        return table

    def summary(self) -> Dict[str, Any]:
        """The JSON-ready record of this evaluation (one audio mode of ``metrics.json``)."""
        categories = self.per_category()
        return {
            "audio": self.audio,
            "metrics": self.metrics,
            "labels": self.labels(),
            "clips": len(self.clips),
            "frames": self.num_frames,
            "seconds": round(self.seconds, 3),
            "per_category": {
                name: {key: _nan_to_none(value) for key, value in row.items()} for name, row in categories.items()
            }
            if len(categories) > 1
            else {},
            "files": self.files,
        }

    def write_per_video_csv(self, path) -> None:
        rows = self.per_video()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["index", "video_id"], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        atomic_write_text(path, buffer.getvalue())


def summarize(clips: List[ClipScores], batch_clips: int, fscore_from_binary: bool = False) -> Dict[str, float]:
    """Official (per batch of ``batch_clips`` clips in dataset order) and batch-independent numbers."""
    clips = sorted(clips, key=lambda clip: clip.index)
    scores = M.FrameScores.concatenate(clip.scores for clip in clips)
    # Official batch of each frame: its clip's position in dataset order, in groups of ``batch_clips``.
    batch_ids = np.repeat(np.arange(len(clips)) // batch_clips, [len(clip.frames) for clip in clips])
    official = M.official_scores(scores, batch_ids)
    independent = M.batch_independent_scores(scores)
    f_key = "fscore_binary" if fscore_from_binary else "fscore"
    return {
        "miou": official["miou"],
        f_key: official["fscore"],
        "miou_batch_independent": independent["miou"],
        f"{f_key}_batch_independent": independent["fscore"],
    }


# ----------------------------------------------------------------------------- loaders and inputs
def inference_keys(model: nn.Module) -> Tuple[str, ...]:
    """The batch entries ``model``'s forward takes at inference: the ``batch_keys`` of its registry record
    (models built from a config carry ``.cfg``), else its own ``batch_keys``, less the masks."""
    if getattr(model, "cfg", None) is not None:
        keys = registry.record_of(model).batch_keys
    else:
        keys = getattr(model, "batch_keys", ("frames", "log_mel"))
    return tuple(key for key in keys if key not in MASK_KEYS)


def loader_indices(loader: DataLoader) -> List[int]:
    """The dataset index of every item ``loader`` yields, in order (it must not shuffle)."""
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler) or getattr(sampler, "shuffle", False):
        raise ConfigError(
            "the evaluation loader shuffles its clips; the official F groups clips in dataset order, "
            "so evaluate with shuffle=False (e.g. avseg.data.loaders.build_eval_loader)"
        )
    if loader.batch_sampler is not None:
        return [int(i) for batch in loader.batch_sampler for i in batch]
    return [int(i) for i in sampler]


# ----------------------------------------------------------------------------- the evaluator
class _Collector:
    """Per-rank accumulation of clip scores, and of predictions/visuals when files are asked for."""

    def __init__(self, keep_predictions: bool = False, vis_indices: Sequence[int] = ()):
        self.clips: List[ClipScores] = []
        self.predictions: List[Dict[str, Any]] = []
        self.keep_predictions = keep_predictions
        self.vis_indices = set(int(i) for i in vis_indices)
        self.visuals: List[Dict[str, Any]] = []

    def add(self, index, video_id, category, valid, foreground, bins, gt, frames=None, probs=None) -> None:
        """One clip: ``valid`` ``[T]`` bool, ``foreground``/``gt`` bool and ``bins`` uint8 ``[T, H, W]``."""
        scored = np.flatnonzero(valid)
        scores = M.scores_from_predictions(foreground[scored], bins[scored], gt[scored])
        sounding = robust.sounding_fraction(foreground[scored])
        self.clips.append(ClipScores(int(index), str(video_id), str(category), scored, scores, sounding))
        if self.keep_predictions:
            for t in range(foreground.shape[0]):
                self.predictions.append(
                    {
                        "record": {
                            "clip_index": int(index),
                            "video_id": str(video_id),
                            "category": str(category),
                            "frame": t,
                            "annotated": bool(valid[t]),
                            "segmentation": encode_mask(foreground[t]),
                        },
                        "bins": pack_bins(bins[t]),
                    }
                )
        if frames is not None and int(index) in self.vis_indices:
            self.visuals.append(
                {"index": int(index), "video_id": str(video_id), "frames": frames, "masks": gt, "valid": valid, "probs": probs}
            )


class AVSBenchEvaluator:
    """AVSBench mIoU and F (official and batch-independent) over a loader of AVS clips.

    Args:
        batch_clips: clips per official test batch (``cfg.eval.batch_size``; official 4).
        out_dir: where :meth:`run` writes files (rank 0); None writes nothing (the trainer's use).
        save_masks: write each frame's predicted mask as a 0/255 PNG (``masks/<category>/<video>/<video>_<t>.png``).
        save_rle: write ``preds.json`` (COCO RLE) and its threshold-bin sidecar (exact F from saved predictions).
        num_vis: clips in the qualitative grid PNG (0: none), spread evenly over the dataset.
        meta: extra entries stored in ``preds.json`` (e.g. the config and split).
        progress: show a tqdm bar on rank 0.
    """

    primary_metric = "miou"
    higher_is_better = True

    def __init__(
        self,
        batch_clips: int = 4,
        out_dir: Optional[str] = None,
        save_masks: bool = False,
        save_rle: bool = False,
        num_vis: int = 0,
        meta: Optional[Dict[str, Any]] = None,
        progress: bool = True,
    ):
        if batch_clips < 1:
            raise ConfigError(f"key 'eval.batch_size': must be at least 1 clip, got {batch_clips}")
        self.batch_clips = int(batch_clips)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.save_masks = save_masks
        self.save_rle = save_rle
        self.num_vis = int(num_vis)
        self.meta = dict(meta or {})
        self.progress = progress

    @classmethod
    def from_config(cls, cfg, out_dir: Optional[str] = None, **overrides) -> "AVSBenchEvaluator":
        """Settings from ``cfg.eval`` (progress bar: ``cfg.train.progress``); files only when ``out_dir`` is given.

        ``data.task`` avss gives the semantic evaluator instead (:class:`~avseg.evaluation.semantic_metrics.AVSSEvaluator`).
        """
        if cfg.data.task == "avss":
            from avseg.evaluation.semantic_metrics import AVSSEvaluator

            return AVSSEvaluator.from_config(cfg, out_dir=out_dir, **overrides)
        options = dict(
            batch_clips=cfg.eval.batch_size,
            out_dir=out_dir,
            save_masks=bool(cfg.eval.save_masks) and out_dir is not None,
            save_rle=bool(cfg.eval.save_rle) and out_dir is not None,
            num_vis=cfg.eval.num_vis if out_dir is not None else 0,
            progress=bool(cfg.train.progress),
        )
        options.update(overrides)
        return cls(**options)

    # ------------------------------------------------------------------ protocol
    def evaluate(self, model: nn.Module, loader: DataLoader, device) -> Dict[str, float]:
        """Flat metrics: ``miou``, ``fscore`` (official) and their ``*_batch_independent`` variants."""
        return self.run(model, loader, device).metrics

    # ------------------------------------------------------------------ model path
    def run(self, model: nn.Module, loader: DataLoader, device) -> EvalResult:
        """Evaluate ``model`` on every clip of ``loader``; write files to ``out_dir`` when set."""
        device = torch.device(device)
        model = unwrap_model(model)
        input_keys = inference_keys(model)
        indices = loader_indices(loader)
        audio = loader.dataset.mode if isinstance(loader.dataset, AudioCounterfactual) else "normal"
        collector = self._collector(len(loader.dataset))
        rank = get_rank()
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        position = 0
        try:
            with torch.no_grad():
                for batch in self._progress(loader, rank, "eval"):
                    batch_size = batch["frames"].shape[0]
                    batch_indices = indices[position : position + batch_size]
                    position += batch_size
                    missing = [key for key in input_keys if key not in batch]
                    if missing:
                        raise ConfigError(f"the model needs batch entries {missing}, which the dataset items lack")
                    inputs = {key: batch[key].to(device, non_blocking=True) for key in input_keys}
                    logits = model(**inputs)["logits"]
                    self._add_batch(collector, batch, batch_indices, logits, audio)
        finally:
            model.train(was_training)
        if position != len(indices):
            raise RuntimeError(f"the loader yielded {position} clips but its sampler lists {len(indices)}")
        return self._finish(collector, audio, time.perf_counter() - start)

    def _collector(self, dataset_length: int) -> _Collector:
        """What to keep on this rank: predictions for ``preds.json``, and the grid's clips (evenly spread)."""
        if self.out_dir is None:
            return _Collector()
        vis = np.linspace(0, dataset_length - 1, self.num_vis).round().astype(int) if self.num_vis > 0 and dataset_length else []
        return _Collector(keep_predictions=self.save_rle, vis_indices=vis)

    def _progress(self, iterable: Iterable, rank: int, desc: str):
        if not self.progress or rank != 0:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, unit="batch", leave=False, dynamic_ncols=True)

    def _add_batch(self, collector: _Collector, batch: Dict[str, Any], batch_indices: List[int], logits: torch.Tensor, audio: str) -> None:
        masks = batch["masks"]
        if logits.shape != masks.shape or logits.dim() != 5 or logits.shape[2] != 1:
            raise ValueError(
                f"the model's logits have shape {tuple(logits.shape)}; expected [B, T, 1, H, W] matching the masks {tuple(masks.shape)}"
            )
        probs = M.probabilities(logits)[:, :, 0]  # [B, T, H, W]
        gt = M.binary_masks(masks, "batch['masks']")[:, :, 0]
        valid = batch["mask_valid"].cpu().numpy().astype(bool) if "mask_valid" in batch else np.ones(probs.shape[:2], dtype=bool)
        foreground = probs > M.IOU_THRESHOLD
        bins = M.threshold_bins(probs)
        for b, index in enumerate(batch_indices):
            if self.save_masks and self.out_dir is not None:
                self._write_pngs(self._masks_dir(audio), batch["video_id"][b], batch["category"][b], foreground[b])
            want_visual = index in collector.vis_indices
            collector.add(
                index,
                batch["video_id"][b],
                batch["category"][b],
                valid[b],
                foreground[b],
                bins[b],
                gt[b],
                frames=batch["frames"][b].cpu() if want_visual else None,
                probs=probs[b] if want_visual else None,
            )

    def _masks_dir(self, audio: str) -> Path:
        return self.out_dir / ("masks" if audio == "normal" else f"masks_{audio}")

    def _write_pngs(self, root: Path, video_id: str, category: str, foreground: np.ndarray) -> None:
        from PIL import Image

        for t, mask in enumerate(foreground):
            path = join_inside(root, category, video_id, f"{video_id}_{t}.png", what=f"predicted mask of video '{video_id}'")
            with atomic_path(path, suffix=".png") as tmp:
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")

    # ------------------------------------------------------------------ saved-predictions path
    def score_predictions(self, predictions: SavedPredictions, dataset: Dataset, num_workers: int = 0) -> EvalResult:
        """Score saved predictions (``preds.json``) against ``dataset``'s ground truth, without a model.

        Frames are grouped into official batches by dataset order, exactly as :meth:`run` does; F is
        exact when the threshold-bin sidecar is present, else computed on the binary masks and
        reported as ``fscore_binary``.
        """
        loader = DataLoader(dataset, batch_size=self.batch_clips, shuffle=False, num_workers=num_workers)
        collector = _Collector()
        start = time.perf_counter()
        position = 0
        for batch in self._progress(loader, 0, "score"):
            masks = M.binary_masks(batch["masks"], "batch['masks']")[:, :, 0]
            valid = batch["mask_valid"].numpy().astype(bool) if "mask_valid" in batch else np.ones(masks.shape[:2], dtype=bool)
            for b in range(masks.shape[0]):
                video_id, category = batch["video_id"][b], batch["category"][b]
                foreground = np.zeros(masks.shape[1:], dtype=bool)
                bins = np.zeros(masks.shape[1:], dtype=np.uint8)
                for t in np.flatnonzero(valid[b]):
                    mask, frame_bins = predictions.frame(video_id, int(t))
                    if mask.shape != masks.shape[2:]:
                        raise ConfigError(
                            f"{predictions.path}: video '{video_id}' frame {t} is {mask.shape[0]}x{mask.shape[1]}, "
                            f"the ground truth {masks.shape[2]}x{masks.shape[3]} (same data.image_size?)"
                        )
                    foreground[t] = mask
                    # Without bins, the binary mask is a probability of 0 or 1: bin 1 or 255.
                    bins[t] = frame_bins if frame_bins is not None else np.where(mask, M.F_NUM_THRESHOLDS, 1)
                collector.add(position + b, video_id, category, valid[b], foreground, bins, masks[b])
            position += masks.shape[0]
        audio = str(predictions.meta.get("audio", "normal"))
        return self._finish(collector, audio, time.perf_counter() - start, fscore_from_binary=not predictions.has_bins)

    # ------------------------------------------------------------------ reduction and files
    def _finish(self, collector: _Collector, audio: str, seconds: float, fscore_from_binary: bool = False) -> EvalResult:
        rank = get_rank()
        clips: Dict[int, ClipScores] = {}
        for part in all_gather_objects(collector.clips):
            for clip in part:
                clips.setdefault(clip.index, clip)  # a padding sampler repeats clips: keep one
        ordered = [clips[i] for i in sorted(clips)]
        seconds = max(all_gather_objects(seconds))
        metrics = summarize(ordered, self.batch_clips, fscore_from_binary)
        if audio in robust.NEGATIVE_MODES:
            metrics["fpr"] = robust.false_positive_rate(ordered)
        result = EvalResult(metrics, ordered, self.batch_clips, audio, fscore_from_binary, seconds)
        predictions = gather_to_main(collector.predictions) if collector.keep_predictions else None
        visuals = gather_to_main(collector.visuals) if collector.vis_indices else None
        if rank == 0 and self.out_dir is not None:
            self._write_files(result, predictions, visuals)
        return result

    def _write_files(self, result: EvalResult, predictions, visuals) -> None:
        suffix = "" if result.audio == "normal" else f"_{result.audio}"
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        csv_path = out / f"per_video{suffix}.csv"
        result.write_per_video_csv(csv_path)
        result.files["per_video"] = csv_path.name
        if self.save_masks:
            result.files["masks"] = self._masks_dir(result.audio).name
        if predictions is not None:
            seen, annotations, packed = set(), [], []
            for entry in sorted((e for part in predictions for e in part), key=lambda e: (e["record"]["clip_index"], e["record"]["frame"])):
                key = (entry["record"]["clip_index"], entry["record"]["frame"])
                if key in seen:
                    continue
                seen.add(key)
                annotations.append(entry["record"])
                packed.append(entry["bins"])
            meta = {**self.meta, "audio": result.audio, "batch_clips": self.batch_clips}
            path = write_predictions(out / f"preds{suffix}.json", annotations, packed, meta)
            result.files["predictions"] = path.name
        if visuals:
            from avseg.evaluation.visualize import save_grid

            clips = sorted((v for part in visuals for v in part), key=lambda v: v["index"])
            unique = list({v["index"]: v for v in clips}.values())
            grid = out / f"grid{suffix}.png"
            save_grid(grid, unique, title=f"{self.meta.get('name', '')} {self.meta.get('split', '')} audio={result.audio}".strip())
            result.files["grid"] = grid.name


def write_metrics_json(path, results: Sequence[EvalResult], meta: Dict[str, Any]) -> None:
    """``metrics.json``: ``meta`` plus one section per audio mode (official and batch-independent)."""
    payload = {**meta, "results": {result.audio: result.summary() for result in results}}
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def format_table(results: Sequence[EvalResult]) -> str:
    """A small Markdown table of the metrics per audio mode, plus the per-category table when there is one."""
    if results and getattr(results[0], "task", None) == "avss":
        from avseg.evaluation.semantic_metrics import format_avss_table

        return format_avss_table(results)
    lines = []
    for result in results:
        f_key = "fscore_binary" if result.fscore_from_binary else "fscore"
        lines.append(
            f"| {result.audio} | {result.metrics['miou']:.4f} | {result.metrics[f_key]:.4f} | "
            f"{result.metrics['miou_batch_independent']:.4f} | {result.metrics[f_key + '_batch_independent']:.4f} | "
            f"{len(result.clips)} | {result.num_frames} |"
        )
    batch = results[0].batch_clips if results else 4
    f_name = "F (binary)" if results and results[0].fscore_from_binary else "F"
    header = [
        f"| audio | mIoU official (per batch of {batch} clips) | {f_name} official | mIoU batch-independent | {f_name} batch-independent | clips | frames |",
        "|---|---|---|---|---|---|---|",
    ]
    text = "\n".join(header + lines)
    categories = results[0].per_category() if results else {}
    if len(categories) > 1:
        rows = ["", f"per category (batch-independent, audio={results[0].audio}):", "| category | clips | frames | mIoU | F |", "|---|---|---|---|---|"]
        for name, row in categories.items():
            rows.append(f"| {name} | {row['clips']} | {row['frames']} | {row['miou']:.4f} | {row['fscore']:.4f} |")
        text += "\n" + "\n".join(rows)
    return text
