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
from avseg.data.avsbench_dataset import SEMANTIC_FRAMES, SEMANTIC_SETS, V1_FRAMES, normalize_frames
from avseg.errors import CheckpointError, ConfigError, MediaError
from avseg.models import registry
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
    if cfg.data.layout == "semantic" and cfg.data.task in SEMANTIC_SETS:
        return SEMANTIC_FRAMES[SEMANTIC_SETS[cfg.data.task]]
    return V1_FRAMES


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

    ``timestamps [N]`` (seconds), ``probabilities [N, h, w]`` float32 at the model's resolution,
    ``frame_size = (H, W)`` of the input. ``masks`` is ``[N, H, W]`` bool: the probabilities resized
    (bilinear) to the frame size, then ``> threshold``. For long videos use :meth:`mask` per frame.
    ``windows [N]`` and ``slots [N]`` say which window (``window_starts``, seconds) and position made
    each mask; ``num_clips`` clips of ``clip_seconds`` frames went through the model.
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
    _masks: Optional[np.ndarray] = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.timestamps)

    def probability(self, index: int) -> np.ndarray:
        """Foreground probability of frame ``index`` at the frame size, float32 ``[H, W]``."""
        height, width = self.frame_size
        low = self.probabilities[index]
        if low.shape == (height, width):
            return low.astype(np.float32, copy=True)
        tensor = torch.from_numpy(np.ascontiguousarray(low, dtype=np.float32))[None, None]
        resized = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
        return resized[0, 0].numpy()

    def mask(self, index: int) -> np.ndarray:
        """Binary mask of frame ``index`` at the frame size, bool ``[H, W]``."""
        return self.probability(index) > self.threshold

    @property
    def masks(self) -> np.ndarray:
        """All masks, bool ``[N, H, W]`` (computed on first access)."""
        if self._masks is None:
            height, width = self.frame_size
            stacked = np.zeros((len(self), height, width), dtype=bool)
            for index in range(len(self)):
                stacked[index] = self.mask(index)
            self._masks = stacked
        return self._masks


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
        batch_size: clips per forward pass.
        threshold: default probability threshold of the masks.
        clip_seconds: the window length T (default: the clip length of the model's dataset).
    """

    def __init__(self, model: torch.nn.Module, cfg: DictConfig, device: Union[str, torch.device, None] = None,
                 batch_size: int = 4, threshold: float = 0.5, clip_seconds: Optional[int] = None):
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
        """Segment an opened input (:meth:`open_video` / :meth:`open_frames`) at output frame rate ``fps``."""
        info, waveform = media.info, media.waveform
        times = output_times(info.duration, fps)
        length, starts = plan_windows(info.duration, self.clip_seconds)
        windows, slots = assign_windows(times, info.duration, length, starts)
        clip_times = times[:, None] + (np.arange(length)[None, :] - slots[:, None])  # [N, T]
        clip_frames = frame_indices_at(info.frame_times, clip_times.ravel()).reshape(clip_times.shape)

        clip_ids: Dict[Tuple[int, Tuple[int, ...]], int] = {}
        clip_of_output = np.empty(len(times), np.int64)
        for index, (window, frames) in enumerate(zip(windows, clip_frames)):
            clip_of_output[index] = clip_ids.setdefault((int(window), tuple(int(f) for f in frames)), len(clip_ids))
        clips = list(clip_ids)  # (window, frame indices), in output order
        probabilities = np.zeros((len(times), self.image_size, self.image_size), np.float32)
        log_mels: Dict[int, torch.Tensor] = {}

        def window_log_mel(window: int) -> torch.Tensor:
            if window not in log_mels:
                log_mels[window] = window_examples(waveform, float(starts[window]), length)
            return log_mels[window]

        outputs_of_clip: List[List[int]] = [[] for _ in clips]
        for index, clip in enumerate(clip_of_output):
            outputs_of_clip[clip].append(index)

        finished = 0
        with self._inference():
            for batch, inputs in self._stream_clips(info, clips):
                outputs = self._forward(inputs, [window_log_mel(clips[c][0]) for c in batch])
                for clip, clip_probabilities in zip(batch, outputs):
                    for index in outputs_of_clip[clip]:
                        probabilities[index] = clip_probabilities[slots[index]]
                finished += len(batch)
                if progress is not None:
                    progress(finished, len(clips))
        return Prediction(
            timestamps=times, probabilities=probabilities, frame_size=(info.height, info.width), fps=fps,
            threshold=self.threshold if threshold is None else threshold, window_starts=starts, windows=windows,
            slots=slots, clip_seconds=length, num_clips=len(clips), silent=media.silent,
        )

    def _stream_clips(self, info: VideoInfo, clips: Sequence[Tuple[int, Tuple[int, ...]]]
                      ) -> Iterator[Tuple[List[int], List[np.ndarray]]]:
        """Decode the source once and yield batches ``(clip ids, frames uint8 [T, S, S, 3] each)``.

        Only frames still needed by a later clip stay in memory (about one window of frames).
        """
        order = sorted(range(len(clips)), key=lambda c: (max(clips[c][1]), c))
        first_needed = [min(clips[c][1]) for c in order]
        for position in range(len(order) - 2, -1, -1):  # suffix minimum: earliest frame any later clip needs
            first_needed[position] = min(first_needed[position], first_needed[position + 1])
        needed = {f for _, frames in clips for f in frames}
        buffer: Dict[int, np.ndarray] = {}
        done = 0

        def ready_batches(last_decoded: int, final: bool) -> Iterator[Tuple[List[int], List[np.ndarray]]]:
            nonlocal done
            while done < len(order):
                ready = [c for c in order[done:done + self.batch_size] if max(clips[c][1]) <= last_decoded]
                if not ready or (len(ready) < self.batch_size and not final):
                    return
                yield ready, [np.stack([buffer[f] for f in clips[c][1]]) for c in ready]
                done += len(ready)
                keep_from = first_needed[done] if done < len(order) else math.inf
                for frame in [f for f in buffer if f < keep_from]:
                    del buffer[frame]

        expected, previous = 0, None
        for index, image in iter_frames(info):
            for missing in range(expected, index):  # frames the decoder dropped: repeat the previous one
                if missing in needed:
                    buffer[missing] = self.resize(previous if previous is not None else image)
            if index in needed:
                buffer[index] = self.resize(image)
            expected, previous = index + 1, image
            yield from ready_batches(index, final=False)
        if previous is None:
            raise MediaError(f"{info.path}: no frames could be decoded")
        for missing in range(expected, info.num_frames):
            if missing in needed:
                buffer[missing] = self.resize(previous)
        yield from ready_batches(info.num_frames, final=True)

    @contextlib.contextmanager
    def _inference(self):
        """No gradients, eval mode and a fixed seed (models that sample at test time stay deterministic)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.seed)
            yield

    def _forward(self, frames: Sequence[np.ndarray], log_mels: Sequence[torch.Tensor]) -> np.ndarray:
        """Clips of uint8 frames ``[T, S, S, 3]`` and log-mels ``[T, 1, 96, 64]`` → probabilities ``[B, T, S, S]``."""
        batch_frames = torch.stack([normalize_frames(clip) for clip in frames]).to(self.device)
        batch_log_mel = torch.stack(list(log_mels)).to(self.device)
        inputs = registry.select_inputs(self.record, {"frames": batch_frames, "log_mel": batch_log_mel})
        logits = self.model(**inputs)["logits"]  # [B, T, 1, h, w]
        logits = logits.flatten(0, 1).float()
        if logits.shape[-2:] != (self.image_size, self.image_size):
            logits = torch.nn.functional.interpolate(logits, size=(self.image_size, self.image_size),
                                                     mode="bilinear", align_corners=False)
        probabilities = torch.sigmoid(logits)[:, 0].reshape(len(frames), -1, self.image_size, self.image_size)
        return probabilities.cpu().numpy()


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
