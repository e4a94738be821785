"""Live streams: segment frames as they arrive with their sound, each frame's backbone once.

``stream = Segmenter.stream(output="last")``; ``stream.push(frame, audio, sample_rate)`` takes one RGB
frame ``uint8 [H, W, 3]`` and the mono samples that arrived with it (since the previous push) and returns
probabilities at the frame's size (``[H, W]``; ``[C, H, W]`` for a semantic model) as soon as the audio
holds one VGGish example (0.975 s), else ``None``. ``stream.last_index`` / ``stream.last_time`` say
which frame they belong to: the pushed frame itself with ``output="last"``, the frame ``(n - 1) - (n - 1) // 2``
seconds older (2 s for T = 5) with ``output="center"``.

Clock: a frame's time ``t`` is the audio received so far, its own push included, over the sample rate
(``push(..., time=t)`` overrides it). Each push builds one clip and runs one frame's decoder:

* frames: the ``n = min(T, floor(t) + 1, g)`` frames displayed at ``t - n + 1, ..., t`` (1 s apart, the
  newest last), T the model's clip length;
* audio: VGGish examples lie on a fixed 0.96 s grid (example ``m`` reads the 0.975 s from ``0.96·m`` s);
  ``g`` examples are complete at time ``t``, and the clip takes the last ``n`` of them, i.e. the
  ``n``-example window starting at ``a = 0.96·(g - n)``: exactly the offline front end
  (``window_examples(waveform, a, n)``) on the audio ``[a, a + n)``;
* output ``last`` decodes slot ``n - 1`` (the newest frame), ``center`` slot ``(n - 1) // 2``.

Inherent latency: the newest frame's own example is the latest complete 0.96 s example, which ends
between 0 and 0.96 s before the frame, so a sound reaches the masks 0.975 s (a whole example, 0.96 s plus
one 25 ms STFT window) to 1.935 s after it starts; with ``center`` the returned frame is also
``(n - 1) - (n - 1) // 2`` s old. No output comes before 0.975 s of audio. Each example's VGGish vector is
computed once (one per 0.96 s). The masks equal the offline model run on the same frames and audio
(tests/test_stream.py).

Sources for tools/stream.py: :func:`file_source` (a video file; played at its own rate with ``realtime``),
:func:`device_source` (a camera and a microphone through PyAV; not tested: the test machines have no
capture devices), and :func:`run_stream` (a bounded queue that drops frames when behind, latency).
"""
from __future__ import annotations

import bisect
import math
import threading
import time as clock
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from avseg.audio.vggish_input import EXAMPLE_FRAMES, HOP_LENGTH, SAMPLE_RATE, WINDOW_LENGTH, waveform_to_examples
from avseg.data.avsbench_dataset import normalize_frames
from avseg.errors import MediaError
from avseg.inference.feature_cache import ClipJob, FrameTerms

if TYPE_CHECKING:
    from avseg.inference.segmenter import Segmenter

OUTPUTS = ("last", "center")
EXAMPLE_HOP = EXAMPLE_FRAMES * HOP_LENGTH  # 15 360 samples = 0.96 s between example starts
EXAMPLE_SAMPLES = WINDOW_LENGTH + (EXAMPLE_FRAMES - 1) * HOP_LENGTH  # 15 600 samples = 0.975 s read by one example
_EPS = 1e-6


def complete_examples(samples: int) -> int:
    """Examples of the 0.96 s grid complete after ``samples`` 16 kHz samples."""
    return max(0, (samples - EXAMPLE_SAMPLES) // EXAMPLE_HOP + 1)


@dataclass
class _Frame:
    time: float
    size: Tuple[int, int]
    terms: Optional[FrameTerms]  # with the feature cache
    image: Optional[np.ndarray]  # resized uint8 [S, S, 3], models without the cache


class SegmenterStream:
    """A live stream over a :class:`~avseg.inference.segmenter.Segmenter`; see the module docstring."""

    def __init__(self, segmenter: "Segmenter", output: str = "last"):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got '{output}'")
        self.segmenter = segmenter
        self.output = output
        self.clip_seconds = segmenter.clip_seconds
        self._frames: List[_Frame] = []
        self._frame_offset = 0  # stream index of self._frames[0]
        self._audio = np.zeros(0, np.float32)  # 16 kHz samples from sample self._origin
        self._origin = 0
        self._received = 0  # input samples
        self._rate: Optional[int] = None
        self._resampler = None
        self._examples: Dict[int, torch.Tensor] = {}  # grid index -> audio vector [D] (or log-mel without the cache)
        self.last_index: Optional[int] = None
        self.last_time: Optional[float] = None

    @property
    def frames_pushed(self) -> int:
        return self._frame_offset + len(self._frames)

    @property
    def frame_delay(self) -> float:
        """Seconds between the newest frame and the returned one once the clip is full (0 for ``last``)."""
        slots = self.clip_seconds - 1
        return 0.0 if self.output == "last" else float(slots - slots // 2)

    # ------------------------------------------------------------------ input
    def push(self, frame: np.ndarray, audio: np.ndarray, sample_rate: int,
             time: Optional[float] = None) -> Optional[np.ndarray]:
        """Add one frame and the audio since the previous push; probabilities of the output frame, or None."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"frame must be RGB uint8 [H, W, 3], got {frame.dtype} {tuple(frame.shape)}")
        self._add_audio(audio, sample_rate)
        now = self._received / self._rate if time is None else float(time)
        if self._frames and now < self._frames[-1].time - _EPS:
            raise ValueError(f"time must not go back: {now} after {self._frames[-1].time}")
        seg = self.segmenter
        image = seg.resize(frame)
        terms = None
        if seg.cache is not None:
            with seg._inference():
                terms = seg.cache.encode_frames(normalize_frames(image[None]).to(seg.device))[0]
        self._frames.append(_Frame(now, frame.shape[:2], terms, None if terms is not None else image))
        return self._emit(now)

    def _add_audio(self, audio: np.ndarray, sample_rate: int) -> None:
        samples = np.asarray(audio)
        if samples.ndim != 1:
            raise ValueError(f"audio must be mono samples [L], got shape {tuple(samples.shape)}")
        if samples.dtype.kind in "iu":
            samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
        samples = samples.astype(np.float32, copy=False)
        if self._rate is None:
            if int(sample_rate) <= 0:
                raise ValueError(f"sample_rate must be positive, got {sample_rate}")
            self._rate = int(sample_rate)
            if self._rate != SAMPLE_RATE:
                import soxr

                self._resampler = soxr.ResampleStream(self._rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        elif int(sample_rate) != self._rate:
            raise ValueError(f"sample_rate changed from {self._rate} to {sample_rate} within a stream")
        self._received += len(samples)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=False)
        self._audio = np.concatenate([self._audio, samples])

    # ------------------------------------------------------------------ schedule
    def plan(self, time: float) -> Tuple[int, int, int]:
        """(first grid example ``g - n``, clip length ``n``, decoded slot) of the clip ending at ``time`` (n = 0: none yet)."""
        available = min(int(math.floor(time * SAMPLE_RATE + _EPS)), self._origin + len(self._audio))
        examples = complete_examples(available)
        length = min(self.clip_seconds, math.floor(time + _EPS) + 1, examples)
        slot = length - 1 if self.output == "last" else (length - 1) // 2
        return examples - length, length, slot

    def _example(self, index: int) -> torch.Tensor:
        """Grid example ``index``: its audio vector ``[D]`` with the cache, its log-mel ``[1, 96, 64]`` without."""
        if index not in self._examples:
            begin = index * EXAMPLE_HOP - self._origin
            log_mel = waveform_to_examples(self._audio[begin:begin + EXAMPLE_SAMPLES], SAMPLE_RATE)
            cache = self.segmenter.cache
            if cache is not None and cache.needs_audio:
                log_mel = cache.encode_audio(log_mel.to(self.segmenter.device))
            self._examples[index] = log_mel[0]
        return self._examples[index]

    # ------------------------------------------------------------------ output
    def _emit(self, now: float) -> Optional[np.ndarray]:
        first, length, slot = self.plan(now)
        if length == 0:
            return None
        seg = self.segmenter
        times = [f.time for f in self._frames]
        clip = [self._frames[max(bisect.bisect_right(times, now - length + 1 + j + _EPS) - 1, 0)] for j in range(length)]
        with seg._inference():
            examples = torch.stack([self._example(first + j) for j in range(length)])
            if seg.cache is not None:
                window = seg.cache.window_terms(examples if seg.cache.needs_audio else None)
                logits = seg.cache.decode([ClipJob([f.terms for f in clip], window, slot)], (seg.image_size,) * 2)
                probabilities = seg._probabilities(logits)[0]
            else:
                probabilities = seg._forward([np.stack([f.image for f in clip])], [examples])[0, slot]
        from avseg.inference.segmenter import resize_probabilities

        frame = clip[slot]
        self.last_index = self._frame_offset + next(i for i, f in enumerate(self._frames) if f is frame)
        self.last_time = frame.time
        self._trim(now, first + length)
        return resize_probabilities(probabilities, frame.size)

    def _trim(self, now: float, examples: int) -> None:
        """Forget frames, audio and examples that no later clip can use (``examples``: complete at ``now``)."""
        oldest = now - self.clip_seconds  # later clips start after this time
        drop = 0
        while drop + 1 < len(self._frames) and self._frames[drop + 1].time <= oldest + _EPS:
            drop += 1
        del self._frames[:drop]
        self._frame_offset += drop
        first_example = max(0, examples - self.clip_seconds)  # later clips start at this example or a later one
        keep_from = first_example * EXAMPLE_HOP
        if keep_from > self._origin:
            self._audio = self._audio[keep_from - self._origin:]
            self._origin = keep_from
        self._examples = {index: value for index, value in self._examples.items() if index >= first_example}


# ----------------------------------------------------------------------------- sources
@dataclass
class SourceItem:
    """One frame with the mono audio since the previous item, at ``sample_rate``; ``time`` on the source clock."""

    frame: np.ndarray
    audio: np.ndarray
    sample_rate: int
    time: float


def file_source(segmenter: "Segmenter", path) -> Tuple[Iterator[SourceItem], float]:
    """Frames of a video file with the audio played while each is shown; (items, frames per second).

    Raises :class:`MediaError` naming the file when it is missing, unreadable or has no audio track.
    """
    from avseg.inference.video import iter_frames

    media = segmenter.open_video(path)
    info, waveform = media.info, media.waveform

    def items() -> Iterator[SourceItem]:
        previous = 0
        for index, image in iter_frames(info):
            end = int(round(info.frame_times[index] * SAMPLE_RATE))
            yield SourceItem(image, waveform[previous:max(end, previous)], SAMPLE_RATE, float(info.frame_times[index]))
            previous = max(end, previous)

    return items(), float(info.fps)


def device_source(camera: str, mic: str, camera_format: Optional[str] = None,
                  mic_format: Optional[str] = None) -> Tuple[Iterator[SourceItem], float]:
    """A camera and a microphone opened by PyAV (e.g. ``/dev/video0`` with ``v4l2``, ``default`` with ``pulse``
    or ``hw:0`` with ``alsa``); each camera frame comes with the microphone samples read since the previous one.

    Not tested: the test machines have no capture devices.
    """
    import av

    try:
        video = av.open(camera, format=camera_format)
        sound = av.open(mic, format=mic_format)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open the capture device(s) {camera} / {mic}: {exc}") from None
    if not video.streams.video or not sound.streams.audio:
        raise MediaError(f"{camera} has no video stream or {mic} has no audio stream")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    pending: List[np.ndarray] = []
    lock = threading.Lock()
    stop = threading.Event()

    def read_mic() -> None:
        for packet_frame in sound.decode(sound.streams.audio[0]):
            if stop.is_set():
                return
            chunks = [out.to_ndarray().reshape(-1) for out in resampler.resample(packet_frame)]
            with lock:
                pending.extend(chunks)

    def items() -> Iterator[SourceItem]:
        reader = threading.Thread(target=read_mic, daemon=True)
        reader.start()
        start = clock.monotonic()
        try:
            for image in video.decode(video.streams.video[0]):
                with lock:
                    audio = np.concatenate(pending) if pending else np.zeros(0, np.float32)
                    pending.clear()
                yield SourceItem(image.to_ndarray(format="rgb24"), audio, SAMPLE_RATE, clock.monotonic() - start)
        finally:
            stop.set()
            video.close()

    fps = float(video.streams.video[0].average_rate or 30)
    return items(), fps


# ----------------------------------------------------------------------------- live loop
@dataclass
class StreamReport:
    """What a run measured: frames pushed/dropped, outputs, wall seconds and latencies (seconds, per output)."""

    frames: int
    dropped: int
    outputs: int
    seconds: float
    latencies: np.ndarray

    @property
    def fps(self) -> float:
        return self.outputs / self.seconds if self.seconds > 0 else 0.0

    def percentiles(self, points: Iterable[float] = (50, 90, 99)) -> Dict[float, float]:
        if not len(self.latencies):
            return {p: float("nan") for p in points}
        return {p: float(np.percentile(self.latencies, p)) for p in points}


def run_stream(stream: SegmenterStream, items: Iterable[SourceItem], realtime: bool, queue_size: int = 8,
               max_seconds: Optional[float] = None) -> StreamReport:
    """Push a source through ``stream``.

    ``realtime``: a reader thread releases each item at its own time (wall clock = source clock) into a
    queue of at most ``queue_size`` frames; when segmentation falls behind, the oldest queued frame is
    dropped and its audio handed on to the next one, so the sound stays complete. The latency of an output
    is the wall time from its frame's release to the result (it includes the inherent audio latency).
    Without ``realtime`` every frame is pushed as fast as possible (latency: from the push to the result).
    """
    if queue_size < 1:
        raise ValueError(f"queue_size must be at least 1, got {queue_size}")
    queue: deque = deque()
    condition = threading.Condition()
    finished = threading.Event()
    counts = {"dropped": 0}
    released: Dict[int, float] = {}
    start = clock.monotonic()

    def reader() -> None:
        try:
            for item in items:
                if max_seconds is not None and item.time > max_seconds:
                    break
                if realtime:
                    clock.sleep(max(0.0, start + item.time - clock.monotonic()))
                with condition:
                    while not realtime and len(queue) >= queue_size:  # as fast as possible: wait, drop nothing
                        condition.wait(0.1)
                    if len(queue) >= queue_size:
                        oldest, _ = queue.popleft()
                        if queue:
                            nxt, stamp = queue[0]
                            queue[0] = (SourceItem(nxt.frame, np.concatenate([oldest.audio, nxt.audio]),
                                                   nxt.sample_rate, nxt.time), stamp)
                        else:
                            item = SourceItem(item.frame, np.concatenate([oldest.audio, item.audio]),
                                              item.sample_rate, item.time)
                        counts["dropped"] += 1
                    queue.append((item, clock.monotonic()))
                    condition.notify()
        finally:
            finished.set()
            with condition:
                condition.notify()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    latencies: List[float] = []
    pushed = 0
    while True:
        with condition:
            while not queue and not finished.is_set():
                condition.wait(0.1)
            if not queue:
                break
            item, stamp = queue.popleft()
            condition.notify()
        released[stream.frames_pushed] = stamp if realtime else clock.monotonic()
        result = stream.push(item.frame, item.audio, item.sample_rate)
        pushed += 1
        if result is not None:
            latencies.append(clock.monotonic() - released[stream.last_index])
            for index in [i for i in released if i < stream.last_index]:
                del released[index]
    thread.join()
    return StreamReport(frames=pushed, dropped=counts["dropped"], outputs=len(latencies),
                        seconds=clock.monotonic() - start, latencies=np.asarray(latencies))
