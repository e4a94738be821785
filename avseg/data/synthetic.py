"""A synthetic AVSBench in the exact official on-disk layout, for pipeline tests, demos and for checking
that a model uses sound.

Every clip shows solid shapes of distinct categories (disc, square, triangle, cross, ring, diamond,
horizontal bar, vertical bar) in saturated colours on a plain low-saturation background, at random
positions, moving a little from second to second (the scene is still within each second). Every
category has its own loud sound: a tone at ``220 * 2**(c / 2)`` Hz with a category-specific harmonic
pattern and amplitude-modulation rate. The sound says WHICH category is audible, never where it is; all
objects are drawn from the same size distribution and every clip shows distinct categories, so a model
that ignores the audio cannot tell the sounding object from the silent ones.

Colours (``colours``): ``category`` (default) gives each category its own hue (one eighth of the colour
wheel, ±1/64 jitter; random saturation and value), so a network trained from scratch can link a sound to
an object from its colour as well as its shape; ``random`` draws every hue at random, so only the shape
identifies the category (much harder to learn within a CPU budget, see docs/results.md).

* S4 (semantic v1s): one object sounds for the whole clip; most clips (90 %) add 1-3 silent objects of
  other categories.
* MS3 (semantic v1m and v2): 2-3 sounding objects plus 1-2 silent ones; each second a random
  subset of them is audible and their sounds are mixed; some seconds are silent (empty masks).
* AVSS (``task="avss"``, semantic layout): all three sets v1s, v1m (5 s) and v2 (10 s) in one release
  folder; class ``c + 1`` of the palette is category ``c`` (classes 1-8), so a label says which
  category sounds there and only the sound tells it apart from the silent objects of other categories.

Masks are the visible pixels of the objects audible in that second. Files written: the meta CSV,
frames (PNG, or JPEG in the semantic layout), masks (semantic: ``labels_rgb`` PNGs in the official
palette), 16 kHz int16 wav, ``.pkl`` log-mels (v1; pickled torch tensors, as the official preprocessing
writes them), ``label2idx.json`` (semantic: 71 keys, background first, the 8 categories, then unused
placeholder names, because the official loader requires 71) and ``raw_videos/*.mp4`` (H.264 + AAC) that
``tools/prepare_avsbench.py`` turns back into the same frames and features.

Numbers measured on this data are pipeline checks, not AVSBench numbers.
"""
from __future__ import annotations

import contextlib
import csv
import fractions
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from avseg.audio.vggish_input import SAMPLE_RATE, pad_examples, waveform_to_examples
from avseg.config import AVSS_SUBSETS
from avseg.data.avsbench_dataset import (
    AVSS_TASK,
    SEMANTIC_SETS,
    ClipRecord,
    semantic_clip_record,
    v1_clip_record,
    v1_csv_path,
)
from avseg.data.semantic_labels import AVSS_NUM_CLASSES, classes_to_colours
from avseg.errors import DatasetError
from avseg.fileio import atomic_path, atomic_write_bytes, atomic_write_text

PathLike = Union[str, os.PathLike]

CATEGORIES = ("disc", "square", "triangle", "cross", "ring", "diamond", "horizontal_bar", "vertical_bar")
HARMONIC_WEIGHTS = (  # weights of harmonics 1, 2, 3 per category
    (1.0, 0.0, 0.0),
    (1.0, 0.6, 0.0),
    (1.0, 0.0, 0.5),
    (1.0, 0.5, 0.3),
    (1.0, 0.0, 0.0),
    (1.0, 0.6, 0.0),
    (1.0, 0.0, 0.5),
    (1.0, 0.5, 0.3),
)
MODULATION_HZ = (0.0, 3.0, 6.0, 10.0, 4.0, 0.0, 8.0, 2.0)  # amplitude-modulation rate per category
TASK_IDS = {"s4": 4, "ms3": 3, "v2": 2}
TASK_SECONDS = {"s4": 5, "ms3": 5, "v2": 10}
SUBSET_RENDER_TASKS = {"v1s": "s4", "v1m": "ms3", "v2": "v2"}  # semantic label set → the clips it holds
LAYOUT_TASKS = {"v1": ("s4", "ms3"), "semantic": ("s4", "ms3", "v2", AVSS_TASK)}
VIDEO_FPS = 8
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
GENERATOR_VERSION = 2
COLOUR_MODES = ("category", "random")


@dataclass
class SyntheticClip:
    """One rendered clip (no files).

    ``frames`` uint8 [T, H, W, 3] (one still scene per second), ``labels`` uint8 [T, H, W] (category
    index + 1 on visible pixels of the objects audible in that second, 0 elsewhere), ``waveform``
    float32 [T * 16000] in [-1, 1] (already int16-quantised).
    """

    video_id: str
    split: str
    category: str
    frames: np.ndarray
    labels: np.ndarray
    waveform: np.ndarray
    objects: List[Dict[str, object]] = field(default_factory=list)
    audible: List[List[str]] = field(default_factory=list)

    @property
    def masks(self) -> np.ndarray:
        """bool [T, H, W]: pixels of audible objects."""
        return self.labels > 0


# ----------------------------------------------------------------------------- drawing
def shape_mask(category: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """Pixels of a shape of half-extent ``radius`` centred at ``(cx, cy)`` (``xx``, ``yy``: pixel-centre grids)."""
    u, v = (xx - cx) / radius, (yy - cy) / radius
    au, av = np.abs(u), np.abs(v)
    if category == "disc":
        return u * u + v * v <= 1.0
    if category == "square":
        return np.maximum(au, av) <= 0.85
    if category == "triangle":
        return (v <= 0.75) & (au <= (v + 1.0) * 0.6)
    if category == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if category == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if category == "diamond":
        return au + av <= 1.0
    if category == "horizontal_bar":
        return (au <= 1.0) & (av <= 0.35)
    if category == "vertical_bar":
        return (av <= 1.0) & (au <= 0.35)
    raise ValueError(f"unknown synthetic category '{category}'")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.round(np.array(rgb) * 255).astype(np.uint8)


def _place_objects(rng: np.random.Generator, count: int, size: int) -> List[Tuple[float, float, float]]:
    """Centres and radii, mostly without overlap (rejection sampling)."""
    placed: List[Tuple[float, float, float]] = []
    for _ in range(count):
        radius = size * rng.uniform(0.11, 0.17)
        best = None
        for _attempt in range(60):
            cx, cy = rng.uniform(radius, size - radius, size=2)
            if all(np.hypot(cx - ox, cy - oy) > 1.05 * (radius + orad) for ox, oy, orad in placed):
                best = (cx, cy, radius)
                break
            best = best or (cx, cy, radius)
        placed.append(best)
    return placed


# ----------------------------------------------------------------------------- sound
def category_sound(category_index: int, num_samples: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-peak tone of a category: ``220 * 2**(c/2)`` Hz (±2 %), its harmonic pattern and AM rate."""
    t = np.arange(num_samples) / sample_rate
    f0 = 220.0 * 2.0 ** (category_index / 2.0) * rng.uniform(0.98, 1.02)
    weights = HARMONIC_WEIGHTS[category_index % len(HARMONIC_WEIGHTS)]
    tone = sum(w * np.sin(2 * np.pi * (h + 1) * f0 * t + rng.uniform(0, 2 * np.pi)) for h, w in enumerate(weights) if w)
    tone = tone / sum(weights)
    rate = MODULATION_HZ[category_index % len(MODULATION_HZ)]
    if rate:
        tone = tone * (1.0 - 0.8 * (0.5 - 0.5 * np.cos(2 * np.pi * rate * t)))
    return tone


def _gate(on_per_second: Sequence[bool], sample_rate: int) -> np.ndarray:
    """0/1 per second → per-sample envelope with 10 ms raised-cosine edges."""
    gate = np.repeat(np.asarray(on_per_second, dtype=np.float64), sample_rate)
    ramp = np.hanning(sample_rate // 100 + 1)
    return np.convolve(gate, ramp / ramp.sum(), mode="same")


def quantize_int16(waveform: np.ndarray) -> np.ndarray:
    """float → int16 PCM (×32768, rounded, clipped)."""
    return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)


# ----------------------------------------------------------------------------- clips
def _audible_schedule(rng: np.random.Generator, num_sources: int, num_seconds: int) -> np.ndarray:
    """bool [seconds, sources]: each second a random subset; ~15 % silent seconds; every source heard once."""
    schedule = rng.random((num_seconds, num_sources)) < 0.6
    silent = rng.random(num_seconds) < 0.15
    schedule[silent] = False
    if not schedule.any(axis=1).any():
        silent[:] = False
        schedule[rng.integers(num_seconds), 0] = True
    for source in range(num_sources):
        if not schedule[:, source].any():
            voiced = np.flatnonzero(~silent)
            schedule[rng.choice(voiced), source] = True
    return schedule


def render_clip(rng: np.random.Generator, task: str, size: int, video_id: str = "", split: str = "",
                colours: str = "category") -> SyntheticClip:
    """Draw one clip of ``task`` (s4 | ms3 | v2) at ``size`` × ``size`` pixels; ``colours``: category | random."""
    if colours not in COLOUR_MODES:
        raise DatasetError(f"unknown synthetic colour mode '{colours}' (expected one of {COLOUR_MODES})")
    num_seconds = TASK_SECONDS[task]
    if task == "s4":
        num_sources = 1
        num_objects = 1 + int(rng.integers(1, 4)) if rng.random() < 0.9 else 1
    else:
        num_sources = int(rng.integers(2, 4))
        num_objects = num_sources + 1 + int(rng.random() < 0.5)
    categories = rng.choice(len(CATEGORIES), size=num_objects, replace=False)
    sounding = np.zeros(num_objects, dtype=bool)
    sounding[rng.choice(num_objects, size=num_sources, replace=False)] = True
    schedule = np.ones((num_seconds, 1), dtype=bool) if task == "s4" else _audible_schedule(rng, num_sources, num_seconds)
    audible = np.zeros((num_seconds, num_objects), dtype=bool)
    audible[:, np.flatnonzero(sounding)] = schedule

    background = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.2, 0.8))
    if colours == "category":
        hues = (categories + rng.uniform(-0.125, 0.125, num_objects)) / len(CATEGORIES) % 1.0
    else:
        hues = rng.random(num_objects)
    rgb = [_hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0)) for hue in hues]
    placements = _place_objects(rng, num_objects, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    frames = np.empty((num_seconds, size, size, 3), dtype=np.uint8)
    labels = np.zeros((num_seconds, size, size), dtype=np.uint8)
    centres = np.array([(cx, cy) for cx, cy, _ in placements])
    radii = np.array([r for _, _, r in placements])
    for second in range(num_seconds):
        if second:
            centres = np.clip(centres + rng.normal(0.0, 0.025 * size, centres.shape), radii[:, None], size - radii[:, None])
        frames[second] = background
        for obj in range(num_objects):
            pixels = shape_mask(CATEGORIES[categories[obj]], xx, yy, centres[obj, 0], centres[obj, 1], radii[obj])
            frames[second][pixels] = rgb[obj]
            labels[second][pixels] = categories[obj] + 1 if audible[second, obj] else 0

    num_samples = num_seconds * SAMPLE_RATE
    mix = np.zeros(num_samples)
    for obj in np.flatnonzero(sounding):
        tone = category_sound(int(categories[obj]), num_samples, rng)
        mix += rng.uniform(0.25, 0.4) * tone * _gate(audible[:, obj], SAMPLE_RATE)
    mix += 0.003 * rng.standard_normal(num_samples)
    peak = np.abs(mix).max()
    if peak > 0.95:
        mix *= 0.95 / peak
    waveform = quantize_int16(mix).astype(np.float32) / 32768.0

    sounding_names = [CATEGORIES[c] for c in categories[sounding]]
    return SyntheticClip(
        video_id=video_id,
        split=split,
        category=sounding_names[0] if task == "s4" else "+".join(sounding_names),
        frames=frames,
        labels=labels,
        waveform=waveform,
        objects=[{"category": CATEGORIES[c], "sounding": bool(s)} for c, s in zip(categories, sounding)],
        audible=[[CATEGORIES[c] for c in categories[row]] for row in audible],
    )


# ----------------------------------------------------------------------------- writers
def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    atomic_write_bytes(path, buffer.getvalue())


def write_jpeg(path: Path, image: np.ndarray, quality: int = 95) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    atomic_write_bytes(path, buffer.getvalue())


def write_wav(path: Path, waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM wav (the official wavs are 16 kHz 16-bit)."""
    import soundfile

    with atomic_path(path, suffix=".wav") as tmp:
        soundfile.write(str(tmp), quantize_int16(waveform), sample_rate, subtype="PCM_16")


def write_log_mel_pickle(path: Path, examples: torch.Tensor) -> None:
    """Write log-mels the way the official preprocessing does: ``pickle.dump`` of a torch tensor."""
    atomic_write_bytes(path, pickle.dumps(examples.detach().clone().requires_grad_(True)))


def write_mp4(path: Path, frames: np.ndarray, waveform: np.ndarray, fps: int = VIDEO_FPS, sample_rate: int = SAMPLE_RATE) -> None:
    """H.264 (yuv420p) + AAC mp4 with PyAV. ``frames`` uint8 [N, H, W, 3] at ``fps``; H and W must be even."""
    import av

    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise DatasetError(f"{path}: H.264 4:2:0 video needs even frame sizes, got {width}x{height}")
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w") as container:
            video = container.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.options = {"crf": "12", "preset": "ultrafast"}
            audio = container.add_stream("aac", rate=sample_rate)
            audio.layout = "mono"
            audio.bit_rate = 96000
            audio.options = {"aac_coder": "fast"}
            for image in frames:
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(video.encode())
            chunk = audio.codec_context.frame_size or 1024
            samples = waveform.astype(np.float32)
            for start in range(0, len(samples), chunk):
                frame = av.AudioFrame.from_ndarray(samples[None, start : start + chunk].copy(), format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, fractions.Fraction(1, sample_rate)
                container.mux(audio.encode(frame))
            container.mux(audio.encode())


def clip_video_frames(clip: SyntheticClip, fps: int = VIDEO_FPS) -> np.ndarray:
    """The clip's video stream: each second's still scene repeated ``fps`` times → [T * fps, H, W, 3]."""
    return np.repeat(clip.frames, fps, axis=0)


def clip_log_mel(clip: SyntheticClip) -> torch.Tensor:
    """VGGish log-mel examples of the clip's audio, padded AVSBench-style to one per second: [T, 1, 96, 64]."""
    num = clip.frames.shape[0]
    return pad_examples(waveform_to_examples(clip.waveform, SAMPLE_RATE), num)[:num]


def _write_clip(record: ClipRecord, clip: SyntheticClip, semantic: bool, write_videos: bool) -> None:
    for k, path in enumerate(record.frames):
        (write_jpeg if semantic else write_png)(path, clip.frames[k])
    for k, path in enumerate(record.masks):
        if path is not None:
            write_png(path, classes_to_colours(clip.labels[k]) if semantic else clip.masks[k].astype(np.uint8) * 255)
    write_wav(record.wav, clip.waveform)
    if record.log_mel is not None:
        write_log_mel_pickle(record.log_mel, clip_log_mel(clip))
    if write_videos and record.raw_video is not None:
        write_mp4(record.raw_video, clip_video_frames(clip), clip.waveform)


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch ops on one thread: per-clip FFTs are tiny, and threads only add synchronisation
    (20x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def split_sizes_for(num_videos: int) -> Tuple[int, int, int]:
    """Train/val/test counts with the official 70/15/15 proportions (at least one clip each)."""
    if num_videos < 3:
        raise DatasetError(f"need at least 3 videos for train/val/test splits, got {num_videos}")
    val = max(1, round(num_videos * SPLIT_FRACTIONS[1]))
    test = max(1, round(num_videos * SPLIT_FRACTIONS[2]))
    return num_videos - val - test, val, test


def default_layout(task: str) -> str:
    """``semantic`` for the tasks only that layout has (v2, avss), else ``v1``."""
    return "semantic" if task in ("v2", AVSS_TASK) else "v1"


def make_synthetic(
    out: PathLike,
    task: str = "s4",
    num_videos: int = 100,
    size: int = 224,
    seed: int = 0,
    layout: Optional[str] = None,
    split_sizes: Optional[Sequence[int]] = None,
    write_videos: bool = True,
    progress: bool = False,
    colours: str = "category",
) -> Path:
    """Write a synthetic AVSBench ``task`` into ``out`` and return ``out``.

    v1 layout: ``out/Single-source/...`` (s4) or ``out/Multi-sources/...`` (ms3), the dataset root of
    :class:`~avseg.data.AVSBenchDataset`. Semantic layout: ``out/metadata.csv``, ``out/label2idx.json`` plus
    ``out/v1s`` (s4), ``out/v1m`` (ms3), ``out/v2`` (v2, 10 s clips) or all three (avss); rows of other
    sets already in metadata.csv are kept. ``layout`` None: semantic for v2 and avss, else v1.
    ``split_sizes`` (train, val, test) overrides ``num_videos``; avss writes that many clips in each set.
    Clip ``i`` of a set depends only on ``(seed, set, i, colours)`` (the avss v1s clips are the semantic
    s4 clips). ``write_videos=False`` skips the raw mp4s (faster, for tests).
    """
    layout = layout or default_layout(task)
    if layout not in LAYOUT_TASKS:
        raise DatasetError(f"unknown layout '{layout}' (expected one of {tuple(LAYOUT_TASKS)})")
    if task not in LAYOUT_TASKS[layout]:
        raise DatasetError(f"unknown synthetic task '{task}' for the {layout} layout (expected one of {LAYOUT_TASKS[layout]})")
    if size < 32:
        raise DatasetError(f"synthetic frames must be at least 32 px, got {size}")
    if write_videos and size % 2:
        raise DatasetError(f"--size must be even to write H.264 raw videos, got {size}")
    sizes = tuple(int(n) for n in split_sizes) if split_sizes is not None else split_sizes_for(num_videos)
    if len(sizes) != 3 or min(sizes) < 0 or sum(sizes) == 0:
        raise DatasetError(f"split sizes must be three non-negative counts (train, val, test), got {sizes}")
    splits = ["train"] * sizes[0] + ["val"] * sizes[1] + ["test"] * sizes[2]
    out = Path(out)
    if layout == "v1":
        jobs: List[Tuple[str, Optional[str]]] = [(task, None)]
    else:
        label_sets = AVSS_SUBSETS if task == AVSS_TASK else (SEMANTIC_SETS[task],)
        jobs = [(SUBSET_RENDER_TASKS[label_set], label_set) for label_set in label_sets]
    with single_threaded_torch():
        for render_task, label_set in jobs:
            rows: List[List[str]] = []
            info: Dict[str, object] = {}
            indices = range(len(splits))
            if progress:
                from tqdm import tqdm

                indices = tqdm(indices, desc=f"synthetic {label_set or render_task}", unit="clip")
            for index in indices:
                _generate_one(out, render_task, layout, label_set, index, splits[index], size, seed, colours, write_videos, rows, info)
            _write_index(out, render_task, layout, label_set, seed, size, colours, rows, info)
    return out


def _generate_one(out: Path, task: str, layout: str, label_set: Optional[str], index: int, split: str, size: int,
                  seed: int, colours: str, write_videos: bool, rows: List[List[str]], info: Dict[str, object]) -> None:
    """Render clip ``index`` and write its files; append its index row and metadata."""
    video_id = f"syn_{label_set or task}_{index:05d}"
    clip = render_clip(np.random.default_rng([seed, TASK_IDS[task], index]), task, size, video_id, split, colours)
    if layout == "v1":
        record = v1_clip_record(out, task, video_id, split, clip.category if task == "s4" else "")
        rows.append([video_id, "0", clip.category, split] if task == "s4" else [video_id, split])
    else:
        record = semantic_clip_record(out, label_set, video_id, split, clip.category)
        rows.append([video_id, video_id, "0", "0", clip.category, split, label_set])
    _write_clip(record, clip, semantic=layout == "semantic", write_videos=write_videos)
    info[video_id] = {"split": split, "objects": clip.objects, "audible": clip.audible}


def _write_index(out: Path, task: str, layout: str, label_set: Optional[str], seed: int, size: int, colours: str,
                 rows: List[List[str]], info: Dict[str, object]) -> None:
    """The meta CSV (v1) or metadata.csv + label2idx.json (semantic), and synthetic_meta.json."""
    meta = {"generator": "avseg.data.synthetic", "version": GENERATOR_VERSION, "task": task, "layout": layout,
            "seed": seed, "size": size, "colours": colours, "categories": list(CATEGORIES), "clips": info}
    if layout == "v1":
        header = ["name", "start_time", "category", "split"] if task == "s4" else ["video_id", "split"]
        _write_csv(v1_csv_path(out, task), header, rows)
        atomic_write_text(v1_csv_path(out, task).parent / "synthetic_meta.json", json.dumps(meta, indent=1))
    else:
        _merge_semantic_metadata(out, label_set, rows)
        atomic_write_text(out / "label2idx.json", json.dumps(synthetic_label2idx(), indent=1))
        atomic_write_text(out / label_set / "synthetic_meta.json", json.dumps(meta, indent=1))


def synthetic_label2idx() -> Dict[str, int]:
    """The 71 keys of the synthetic ``label2idx.json``: background, the categories (class c + 1), placeholders."""
    names = ["background", *CATEGORIES]
    names += [f"unused_{index:02d}" for index in range(len(names), AVSS_NUM_CLASSES)]
    return {name: index for index, name in enumerate(names)}


SEMANTIC_HEADER = ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]


def _merge_semantic_metadata(out: Path, label_set: str, rows: List[List[str]]) -> None:
    path = out / "metadata.csv"
    kept: List[List[str]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as handle:
            existing = list(csv.reader(handle))
        if existing and existing[0] == SEMANTIC_HEADER:
            kept = [row for row in existing[1:] if row and row[-1] != label_set]
    _write_csv(path, SEMANTIC_HEADER, kept + rows)


def _write_csv(path: Path, header: List[str], rows: List[List[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


__all__ = ["CATEGORIES", "COLOUR_MODES", "SyntheticClip", "default_layout", "make_synthetic", "render_clip", "split_sizes_for", "synthetic_label2idx"]
