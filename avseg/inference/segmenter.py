"""Segment the sounding objects of any video: checkpoint → model → masks for every output frame.

AVS models see clips of ``T`` seconds: one frame and one 0.96 s VGGish log-mel example per second
(AVSBench: T = 5). A video of any length is covered by T-second *windows* that slide in 1-second
steps (``0, 1, 2, ...``); when the length is not a whole number of seconds past T, one more window
is aligned to the end. Clips shorter than T seconds use one window of ``floor(duration)`` seconds
(at least 1; models accept any T).

Each second of the video is predicted by the window in which it is most central (ties: the
earlier window); overlapping windows are not averaged, so every mask comes from exactly one
forward pass in the setting the model was trained in. An output frame at time ``t`` in slot ``k``
of its window ``[a, a + T)`` is segmented in the clip of the frames displayed at
``t - k, t - k + 1, ..., t - k + T - 1`` (the same position inside each window second, ``t``
itself in slot ``k``), together with the window's ``T`` log-mel examples, computed from the audio
``[a, a + T)`` by the training front end (AVSBench's repeat rule when the audio runs out).
Output frames that share a clip (at the video's start and end) share one forward pass.

With the per-frame feature cache (default for TPAVI and ECMVAE, :mod:`avseg.inference.feature_cache`)
each needed frame goes through the backbone and neck once and each output frame through the decoder
once, its TPAVI context assembled from the cached terms of its clip's frames; the masks equal those of
whole clips (``frame_cache=False``) to 1e-5. A semantic model (``num_classes`` C > 1) gives softmax class
probabilities and class maps (:class:`Prediction`); :meth:`Segmenter.stream` segments a live source.

Example::

    from avseg import Segmenter
    seg = Segmenter.from_checkpoint("runs/quickstart/train/best.pth")
    result = seg.predict_video("my_clip.mp4")
    result.masks.shape        # (N, H, W) bool at the video's size
    result.timestamps[:3]     # seconds of the output frames
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from avseg.audio.io import load_audio
from avseg.audio.vggish_input import MIN_SAMPLES, SAMPLE_RATE, pad_examples, waveform_to_examples
from avseg.data.avsbench_dataset import clip_frames as dataset_clip_frames, normalize_frames
from avseg.errors import CheckpointError, ConfigError, MediaError
from avseg.models import registry
from avseg.inference.feature_cache import ClipJob, FeatureCache, FrameTerms, WindowTerms, unsupported_reason
from avseg.inference.video import (
    VideoInfo,
    choose_fps,
    frame_indices_at,
    iter_frames,
    output_times,
    probe_frame_folder,
    probe_video,
)

LOGGER = logging.getLogger("avseg")

PathLike = Union[str, Path]
MIN_DURATION = MIN_SAMPLES / SAMPLE_RATE  # 0.975 s: the shortest audio that gives one VGGish example
DEFAULT_MAX_FPS = 25.0
_EPS = 1e-6


TASK_KINDS = {"avs": "an audio-visual segmentation model", "image": "an image autoencoder/VAE"}


def avs_record(name: str, source: str, error: type = ConfigError) -> registry.ModelRecord:
    """The registry record of model ``name``; ``error`` naming ``source`` when it is not an AVS model."""
    record = registry.get(name)
    if record.task != "avs":
        raise error(f"{source}: the model '{name}' is {TASK_KINDS.get(record.task, record.task)} (task "
                    f"'{record.task}'); segmenting videos needs an AVS model ({', '.join(registry.names('avs'))})")
    return record


# ----------------------------------------------------------------------------- window schedule
def clip_seconds_for(cfg: DictConfig) -> int:
    """The clip length T a model was trained on: the number of frames per clip of its dataset."""
    return dataset_clip_frames(cfg.data.layout, cfg.data.task)


def plan_windows(duration: float, clip_seconds: int) -> Tuple[int, np.ndarray]:
    """Window length ``T`` and window starts ``[W]`` (seconds) covering ``[0, duration)``.

    ``T = clip_seconds``, or ``floor(duration)`` (at least 1) for shorter videos. Starts are
    ``0, 1, ..., floor(duration - T)``, plus ``duration - T`` when that is not a whole second.
    """
    length = max(1, min(clip_seconds, math.floor(duration + _EPS)))
    last = max(0.0, duration - length)
    starts = [float(a) for a in range(math.floor(last + _EPS) + 1)]
    if last - starts[-1] > _EPS:
        starts.append(last)
    return length, np.asarray(starts)


def assign_windows(times: np.ndarray, duration: float, length: int, starts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each time ``[N]``: the index of its window and its slot ``k`` (``0..T-1``) in that window.

    Second ``s`` (``[s, min(s + 1, duration))``) goes to the window that contains it whole and in
    which it is most central.
    """
    seconds = np.minimum(np.floor(times + _EPS), max(math.ceil(duration - _EPS) - 1, 0)).astype(np.int64)
    window_of_second: Dict[int, int] = {}
    for second in np.unique(seconds):
        end = min(second + 1.0, duration)
        centre = (second + end) / 2.0
        contains = (starts <= second + _EPS) & (starts + length >= end - _EPS)
        distance = np.where(contains, np.abs(starts + length / 2.0 - centre), np.inf)
        window_of_second[int(second)] = int(np.argmin(distance))  # argmin: the earlier window on ties
    windows = np.asarray([window_of_second[int(s)] for s in seconds], dtype=np.int64)
    slots = np.clip(np.floor(times - starts[windows] + _EPS), 0, length - 1).astype(np.int64)
    return windows, slots


# ----------------------------------------------------------------------------- results
@dataclass
class Prediction:
    """Masks of a video (or clip) at its original size.

    ``timestamps [N]`` (seconds), ``frame_size = (H, W)`` of the input and ``probabilities`` float32 at
    the model's resolution ``S``: ``[N, S, S]`` foreground probabilities (sigmoid) for a binary model,
    ``[N, C, S, S]`` class probabilities (softmax over C) for a semantic model (``num_classes = C > 1``).
    ``masks`` is ``[N, H, W]`` bool: the probabilities resized (bilinear) to the frame size, then
    ``> threshold`` (binary) or "the most probable class is not 0" (semantic); ``class_maps`` is
    ``[N, H, W]`` of class indices (uint8 up to 256 classes, else int32): argmax of the resized class
    probabilities (binary: the mask as 0/1). For long videos use the per-frame :meth:`probability`,
    :meth:`mask` and :meth:`class_map`. ``windows [N]`` and ``slots [N]`` say which window
    (``window_starts``, seconds) and position made each mask; ``num_clips`` clip contexts of
    ``clip_seconds`` frames were assembled, ``frames_encoded`` frames went through the backbone.
    """

    timestamps: np.ndarray
    probabilities: np.ndarray
    frame_size: Tuple[int, int]
    fps: Fraction
    threshold: float = 0.5
    window_starts: np.ndarray = field(default_factory=lambda: np.zeros(1))
    windows: Optional[np.ndarray] = None
    slots: Optional[np.ndarray] = None
    clip_seconds: int = 0
    num_clips: int = 0
    silent: bool = False
    frames_encoded: int = 0
    _masks: Optional[np.ndarray] = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def num_classes(self) -> int:
        """1 for a binary model, C for a semantic one."""
        return 1 if self.probabilities.ndim == 3 else int(self.probabilities.shape[1])

    def probability(self, index: int) -> np.ndarray:
        """Probabilities of frame ``index`` at the frame size: float32 ``[H, W]`` (binary) or ``[C, H, W]``."""
        return resize_probabilities(self.probabilities[index], self.frame_size)

    def mask(self, index: int) -> np.ndarray:
        """Binary mask of frame ``index`` at the frame size, bool ``[H, W]`` (semantic: any class but 0)."""
        if self.num_classes == 1:
            return self.probability(index) > self.threshold
        return self.class_map(index) != 0

    def class_map(self, index: int) -> np.ndarray:
        """Class index of every pixel of frame ``index`` at the frame size, ``[H, W]`` (uint8 or int32)."""
        if self.num_classes == 1:
            return self.mask(index).astype(np.uint8)
        return self.probability(index).argmax(axis=0).astype(class_dtype(self.num_classes))

    @property
    def masks(self) -> np.ndarray:
        """All masks, bool ``[N, H, W]`` (computed on first access)."""
        if self._masks is None:
            self._masks = np.stack([self.mask(index) for index in range(len(self))])
        return self._masks

    @property
    def class_maps(self) -> np.ndarray:
        """All class maps ``[N, H, W]`` (uint8 up to 256 classes, else int32)."""
        return np.stack([self.class_map(index) for index in range(len(self))])


def class_dtype(num_classes: int) -> type:
    """The dtype of class maps: uint8 up to 256 classes, else int32."""
    return np.uint8 if num_classes <= 256 else np.int32


def resize_probabilities(low: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``[S, S]`` or ``[C, S, S]`` probabilities → float32 ``[H, W]`` / ``[C, H, W]`` (bilinear, as the masks)."""
    if low.shape[-2:] == tuple(size):
        return low.astype(np.float32, copy=True)
    tensor = torch.from_numpy(np.ascontiguousarray(low, dtype=np.float32))
    tensor = tensor[None, None] if tensor.dim() == 2 else tensor[None]
    resized = torch.nn.functional.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)[0]
    return (resized[0] if low.ndim == 2 else resized).numpy()


@dataclass
class MediaInput:
    """A checked input: its frames (``info``), its sound as 16 kHz mono ``waveform [L]`` on the frames'
    clock, whether that is substituted silence, and the sound file of a frame folder."""

    info: VideoInfo
    waveform: np.ndarray
    silent: bool
    audio_path: Optional[Path] = None


# ----------------------------------------------------------------------------- segmenter
class Segmenter:
    """Run an AVS model (TPAVI or ECMVAE) on videos, frame folders and single clips.

    Args:
        model: an AVS model (``forward(frames [B,T,3,H,W], log_mel [B,T,1,96,64]) -> {"logits": [B,T,1,H,W]}``).
        cfg: the model's config (``data.image_size``, ``data.resampler``, ``seed``, dataset clip length).
        device: ``None``/``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
        batch_size: clips per forward pass (feature cache: batch_size × T frames per backbone/decoder pass).
        threshold: default probability threshold of the masks.
        clip_seconds: the window length T (default: the clip length of the model's dataset).
        frame_cache: compute each frame's backbone once and decode only the output frame of each clip
            (:mod:`avseg.inference.feature_cache`); False runs every clip whole. Models the cache does not
            support (an ONNX runtime, an ECMVAE that samples at test time) always run whole clips.

    A semantic model (logits with C > 1 channels) gives softmax class probabilities, see :class:`Prediction`.
    """

    def __init__(self, model: torch.nn.Module, cfg: DictConfig, device: Union[str, torch.device, None] = None,
                 batch_size: int = 4, threshold: float = 0.5, clip_seconds: Optional[int] = None,
                 frame_cache: bool = True):
        from avseg.engine.run_setup import select_device

        if not 0.0 <= threshold <= 1.0:
            raise MediaError(f"threshold (--threshold) is a probability in [0, 1], got {threshold}")
        self.record = avs_record(cfg.model.name, "key 'model.name'", ConfigError)
        self.device = select_device("auto" if device is None else str(device))
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.image_size = int(cfg.data.image_size)
        self.resampler = str(cfg.data.resampler)
        self.batch_size = max(1, int(batch_size))
        self.threshold = float(threshold)
        self.clip_seconds = int(clip_seconds or clip_seconds_for(cfg))
        self.seed = int(cfg.seed)
        self.cache = FeatureCache(self.model) if frame_cache and unsupported_reason(self.model) is None else None

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: Union[str, torch.device, None] = None, runtime: str = "torch",
                        **kwargs) -> "Segmenter":
        """Load an avseg checkpoint (weights + config); ``kwargs`` go to the constructor.

        ``runtime``: ``"torch"`` (eager) or ``"onnx"`` (onnxruntime on the CPU; ``path`` may then also be an
        ``.onnx`` file written by tools/export.py).
        """
        if runtime == "onnx":
            from avseg.inference.onnx_runtime import load_onnx_model

            model = load_onnx_model(path)
        elif runtime == "torch":
            from avseg.models import load_model

            model = load_model(path, device="cpu")
        else:
            raise ValueError(f"runtime must be 'torch' or 'onnx', got '{runtime}'")
        avs_record(model.cfg.model.name, str(path), CheckpointError)
        return cls(model, model.cfg, device=device, **kwargs)

    # ------------------------------------------------------------------ public API
    def predict_video(self, path: PathLike, fps: Optional[float] = None, max_fps: Optional[float] = DEFAULT_MAX_FPS,
                      threshold: Optional[float] = None, allow_silent: bool = False,
                      progress: Optional[Callable[[int, int], None]] = None) -> Prediction:
        """Segment a video file with sound.

        ``fps``: output frame rate (default: the video's, capped at ``max_fps``). Without an audio
        track this raises :class:`MediaError` unless ``allow_silent`` (then silence is used).
        ``progress(done, total)`` is called after each batch of clips.
        """
        media = self.open_video(path, allow_silent)
        return self.predict_media(media, choose_fps(media.info.fps, fps, max_fps), threshold, progress)

    def predict_frames(self, folder: PathLike, audio: Optional[PathLike], frame_rate: Optional[float] = None,
                       fps: Optional[float] = None, max_fps: Optional[float] = DEFAULT_MAX_FPS,
                       threshold: Optional[float] = None, allow_silent: bool = False,
                       progress: Optional[Callable[[int, int], None]] = None) -> Prediction:
        """Segment a folder of frames (natural name order) played at ``frame_rate`` with a sound file.

        ``frame_rate`` defaults to ``number of frames / audio seconds`` rounded to a whole number
        (1 for an AVSBench clip: 5 frames, 5 s).
        """
        media = self.open_frames(folder, audio, frame_rate, allow_silent)
        return self.predict_media(media, choose_fps(media.info.fps, fps, max_fps), threshold, progress)

    def predict_clip(self, frames: Union[np.ndarray, torch.Tensor], waveform: Union[np.ndarray, torch.Tensor],
                     sample_rate: int, threshold: Optional[float] = None) -> Prediction:
        """Segment one clip: ``frames`` RGB uint8 ``[T, H, W, 3]`` (or float ``[T, 3, H, W]`` in [0, 1]),
        one per second, and its ``waveform`` (``[L]`` or ``[L, channels]``) at ``sample_rate``.

        The audio gives ``T`` log-mel examples (the last one repeated when it is short).
        Returns a :class:`Prediction` with timestamps ``0, 1, ..., T-1``.
        """
        images = as_uint8_frames(frames)
        count = images.shape[0]
        examples = waveform_to_examples(waveform, sample_rate, resampler=self.resampler)
        if examples.shape[0] == 0:
            raise MediaError(f"the waveform is shorter than {MIN_DURATION} s and gives no VGGish example")
        log_mel = pad_examples(examples, count)[:count]
        inputs = np.stack([self.resize(image) for image in images])
        with self._inference():
            probabilities = self._forward([inputs], [log_mel])[0]
        return Prediction(
            timestamps=np.arange(count, dtype=np.float64), probabilities=probabilities, frame_size=images.shape[1:3],
            fps=Fraction(1), threshold=self.threshold if threshold is None else threshold,
            windows=np.zeros(count, np.int64), slots=np.arange(count), clip_seconds=count, num_clips=1,
        )

    # ------------------------------------------------------------------ inputs
    def open_video(self, path: PathLike, allow_silent: bool = False) -> "MediaInput":
        """Probe a video and read its audio as 16 kHz mono on the video's clock (checks every user error)."""
        info = probe_video(path)
        check_duration(info)
        if info.audio is None:
            if not allow_silent:
                raise MediaError(f"{info.path}: has no audio track; AVS models segment what sounds. "
                                 "Pass --allow-silent (allow_silent=True) to run with silence anyway")
            LOGGER.warning("%s: no audio track, segmenting with silence (--allow-silent)", info.path)
            return MediaInput(info, silence(info.duration), silent=True)
        waveform, _ = load_audio(info.path, SAMPLE_RATE, self.resampler)
        return MediaInput(info, align_audio(waveform, info.audio.start_time, info.duration), silent=False)

    def open_frames(self, folder: PathLike, audio: Optional[PathLike], frame_rate: Optional[float] = None,
                    allow_silent: bool = False) -> "MediaInput":
        """Probe a frame folder and read its sound file (``audio``) as 16 kHz mono."""
        if audio is None:
            if not allow_silent:
                raise MediaError("no audio given for the frame folder; pass a sound file (--audio WAV) "
                                 "or --allow-silent to run with silence")
            if frame_rate is None:
                raise MediaError(f"{folder}: give the frame rate of the folder (--frame-rate) when there is no audio")
            LOGGER.warning("no audio given, segmenting with silence (--allow-silent)")
            info = probe_frame_folder(folder, frame_rate)
            check_duration(info)
            return MediaInput(info, silence(info.duration), silent=True, audio_path=None)
        waveform, _ = load_audio(audio, SAMPLE_RATE, self.resampler)
        if frame_rate is None:
            count = probe_frame_folder(folder, 1).num_frames
            seconds = len(waveform) / SAMPLE_RATE
            frame_rate = max(1, round(count / seconds))
            LOGGER.info("%s: %d frames, %.2f s of audio -> %d frames per second", folder, count, seconds, frame_rate)
        info = probe_frame_folder(folder, frame_rate)
        check_duration(info)
        return MediaInput(info, waveform, silent=False, audio_path=Path(audio))

    def resize(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 ``[H, W, 3]`` → ``[S, S, 3]`` at the model's size (PIL bilinear, like the dataset)."""
        if image.shape[:2] == (self.image_size, self.image_size):
            return image
        return np.array(Image.fromarray(image).resize((self.image_size, self.image_size), Image.BILINEAR))

    # ------------------------------------------------------------------ core
    def predict_media(self, media: "MediaInput", fps: Fraction, threshold: Optional[float] = None,
                      progress: Optional[Callable[[int, int], None]] = None) -> Prediction:
        """Segment an opened input (:meth:`open_video` / :meth:`open_frames`) at output frame rate ``fps``.

        ``progress(done, total)`` counts clip contexts (one per distinct clip and slot with the cache).
        """
        info, waveform = media.info, media.waveform
        times = output_times(info.duration, fps)
        length, starts = plan_windows(info.duration, self.clip_seconds)
        windows, slots = assign_windows(times, info.duration, length, starts)
        clip_times = times[:, None] + (np.arange(length)[None, :] - slots[:, None])  # [N, T]
        clip_frames = frame_indices_at(info.frame_times, clip_times.ravel()).reshape(clip_times.shape)
        log_mels: Dict[int, torch.Tensor] = {}

        def window_log_mel(window: int) -> torch.Tensor:
            if window not in log_mels:
                log_mels[window] = window_examples(waveform, float(starts[window]), length)
            return log_mels[window]

        keys = [(int(w), tuple(int(f) for f in frames), int(k) if self.cache is not None else -1)
                for w, frames, k in zip(windows, clip_frames, slots)]
        outputs_of: Dict[Tuple[int, Tuple[int, ...], int], List[int]] = {}
        for index, key in enumerate(keys):
            outputs_of.setdefault(key, []).append(index)
        jobs = sorted(outputs_of, key=lambda key: (max(key[1]), outputs_of[key][0]))  # in the order they get ready
        run = self._run_cached if self.cache is not None else self._run_clips
        probabilities: Optional[np.ndarray] = None
        finished = encoded = 0
        with self._inference():
            for batch, values, encoded in run(info, jobs, window_log_mel):
                for key, value in zip(batch, values):
                    for index in outputs_of[key]:
                        frame_probabilities = value[slots[index]] if key[2] < 0 else value  # whole clip: pick the slot
                        if probabilities is None:
                            probabilities = np.zeros((len(times),) + frame_probabilities.shape, np.float32)
                        probabilities[index] = frame_probabilities
                finished += len(batch)
                if progress is not None:
                    progress(finished, len(jobs))
        return Prediction(
            timestamps=times, probabilities=probabilities, frame_size=(info.height, info.width), fps=fps,
            threshold=self.threshold if threshold is None else threshold, window_starts=starts, windows=windows,
            slots=slots, clip_seconds=length, num_clips=len(jobs), silent=media.silent, frames_encoded=encoded,
        )

    def _run_clips(self, info: VideoInfo, jobs: Sequence[Tuple[int, Tuple[int, ...], int]],
                   window_log_mel: Callable[[int], torch.Tensor]) -> Iterator[Tuple[list, np.ndarray, int]]:
        """Whole clips through the model: yields (jobs, their clips' probabilities ``[B, T, ...]``, frames encoded)."""
        needed = {f for _, frames, _ in jobs for f in frames}
        first_needed = [min(jobs[j][1]) for j in range(len(jobs))]
        for position in range(len(jobs) - 2, -1, -1):  # suffix minimum: earliest frame any later clip needs
            first_needed[position] = min(first_needed[position], first_needed[position + 1])
        buffer: Dict[int, np.ndarray] = {}
        done = encoded = 0

        def ready_batches(last: int, final: bool):
            nonlocal done, encoded
            while done < len(jobs):
                ready = [key for key in jobs[done:done + self.batch_size] if max(key[1]) <= last]
                if not ready or (len(ready) < self.batch_size and not final):
                    return
                frames = [np.stack([buffer[f] for f in key[1]]) for key in ready]
                encoded += sum(len(clip) for clip in frames)
                yield ready, self._forward(frames, [window_log_mel(key[0]) for key in ready]), encoded
                done += len(ready)
                keep_from = first_needed[done] if done < len(jobs) else math.inf
                for frame in [f for f in buffer if f < keep_from]:
                    del buffer[frame]

        for index, image in self._needed_frames(info, needed):
            buffer[index] = image
            yield from ready_batches(index, final=False)
        yield from ready_batches(info.num_frames, final=True)

    def _run_cached(self, info: VideoInfo, jobs: Sequence[Tuple[int, Tuple[int, ...], int]],
                    window_log_mel: Callable[[int], torch.Tensor]) -> Iterator[Tuple[list, np.ndarray, int]]:
        """Each needed frame encoded once, each job's frame decoded alone: yields (jobs, probabilities, frames encoded).

        A frame's maps are dropped once no pending job decodes it, its small terms once no pending clip holds it.
        """
        cache, per_pass = self.cache, self.batch_size * self.clip_seconds
        member_uses = Counter(f for _, frames, _ in jobs for f in set(frames))
        decode_uses = Counter(frames[slot] for _, frames, slot in jobs)
        terms: Dict[int, FrameTerms] = {}
        window_terms: Dict[int, WindowTerms] = {}
        pending: List[Tuple[int, np.ndarray]] = []
        done = encoded = 0

        def encode_pending() -> None:
            nonlocal encoded
            if not pending:
                return
            images = torch.stack([normalize_frames(image[None])[0] for _, image in pending]).to(self.device)
            for (index, _), frame_terms in zip(pending, cache.encode_frames(images)):
                if not decode_uses[index]:
                    frame_terms.release_maps()
                terms[index] = frame_terms
            encoded += len(pending)
            pending.clear()

        def window(index: int) -> WindowTerms:
            if index not in window_terms:
                window_terms[index] = cache.encode_window(window_log_mel(index).to(self.device))
            return window_terms[index]

        def ready_batches(final: bool):
            nonlocal done
            while done < len(jobs):
                ready = [key for key in jobs[done:done + per_pass] if all(f in terms for f in key[1])]
                if not ready or (len(ready) < per_pass and not final):
                    return
                clip_jobs = [ClipJob([terms[f] for f in frames], window(w), slot) for w, frames, slot in ready]
                logits = cache.decode(clip_jobs, (self.image_size, self.image_size))
                yield ready, self._probabilities(logits), encoded
                done += len(ready)
                for _, frames, slot in ready:
                    decode_uses[frames[slot]] -= 1
                    if not decode_uses[frames[slot]]:
                        terms[frames[slot]].release_maps()
                    for frame in set(frames):
                        member_uses[frame] -= 1
                        if not member_uses[frame]:
                            del terms[frame]

        for index, image in self._needed_frames(info, set(member_uses)):
            pending.append((index, image))
            if len(pending) >= per_pass:
                encode_pending()
                yield from ready_batches(final=False)
        encode_pending()
        yield from ready_batches(final=True)

    def _needed_frames(self, info: VideoInfo, needed: set) -> Iterator[Tuple[int, np.ndarray]]:
        """Decode the source once and yield ``(frame index, resized uint8 [S, S, 3])`` for ``needed`` frames, in order.

        A frame the decoder dropped repeats the previous decoded one (the next one at the very start).
        """
        expected, previous = 0, None
        for index, image in iter_frames(info):
            for missing in range(expected, index):
                if missing in needed:
                    yield missing, self.resize(previous if previous is not None else image)
            if index in needed:
                yield index, self.resize(image)
            expected, previous = index + 1, image
        if previous is None:
            raise MediaError(f"{info.path}: no frames could be decoded")
        for missing in range(expected, info.num_frames):
            if missing in needed:
                yield missing, self.resize(previous)

    @contextlib.contextmanager
    def _inference(self):
        """No gradients, eval mode and a fixed seed (models that sample at test time stay deterministic)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.seed)
            yield

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """Logits ``[N, K, h, w]`` → float32 ``[N, S, S]`` (sigmoid, K = 1) or ``[N, K, S, S]`` (softmax)."""
        logits = logits.float()
        if logits.shape[-2:] != (self.image_size, self.image_size):
            logits = torch.nn.functional.interpolate(logits, size=(self.image_size, self.image_size),
                                                     mode="bilinear", align_corners=False)
        if logits.shape[1] == 1:
            return torch.sigmoid(logits)[:, 0].cpu().numpy()
        return torch.softmax(logits, dim=1).cpu().numpy()

    def _forward(self, frames: Sequence[np.ndarray], log_mels: Sequence[torch.Tensor]) -> np.ndarray:
        """Clips of uint8 frames ``[T, S, S, 3]`` and log-mels ``[T, 1, 96, 64]`` → probabilities ``[B, T, ...]``."""
        batch_frames = torch.stack([normalize_frames(clip) for clip in frames]).to(self.device)
        batch_log_mel = torch.stack(list(log_mels)).to(self.device)
        inputs = registry.select_inputs(self.record, {"frames": batch_frames, "log_mel": batch_log_mel})
        logits = self.model(**inputs)["logits"]  # [B, T, K, h, w]
        probabilities = self._probabilities(logits.flatten(0, 1))
        return probabilities.reshape(len(frames), -1, *probabilities.shape[1:])

    def stream(self, output: str = "last") -> "SegmenterStream":
        """A live stream: ``push(frame, audio, sample_rate)`` per frame; see :mod:`avseg.inference.stream`."""
        from avseg.inference.stream import SegmenterStream

        return SegmenterStream(self, output=output)


# ----------------------------------------------------------------------------- helpers
def check_duration(info: VideoInfo) -> None:
    if info.duration < MIN_DURATION - _EPS:
        raise MediaError(f"{info.path}: is {info.duration:.3f} s long; AVS models need at least {MIN_DURATION} s "
                         "(one 0.96 s VGGish example)")


def align_audio(waveform: np.ndarray, start_time: float, duration: float) -> np.ndarray:
    """Shift 16 kHz audio that starts ``start_time`` s after the first video frame onto the video's clock."""
    lead = int(round(start_time * SAMPLE_RATE))
    shifted = np.concatenate([np.zeros(lead, np.float32), waveform]) if lead > 0 else waveform[-lead:]
    short = duration - len(shifted) / SAMPLE_RATE
    if short > 0.5:
        LOGGER.warning("the audio ends %.2f s before the video; later windows repeat its last example", short)
    return shifted


def window_examples(waveform: np.ndarray, start: float, length: int) -> torch.Tensor:
    """Log-mel examples ``[T, 1, 96, 64]`` of the 16 kHz audio ``[start, start + T)`` by the training front end.

    Short audio repeats its last example (AVSBench's rule); a window past the end of the audio is silence.
    """
    begin = int(round(start * SAMPLE_RATE))
    segment = waveform[begin:begin + length * SAMPLE_RATE]
    if len(segment) < MIN_SAMPLES:
        segment = np.concatenate([segment, np.zeros(MIN_SAMPLES - len(segment), np.float32)])
    examples = waveform_to_examples(segment, SAMPLE_RATE)
    return pad_examples(examples, length)[:length]


def silence(duration: float) -> np.ndarray:
    """``duration`` seconds of 16 kHz silence."""
    return np.zeros(int(math.ceil(duration * SAMPLE_RATE)), np.float32)


def as_uint8_frames(frames: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """RGB ``uint8 [T, H, W, 3]`` from uint8 ``[T, H, W, 3]`` or float ``[T, 3, H, W]`` in [0, 1]."""
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4:
        raise MediaError(f"frames must be [T, H, W, 3] uint8 or [T, 3, H, W] float, got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.shape[1] != 3:
            raise MediaError(f"float frames must be [T, 3, H, W] in [0, 1], got shape {array.shape}")
        array = (np.clip(array.transpose(0, 2, 3, 1), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.shape[-1] != 3:
        raise MediaError(f"uint8 frames must be RGB [T, H, W, 3], got shape {array.shape}")
    return np.ascontiguousarray(array)
