"""Negative audio: sound that should make an AVS model segment nothing (silence, white noise, off-screen sound).

Every kind ends as VGGish log-mel examples ``[T, 1, 96, 64]`` from the same front end as the positives:

* ``silent``: ``T`` seconds of digital zeros through :func:`avseg.audio.waveform_to_examples`
  (``log(0 + 0.01)`` everywhere);
* ``noise``: ``T`` seconds of Gaussian white noise at :data:`NOISE_DBFS` (RMS ``10**(-20/20) = 0.1`` of
  full scale, i.e. −20 dBFS; clipped to [-1, 1], which at 10 standard deviations never happens), drawn
  from ``numpy.random.default_rng([seed, index])``, through the same waveform front end;
* ``offscreen``: the log-mel of another clip of the same dataset, read exactly as that clip's own
  positive audio is read (its ``.pkl`` or its wav), whose category lies in another category group
  (:func:`offscreen_partners`).

With official ``.pkl`` log-mels the positives come from TF VGGish's ``wavfile_to_examples``; the
silent and noise negatives are computed from a waveform by avseg's torch port of that function
(:mod:`avseg.audio.vggish_input`; ``tests/test_audio_frontend.py`` checks it against a transcription of
the TF algorithm to 1e-4), so positives and negatives share one log-mel
definition and no feature statistic other than the sound itself tells them apart.

:class:`NegativeAudioDataset` (``train.negative_audio_fraction``) adds negative copies of training
clips with empty target masks; :func:`build_negative_audio` is its builder.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from avseg.errors import ConfigError, DatasetError

NEGATIVE_KINDS = ("silent", "noise", "offscreen")
TARGET_KEYS = ("masks", "labels")  # binary masks; AVSS class maps (0 = background)
NOISE_DBFS = -20.0
"""RMS level of the white noise, in dB relative to a full-scale (|x| = 1) constant: ``20·log10(RMS)``."""

# Broad groups of the 23 AVSBench S4 categories (music, human voice, animal, machines and tools).
S4_CATEGORY_GROUPS: Dict[str, str] = {
    **dict.fromkeys(("playing_acoustic_guitar", "playing_glockenspiel", "playing_piano", "playing_tabla",
                     "playing_ukulele", "playing_violin"), "music"),
    **dict.fromkeys(("baby_laughter", "female_singing", "male_speech"), "human"),
    **dict.fromkeys(("cat", "coyote_howling", "dog_barking", "horse_clip-clop", "lions_roaring",
                     "mynah_bird_singing"), "animal"),
    **dict.fromkeys(("ambulance_siren", "cap_gun_shooting", "chainsawing_trees", "driving_buses", "helicopter",
                     "lawn_mowing", "race_car", "typing_on_computer_keyboard"), "device"),
}


# ----------------------------------------------------------------------------- waveforms → log-mel
def _examples_of(waveform: np.ndarray, num_examples: int) -> torch.Tensor:
    """``num_examples`` seconds of 16 kHz ``waveform`` → float32 ``[num_examples, 1, 96, 64]``."""
    from avseg.audio import SAMPLE_RATE, pad_examples, waveform_to_examples

    examples = waveform_to_examples(waveform, SAMPLE_RATE)
    return pad_examples(examples, num_examples)[:num_examples].float()


def silent_log_mel(num_examples: int) -> torch.Tensor:
    """Log-mel ``[T, 1, 96, 64]`` of ``T`` seconds of silence through the VGGish front end (``log(0.01)``)."""
    from avseg.audio import SAMPLE_RATE

    return _examples_of(np.zeros(num_examples * SAMPLE_RATE), num_examples)


def noise_waveform(num_samples: int, seed: int, index: int, level_dbfs: float = NOISE_DBFS) -> np.ndarray:
    """Gaussian white noise ``[num_samples]`` (float64) with RMS ``10**(level_dbfs / 20)``, clipped to [-1, 1].

    Drawn from ``numpy.random.default_rng([seed, index])``: the same for a given (seed, clip index) in any
    process, worker or order.
    """
    if not level_dbfs <= 0:
        raise ValueError(f"level_dbfs must be at most 0 dB (full scale), got {level_dbfs}")
    rms = 10.0 ** (level_dbfs / 20.0)
    samples = np.random.default_rng([int(seed), int(index)]).standard_normal(int(num_samples)) * rms
    return np.clip(samples, -1.0, 1.0)


def noise_log_mel(num_examples: int, seed: int, index: int, level_dbfs: float = NOISE_DBFS) -> torch.Tensor:
    """Log-mel ``[T, 1, 96, 64]`` of ``T`` seconds of :func:`noise_waveform` through the VGGish front end."""
    from avseg.audio import SAMPLE_RATE

    return _examples_of(noise_waveform(num_examples * SAMPLE_RATE, seed, index, level_dbfs), num_examples)


# ----------------------------------------------------------------------------- off-screen donors
def category_group(category: str) -> str:
    """The broad group of an S4 category (:data:`S4_CATEGORY_GROUPS`); any other category is its own group."""
    return S4_CATEGORY_GROUPS.get(category, category)


def offscreen_partners(categories: Sequence[str], seed: int) -> np.ndarray:
    """Donor clip ``partners[i]`` for every clip ``i``: a clip whose category group differs from clip ``i``'s.

    Rule: ``rng = numpy.random.default_rng(seed)``; for ``i = 0, 1, ...`` in dataset order, the
    candidates are the clips ``j`` (in dataset order) with ``category_group(categories[j]) !=
    category_group(categories[i])``, and the donor is ``candidates[rng.integers(len(candidates))]``.
    Raises :class:`DatasetError` when a clip has no category or every clip is in one group.
    """
    groups = [category_group(str(category)) for category in categories]
    unlabelled = [i for i, category in enumerate(categories) if not str(category)]
    if unlabelled:
        raise DatasetError(
            f"off-screen audio needs a category for every clip, and {len(unlabelled)} of {len(groups)} clips have none "
            f"(first: clip {unlabelled[0]}); the MS3 v1 layout has no category column"
        )
    group_array = np.asarray(groups)
    rng = np.random.default_rng(int(seed))
    partners = np.empty(len(groups), dtype=np.int64)
    for i, group in enumerate(groups):
        candidates = np.flatnonzero(group_array != group)
        if len(candidates) == 0:
            raise DatasetError(f"off-screen audio needs clips of another category group, but all {len(groups)} clips are in group '{group}'")
        partners[i] = candidates[rng.integers(len(candidates))]
    return partners


def clip_categories(dataset: Dataset) -> List[str]:
    """The category of every clip: from ``dataset.records`` when it has them (no decoding), else from its items."""
    records = getattr(dataset, "records", None)
    if records is not None and len(records) == len(dataset):
        return [str(record.category) for record in records]
    return [str(dataset[i]["category"]) for i in range(len(dataset))]


def clip_log_mel(dataset: Dataset, index: int, num_examples: int) -> torch.Tensor:
    """Clip ``index``'s own log-mel as ``[num_examples, 1, 96, 64]`` (AVSBench's repeat/trim rule for other lengths).

    Read by ``dataset.load_log_mel(index)`` when the dataset has it (no frames decoded), else from its item.
    """
    from avseg.audio import pad_examples

    loader = getattr(dataset, "load_log_mel", None)
    log_mel = loader(index) if callable(loader) else dataset[index]["log_mel"]
    if log_mel.shape[0] != num_examples:
        log_mel = pad_examples(log_mel, num_examples)[:num_examples]
    return log_mel


# ----------------------------------------------------------------------------- training
def negative_count(num_clips: int, fraction: float) -> int:
    """Negative items added to ``num_clips`` positives so that they are ``fraction`` of all items:
    ``round(num_clips · fraction / (1 − fraction))``."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    return int(round(num_clips * fraction / (1 - fraction)))


class NegativeAudioDataset(Dataset):
    """A training set plus negative copies of its clips: negative audio, empty target masks.

    Items ``0 .. N-1`` are ``dataset``'s own. Items ``N .. N+K-1`` (``K`` = :func:`negative_count`) are
    negatives: negative item ``j`` is clip ``sources[j]`` (a permutation of the clips drawn from
    ``numpy.random.default_rng([seed, 1])``, repeated when ``K > N``) with its frames and ``mask_valid``
    unchanged, its targets (:data:`TARGET_KEYS`: ``masks``, AVSS ``labels``) all zero (background),
    and the log-mel of kind ``kinds[j % len(kinds)]`` (``noise`` seeded by ``(seed, j)``; ``offscreen``
    the sound of :func:`offscreen_partners` ``[sources[j]]``). The negatives are the same in every epoch.
    """

    def __init__(self, dataset: Dataset, fraction: float, seed: int = 0, kinds: Sequence[str] = NEGATIVE_KINDS,
                 noise_dbfs: float = NOISE_DBFS):
        bad = [kind for kind in kinds if kind not in NEGATIVE_KINDS]
        if bad or not kinds:
            raise ValueError(f"kinds must be a non-empty list of {', '.join(NEGATIVE_KINDS)}, got {list(kinds)}")
        self.dataset = dataset
        self.kinds = tuple(kinds)
        self.seed = int(seed)
        self.noise_dbfs = float(noise_dbfs)
        num_clips = len(dataset)
        count = negative_count(num_clips, fraction)
        order = np.random.default_rng([self.seed, 1]).permutation(num_clips) if num_clips else np.empty(0, dtype=np.int64)
        self.sources = np.resize(order, count) if num_clips else np.empty(0, dtype=np.int64)
        needs_donors = "offscreen" in self.kinds[:count]  # negative j has kind kinds[j % len(kinds)]
        self.partners: Optional[np.ndarray] = offscreen_partners(clip_categories(dataset), self.seed) if needs_donors else None

    def __len__(self) -> int:
        return len(self.dataset) + len(self.sources)

    def kind_of(self, index: int) -> str:
        """``"positive"`` for one of the dataset's own items, else the negative kind of item ``index``."""
        j = index - len(self.dataset)
        return "positive" if j < 0 else self.kinds[j % len(self.kinds)]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of a dataset of {len(self)}")
        if index < len(self.dataset):
            return self.dataset[index]
        j = index - len(self.dataset)
        source = int(self.sources[j])
        item = dict(self.dataset[source])
        num_examples = item["log_mel"].shape[0]
        kind = self.kind_of(index)
        if kind == "silent":
            item["log_mel"] = silent_log_mel(num_examples)
        elif kind == "noise":
            item["log_mel"] = noise_log_mel(num_examples, self.seed, j, self.noise_dbfs)
        else:
            item["log_mel"] = clip_log_mel(self.dataset, int(self.partners[source]), num_examples)
        for key in TARGET_KEYS:
            if key in item:
                item[key] = torch.zeros_like(item[key])
        return item


def loss_has_gradient_on_empty_masks(loss_name: str, num_classes: int = 1) -> bool:
    """Whether the training loss moves the logits when the target is empty (all background).

    Binary models (``num_classes`` 1) train with ``model.seg_loss`` ``loss_name``; models with more
    classes with the AVSS cross-entropy (:func:`avseg.losses.semantic.semantic_ce_loss`). Evaluated on
    an 8×8 frame with logits 0 and an all-zero target: BCE, the structure loss and the cross-entropy push
    the logits towards background; a Dice- or IoU-only loss is constant there (``1 − 2·0 / (Σp² + ε) = 1``)
    and gives none.
    """
    logits = torch.zeros(1, 1, num_classes, 8, 8, requires_grad=True)
    annotated = torch.ones(1, 1, dtype=torch.bool)
    if num_classes > 1:
        from avseg.losses.semantic import semantic_ce_loss

        loss = semantic_ce_loss(logits, torch.zeros(1, 1, 8, 8, dtype=torch.long), annotated)
    else:
        from avseg.losses.segmentation import SEGMENTATION_LOSSES

        loss = SEGMENTATION_LOSSES[loss_name](logits, torch.zeros(1, 1, 1, 8, 8), annotated)
    loss.backward()
    return bool(logits.grad.abs().sum() > 0)


def build_negative_audio(dataset: Dataset, cfg) -> Dataset:
    """``dataset`` wrapped in :class:`NegativeAudioDataset` when ``cfg.train.negative_audio_fraction`` > 0.

    Seeded by ``cfg.seed``. Refused (:class:`ConfigError` naming the keys) for a dataset that is not an
    AVS one and for a ``model.seg_loss`` without gradient on empty masks, which would learn nothing from
    the negatives.
    """
    from avseg.config import AVS_DATASETS

    fraction = float(cfg.train.negative_audio_fraction)
    if fraction == 0:
        return dataset
    if cfg.data.name not in AVS_DATASETS:
        raise ConfigError(f"key 'train.negative_audio_fraction': {fraction} needs an audio-visual dataset "
                          f"(data.name {', '.join(AVS_DATASETS)}), not data.name '{cfg.data.name}'")
    if not loss_has_gradient_on_empty_masks(cfg.model.seg_loss, int(cfg.model.num_classes)):
        raise ConfigError(f"key 'model.seg_loss': '{cfg.model.seg_loss}' has no gradient on an empty mask, so "
                          f"train.negative_audio_fraction={fraction} would learn nothing from its negative clips; use bce or structure")
    try:
        return NegativeAudioDataset(dataset, fraction, seed=cfg.seed)
    except DatasetError as exc:
        raise DatasetError(f"train.negative_audio_fraction={fraction}: {exc}") from None

