"""Video and frame-folder input, and H.264 mp4 output with the original audio stream, via PyAV.

Times are seconds from the first video frame. A frame is *displayed at* time ``t`` when it is the last
frame whose timestamp is ``<= t``; sampling a video at another frame rate picks the displayed frames.

Output files are written through :func:`avseg.fileio.atomic_path`: a crash never leaves a half-written mp4.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import av
import cv2
import numpy as np

from avseg.errors import MediaError
from avseg.fileio import atomic_path

LOGGER = logging.getLogger("avseg")

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Audio codecs the mp4 muxer stores as they are; other codecs are re-encoded to AAC.
MP4_AUDIO_CODECS = ("aac", "mp3", "ac3", "eac3", "alac", "opus", "flac")
_TIME_EPS = 1e-6


@dataclass(frozen=True)
class AudioStreamInfo:
    """The first audio stream of a container; ``start_time`` is relative to the first video frame."""

    codec: str
    sample_rate: int
    channels: int
    start_time: float


@dataclass(frozen=True)
class VideoInfo:
    """What the demo needs to know about its visual input.

    ``frame_times`` ``[N]`` are presentation times in seconds from the first frame, sorted;
    ``duration`` runs to the end of the last frame. ``width``/``height`` are the displayed size
    (after the container's rotation, if any). ``path`` is a video file or a folder of frames.
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    frame_times: np.ndarray
    duration: float
    rotation: int = 0
    start_pts_seconds: float = 0.0
    audio: Optional[AudioStreamInfo] = None
    frame_files: Tuple[Path, ...] = ()

    @property
    def num_frames(self) -> int:
        return len(self.frame_times)

    @property
    def is_folder(self) -> bool:
        return bool(self.frame_files)


# ----------------------------------------------------------------------------- input
def _open_container(path: Path):
    if not path.exists():
        raise MediaError(f"video not found: {path}")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder; pass a folder of frames with --frames (and the sound with --audio)")
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: cannot be read as a video container ({exc.strerror or type(exc).__name__})") from None


def _rotated(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (degrees counter-clockwise, multiples of 90) to ``[H, W, 3]``."""
    quarter_turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


def probe_video(path: PathLike) -> VideoInfo:
    """Read the streams, frame timestamps and size of a video file (demuxes it; decodes one frame).

    Raises :class:`MediaError` for a missing file, an unreadable container, no video stream or
    a video stream without decodable frames.
    """
    path = Path(path)
    container = _open_container(path)
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream (streams: {[s.type for s in container.streams] or 'none'})")
        stream = container.streams.video[0]
        time_base = stream.time_base
        pts_list: List[int] = []
        max_pts: Optional[int] = None
        last_duration = 0
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                if max_pts is None or packet.pts >= max_pts:
                    max_pts, last_duration = packet.pts, packet.duration or 0
                pts_list.append(packet.pts)
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: the video stream cannot be read ({exc.strerror or type(exc).__name__})") from None
        if not pts_list:
            raise MediaError(f"{path}: the video stream has no frames")
        pts = np.unique(np.asarray(pts_list, dtype=np.int64))
        rate = stream.average_rate or stream.guessed_rate
        if not rate and len(pts) > 1:
            rate = Fraction(len(pts) - 1) / ((int(pts[-1]) - int(pts[0])) * time_base)
        fps = Fraction(rate or 25).limit_denominator(1001)
        frame_times = ((pts - pts[0]) * float(time_base)).astype(np.float64)
        last = float(last_duration * time_base) if last_duration else 1.0 / float(fps)
        duration = float(frame_times[-1]) + last
        start = float(pts[0] * time_base)

        with _open_container(path) as again:  # a fresh demuxer: seeking back is not possible in every container
            first = _first_frame(again, again.streams.video[0], path)
        rotation = int(round(first.rotation or 0)) % 360 if hasattr(first, "rotation") else 0
        width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)

        audio = None
        if container.streams.audio:
            astream = container.streams.audio[0]
            astart = float(astream.start_time * astream.time_base) if astream.start_time is not None else start
            audio = AudioStreamInfo(
                codec=astream.codec_context.name,
                sample_rate=astream.codec_context.sample_rate or 0,
                channels=astream.codec_context.channels or 0,
                start_time=astart - start,
            )
    return VideoInfo(path=path, width=width, height=height, fps=fps, frame_times=frame_times, duration=duration,
                     rotation=rotation, start_pts_seconds=start, audio=audio)


def _first_frame(container, stream, path: Path):
    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: the video stream cannot be decoded ({exc.strerror or type(exc).__name__})") from None
    raise MediaError(f"{path}: the video stream has no decodable frames")


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def probe_frame_folder(folder: PathLike, frame_rate: Union[float, Fraction]) -> VideoInfo:
    """A folder of same-sized images (natural name order) played at ``frame_rate`` frames per second."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(f"frame folder not found: {folder}")
    files = tuple(sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key))
    if not files:
        raise MediaError(f"{folder}: no frames found (expected image files ending in {', '.join(IMAGE_SUFFIXES)})")
    if frame_rate <= 0:
        raise MediaError(f"{folder}: the frame rate must be positive, got {frame_rate}")
    first = read_image(files[0])
    fps = Fraction(frame_rate).limit_denominator(1001)
    frame_times = np.arange(len(files), dtype=np.float64) / float(fps)
    return VideoInfo(path=folder, width=first.shape[1], height=first.shape[0], fps=fps, frame_times=frame_times,
                     duration=len(files) / float(fps), frame_files=files)


def read_image(path: Path) -> np.ndarray:
    """An RGB ``uint8 [H, W, 3]`` image; grey and RGBA files are converted."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"{path}: cannot be read as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def iter_frames(info: VideoInfo) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(frame index, RGB uint8 [H, W, 3])`` in presentation order.

    Indices refer to ``info.frame_times``; a frame the decoder drops is simply not yielded.
    """
    if info.is_folder:
        for index, file in enumerate(info.frame_files):
            image = read_image(file)
            if image.shape[:2] != (info.height, info.width):
                raise MediaError(
                    f"{file}: is {image.shape[1]}x{image.shape[0]}, but the first frame is {info.width}x{info.height}; "
                    "all frames of a folder must have the same size"
                )
            yield index, image
        return
    container = _open_container(info.path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = float(stream.time_base)
        next_index = 0
        try:
            for frame in container.decode(stream):
                index = next_index
                if frame.pts is not None:  # a frame the decoder dropped leaves a gap in the indices
                    index = max(next_index, frame_index_at(info.frame_times, frame.pts * time_base - info.start_pts_seconds))
                if index >= info.num_frames:
                    break
                yield index, _rotated(frame.to_ndarray(format="rgb24"), info.rotation)
                next_index = index + 1
        except av.FFmpegError as exc:
            raise MediaError(f"{info.path}: decoding failed ({exc.strerror or type(exc).__name__})") from None


def frame_index_at(frame_times: np.ndarray, time: float) -> int:
    """Index of the frame displayed at ``time`` (the first frame for times before it)."""
    return max(int(np.searchsorted(frame_times, time + _TIME_EPS, side="right")) - 1, 0)


def frame_indices_at(frame_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Vectorised :func:`frame_index_at`: ``[M]`` times → ``[M]`` frame indices."""
    return np.maximum(np.searchsorted(frame_times, np.asarray(times) + _TIME_EPS, side="right") - 1, 0)


def choose_fps(source_fps: Fraction, fps: Optional[float] = None, max_fps: Optional[float] = None) -> Fraction:
    """The output frame rate: ``fps`` if given, else the source's, capped at ``max_fps``."""
    if fps is not None and fps <= 0:
        raise MediaError(f"--fps must be positive, got {fps}")
    chosen = Fraction(fps).limit_denominator(1001) if fps is not None else Fraction(source_fps)
    if max_fps is not None and fps is None and chosen > max_fps:
        chosen = Fraction(max_fps).limit_denominator(1001)
    return chosen


def output_times(duration: float, fps: Fraction) -> np.ndarray:
    """``[N]`` output timestamps ``i / fps`` covering ``[0, duration)``."""
    count = max(1, math.ceil(duration * float(fps) - 1e-3))
    return np.arange(count, dtype=np.float64) / float(fps)


def iter_frames_at(info: VideoInfo, times: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(i, RGB frame displayed at times[i])`` for sorted ``times``, decoding the source once."""
    wanted = frame_indices_at(info.frame_times, times)
    position = 0
    previous: Optional[np.ndarray] = None
    for index, image in iter_frames(info):
        while position < len(wanted) and wanted[position] < index:
            # the decoder dropped the wanted frame: show the last good one (or this one at the start)
            yield position, previous if previous is not None else image
            position += 1
        while position < len(wanted) and wanted[position] == index:
            yield position, image
            position += 1
        if position == len(wanted):
            return
        previous = image
    if previous is None:
        raise MediaError(f"{info.path}: no frames could be decoded")
    while position < len(wanted):
        yield position, previous
        position += 1


# ----------------------------------------------------------------------------- output
def even_size(width: int, height: int) -> Tuple[int, int]:
    """H.264 with yuv420p needs even dimensions: round up (frames are edge-padded by one pixel)."""
    return width + width % 2, height + height % 2


class Mp4Writer:
    """Write RGB frames as H.264 (libx264, yuv420p) plus an audio stream, atomically.

    Use as a context manager. The audio is either the first audio stream of ``audio_from``
    (a container; its packets are copied, not re-encoded, when the codec fits mp4; their timestamps
    are shifted by ``audio_offset`` seconds, minus the source's first video timestamp keeps the sync) or ``waveform``
    (float ``[L]`` or ``[C, L]`` at ``sample_rate``, encoded as AAC). The file appears at ``path``
    only when the ``with`` block ends without an exception. ``audio_mode`` tells what happened:
    ``"copied"``, ``"encoded"`` or ``"none"``.
    """

    def __init__(self, path: PathLike, fps: Fraction, width: int, height: int, audio_from: Optional[PathLike] = None,
                 audio_offset: float = 0.0, waveform: Optional[np.ndarray] = None, sample_rate: int = 16000,
                 crf: int = 20):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise MediaError(f"output must be an .mp4 file, got {self.path}")
        self.fps = Fraction(fps)
        self.width, self.height = width, height
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.audio_offset = audio_offset
        self.waveform = None if waveform is None else np.atleast_2d(np.asarray(waveform, dtype=np.float32))[:2]
        self.sample_rate = sample_rate
        self.crf = crf
        self.frames_written = 0
        self.audio_mode = "none"

    def __enter__(self) -> "Mp4Writer":
        # every stream must exist before the first packet is written (the header goes out then)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(self.path, suffix=".mp4"))
            self._container = av.open(str(tmp), mode="w")
            stack.callback(self._container.close)
            out_w, out_h = even_size(self.width, self.height)
            self._video = self._container.add_stream("libx264", rate=self.fps)
            self._video.width, self._video.height, self._video.pix_fmt = out_w, out_h, "yuv420p"
            self._video.options = {"crf": str(self.crf), "preset": "veryfast"}
            self._audio_source = self._audio_in = self._audio_out = None
            if self.audio_from is not None:
                self._audio_source = stack.enter_context(av.open(str(self.audio_from)))
                if self._audio_source.streams.audio:
                    self._audio_in = self._audio_source.streams.audio[0]
                    if self._audio_in.codec_context.name in MP4_AUDIO_CODECS:
                        self._audio_out = self._container.add_stream_from_template(self._audio_in)
                        self.audio_mode = "copied"
                    else:
                        LOGGER.warning("audio codec %s cannot be stored in mp4 as is; re-encoding it as AAC",
                                       self._audio_in.codec_context.name)
                        self.sample_rate = self._audio_in.codec_context.sample_rate or 44100
                        self._audio_out = self._add_aac_stream(min(self._audio_in.codec_context.channels or 2, 2))
            elif self.waveform is not None:
                self._audio_out = self._add_aac_stream(self.waveform.shape[0])
            self._stack = stack.pop_all()
        return self

    def _add_aac_stream(self, channels: int):
        stream = self._container.add_stream("aac", rate=self.sample_rate, layout="mono" if channels == 1 else "stereo")
        stream.bit_rate = 128000
        self.audio_mode = "encoded"
        return stream

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB ``uint8 [H, W, 3]`` frame."""
        if rgb.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, writer expects {self.width}x{self.height}")
        pad_h, pad_w = self.height % 2, self.width % 2
        if pad_h or pad_w:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames_written
        frame.time_base = 1 / self.fps
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:  # close and remove the temporary file, keep the exception
            return self._stack.__exit__(exc_type, exc, tb)
        with self._stack:  # on success the container closes, then the file is renamed into place
            for packet in self._video.encode():
                self._container.mux(packet)
            if self.audio_mode == "copied":
                self._copy_audio_packets()
            elif self._audio_in is not None:
                self._encode_samples(self._decode_source_audio())
            elif self.waveform is not None:
                self._encode_samples(self.waveform)
        return False

    def _copy_audio_packets(self) -> None:
        shift = int(round(self.audio_offset / float(self._audio_in.time_base)))
        for packet in self._audio_source.demux(self._audio_in):
            if packet.dts is None:
                continue
            packet.dts += shift
            if packet.pts is not None:
                packet.pts += shift
            packet.stream = self._audio_out
            self._container.mux(packet)

    def _decode_source_audio(self) -> np.ndarray:
        """The source's audio as float ``[C, L]`` at ``sample_rate``, padded or cut to start at its output time."""
        layout = self._audio_out.layout.name
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.sample_rate)
        chunks, first_time = [], None
        for frame in self._audio_source.decode(self._audio_in):
            first_time = frame.time if first_time is None else first_time
            chunks += [out.to_ndarray() for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
        channels = 1 if layout == "mono" else 2
        samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
        lead = int(round(((first_time or 0.0) + self.audio_offset) * self.sample_rate))
        return np.pad(samples, ((0, 0), (lead, 0))) if lead >= 0 else samples[:, -lead:]

    def _encode_samples(self, samples: np.ndarray) -> None:
        """Encode float ``[C, L]`` samples at ``sample_rate`` into the AAC stream."""
        layout = self._audio_out.layout.name
        chunk = 1024
        for start in range(0, samples.shape[1], chunk):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                               format="fltp", layout=layout)
            frame.sample_rate = self.sample_rate
            frame.pts = start
            for packet in self._audio_out.encode(frame):
                self._container.mux(packet)
        for packet in self._audio_out.encode():
            self._container.mux(packet)
