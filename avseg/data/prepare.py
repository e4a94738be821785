"""Raw AVSBench videos → frames, 16 kHz wav and log-mel ``.pkl``, as the official preprocessing does.

Per clip (``preprocess_s4.py`` / ``preprocess_ms3.py``):

* frames: frame k (1..T) is the decoded frame with index ``int((k - 1) * fps + 15/16 * fps)``, i.e. near
  the end of second k, resized with ``cv2.resize`` (bilinear) to ``size`` × ``size``. By default ``fps``
  is the stream's exact average rate and a video too short for an index is an error naming it;
  ``official_frame_times=True`` (``--official-frame-times``) does what the released scripts do instead:
  ``fps`` rounded to an integer (``int(round(fps))``: 29.97 → 30, so the 5th frame is 148 instead of
  147) and an index past the end replaced by the last decoded frame;
* audio: the video's audio track, mono, resampled to 16 kHz, first T seconds, written as 16-bit wav;
* log-mel: the VGGish front end on that wav, the last example repeated up to T, pickled as a torch
  tensor (v1 layout only; the semantic layout has no ``.pkl``).

Inputs: v1 ``raw_videos/`` as in :mod:`avseg.data.avsbench_dataset`; semantic layout ``<root>/raw_videos/<uid>.mp4``.
Finished clips (all outputs present) are skipped, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from avseg.audio.io import load_audio
from avseg.audio.vggish_input import SAMPLE_RATE, pad_examples, waveform_to_examples
from avseg.data.avsbench_dataset import ClipRecord, read_semantic_index, read_v1_index
from avseg.data.synthetic import single_threaded_torch, write_jpeg, write_log_mel_pickle, write_png, write_wav
from avseg.errors import AvsegError, DatasetError, MediaError

PathLike = Union[str, os.PathLike]
FRAME_POSITION = 15 / 16  # fraction of each second at which the frame is taken


@dataclass
class PrepareSummary:
    """What a prepare run did: clip counts and the failures with their messages."""

    prepared: int = 0
    skipped: int = 0
    failed: List[str] = field(default_factory=list)


def frame_indices(fps: float, num_frames: int, official_frame_times: bool = False) -> List[int]:
    """Frame choice ``int(l * fps + 15/16 * fps)`` for seconds ``l = 0 .. num_frames - 1``.

    ``official_frame_times``: ``fps`` first rounded as the released scripts do, ``int(round(fps))``
    (Python's round: halves to even).
    """
    interval = int(round(fps)) if official_frame_times else fps
    return [int(second * interval + FRAME_POSITION * interval) for second in range(num_frames)]


def extract_frames(video: PathLike, num_frames: int, size: Optional[int] = 224, official_frame_times: bool = False) -> np.ndarray:
    """Decode ``num_frames`` frames of a video (see :func:`frame_indices`) → uint8 [T, H, W, 3] RGB.

    ``size``: resize to ``size`` × ``size`` with ``cv2.resize`` (bilinear); None or 0 keeps the size.
    ``official_frame_times``: rounded frame rate, and indices past the end take the last decoded frame
    (the released scripts); otherwise such a video is a :class:`MediaError`.
    """
    import av
    import cv2

    video = Path(video)
    if not video.is_file():
        raise MediaError(f"raw video not found: {video}")
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise MediaError(f"{video}: has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise MediaError(f"{video}: frame rate unknown")
            wanted = frame_indices(float(rate), num_frames, official_frame_times)
            picked, last = {}, None
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    picked[index] = frame.to_ndarray(format="rgb24")
                if index >= wanted[-1]:
                    break
                last = frame
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"{video}: cannot decode video ({exc})") from None
    missing = [i for i in wanted if i not in picked]
    if missing and official_frame_times and last is not None:
        last_frame = last.to_ndarray(format="rgb24")
        picked.update({i: last_frame for i in missing})
    elif missing:
        raise MediaError(f"{video}: too short: frame indices {missing} not found (need {num_frames} s at {float(rate):.3g} fps)"
                         + ("" if official_frame_times else "; --official-frame-times repeats the last frame as the released scripts do"))
    frames = [picked[i] for i in wanted]
    if size:
        frames = [cv2.resize(frame, (size, size)) for frame in frames]
    return np.stack(frames)


def extract_audio(video: PathLike, num_seconds: int, resampler: str = "soxr") -> np.ndarray:
    """The video's audio as float32 mono at 16 kHz, cut to its first ``num_seconds`` seconds."""
    waveform, _ = load_audio(video, SAMPLE_RATE, resampler)
    return waveform[: num_seconds * SAMPLE_RATE]


def _outputs(record: ClipRecord) -> List[Path]:
    return [*record.frames, record.wav] + ([record.log_mel] if record.log_mel is not None else [])


def prepare_clip(record: ClipRecord, size: Optional[int] = 224, resampler: str = "soxr", official_frame_times: bool = False) -> None:
    """Write one clip's frames, wav and (v1) log-mel from its raw video (see :func:`extract_frames`)."""
    if record.raw_video is None:
        raise DatasetError(f"clip {record.video_id}: no raw video location in this layout")
    frames = extract_frames(record.raw_video, record.num_frames, size, official_frame_times)
    for path, frame in zip(record.frames, frames):
        (write_jpeg if path.suffix.lower() in (".jpg", ".jpeg") else write_png)(path, frame)
    waveform = extract_audio(record.raw_video, record.num_frames, resampler)
    write_wav(record.wav, waveform)
    if record.log_mel is not None:
        quantised = np.clip(np.round(waveform * 32768.0), -32768, 32767) / 32768.0  # what the wav holds
        examples = waveform_to_examples(quantised, SAMPLE_RATE)
        try:
            examples = pad_examples(examples, record.num_frames)[: record.num_frames]
        except MediaError as exc:
            raise MediaError(f"{record.raw_video}: {exc}") from None
        write_log_mel_pickle(record.log_mel, examples)


def prepare_avsbench(
    root: PathLike,
    task: str = "s4",
    size: Optional[int] = 224,
    resampler: str = "soxr",
    overwrite: bool = False,
    progress: bool = True,
    official_frame_times: bool = False,
) -> PrepareSummary:
    """Prepare every clip of ``task`` (``s4``/``ms3``: v1 layout; ``avss``: semantic layout) under ``root``.

    ``official_frame_times`` (default off): the released frame times, see :func:`extract_frames`.
    """
    if task in ("s4", "ms3"):
        records = read_v1_index(root, task)
    elif task == "avss":
        records = read_semantic_index(root)
    else:
        raise DatasetError(f"unknown task '{task}' (expected s4, ms3 or avss)")
    summary = PrepareSummary()
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc=f"prepare {task}", unit="clip")
    with single_threaded_torch():
        for record in iterator:
            if not overwrite and all(path.is_file() for path in _outputs(record)):
                summary.skipped += 1
                continue
            try:
                prepare_clip(record, size, resampler, official_frame_times)
                summary.prepared += 1
            except AvsegError as exc:
                summary.failed.append(f"{record.video_id}: {exc}")
    return summary
