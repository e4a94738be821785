"""Reading audio: wav (and other libsndfile formats) with soundfile, the audio track of videos with PyAV.

All readers return float32 ``[samples]`` (mono) or ``[samples, channels]`` arrays in [-1, 1]; int16 PCM
is scaled by 1/32768 as in TF VGGish. Resampling to 16 kHz uses soxr (librosa's ``soxr_hq``, the default) or
resampy (``kaiser_best``, TF VGGish's choice, for bit-level parity; installed separately).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from avseg.audio.vggish_input import SAMPLE_RATE, pad_examples, waveform_to_examples
from avseg.errors import MediaError

PathLike = Union[str, os.PathLike]
RESAMPLERS = ("soxr", "resampy")
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3", ".opus"}


def read_wav(path: PathLike) -> Tuple[np.ndarray, int]:
    """Read a sound file with soundfile → (float32 ``[samples]`` or ``[samples, channels]``, sample rate)."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"audio file not found: {path}")
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:  # libsndfile raises RuntimeError / LibsndfileError / TypeError
        raise MediaError(f"{path}: cannot be read as audio by soundfile ({exc})") from None
    return data, int(sample_rate)


def read_video_audio(path: PathLike) -> Tuple[np.ndarray, int]:
    """Decode the first audio stream of a video (any container FFmpeg reads) with PyAV.

    Returns (float32 ``[samples, channels]``, native sample rate). Encoder priming is trimmed by FFmpeg
    where the container says so; the length may still differ from the video's by a few milliseconds.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: has no audio track")
            stream = container.streams.audio[0]
            to_planar_float = av.AudioResampler(format="fltp")
            chunks = []
            for frame in container.decode(stream):
                for converted in to_planar_float.resample(frame):
                    chunks.append(converted.to_ndarray())
            for converted in to_planar_float.resample(None):
                chunks.append(converted.to_ndarray())
            sample_rate = int(stream.codec_context.sample_rate or stream.rate)
    except MediaError:
        raise
    except Exception as exc:  # av.error.* for unreadable or truncated files
        raise MediaError(f"{path}: cannot decode its audio track ({exc})") from None
    if not chunks:
        raise MediaError(f"{path}: the audio track has no samples")
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), sample_rate


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """``[samples, channels]`` → ``[samples]`` by averaging channels; 1-D input is returned as is."""
    return waveform.mean(axis=1) if waveform.ndim == 2 else waveform


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int, resampler: str = "soxr") -> np.ndarray:
    """Resample a 1-D waveform: ``"soxr"`` (soxr HQ, as librosa's ``soxr_hq``) or ``"resampy"`` (kaiser_best)."""
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler '{resampler}' (expected one of {RESAMPLERS})")
    if orig_sr == target_sr:
        return waveform
    if resampler == "resampy":
        try:
            import resampy
        except ImportError:
            raise MediaError(
                "resampler 'resampy' was asked for but the resampy package is not installed "
                "(pip install resampy), or use resampler='soxr'"
            ) from None
        return resampy.resample(waveform, orig_sr, target_sr, filter="kaiser_best")
    import soxr  # librosa's resampling backend; identical to librosa.resample(res_type="soxr_hq") without its slow imports

    return soxr.resample(waveform, orig_sr, target_sr, quality="HQ")


def load_audio(path: PathLike, target_sr: int = SAMPLE_RATE, resampler: str = "soxr") -> Tuple[np.ndarray, int]:
    """Any sound file or video → (float32 mono waveform at ``target_sr``, ``target_sr``).

    Sound files (``.wav``, ``.flac``, ...) go through soundfile, everything else (``.mp4``, ``.mkv``,
    ``.webm``, ...) through PyAV; a file soundfile cannot read is retried with PyAV.
    """
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        try:
            waveform, sample_rate = read_wav(path)
        except MediaError:
            if not path.is_file():
                raise
            waveform, sample_rate = read_video_audio(path)
    else:
        waveform, sample_rate = read_video_audio(path)
    mono = to_mono(waveform)
    if mono.size == 0:
        raise MediaError(f"{path}: the audio has no samples")
    mono = resample(mono, sample_rate, target_sr, resampler)
    return np.asarray(mono, dtype=np.float32), target_sr


def load_log_mel(
    path: PathLike,
    num_examples: Optional[int] = None,
    resampler: str = "soxr",
    device: Union[str, torch.device, None] = None,
) -> torch.Tensor:
    """Sound file or video → VGGish log-mel examples ``[N, 1, 96, 64]`` (one per 0.96 s).

    With ``num_examples`` the result has exactly that many: the last example is repeated when the
    audio is short (AVSBench's rule) and extra ones are dropped.
    """
    waveform, sample_rate = load_audio(path, SAMPLE_RATE, resampler)
    examples = waveform_to_examples(waveform, sample_rate, device=device)
    if num_examples is None:
        if examples.shape[0] == 0:
            raise MediaError(f"{path}: audio shorter than 0.975 s gives no VGGish example")
        return examples
    try:
        return pad_examples(examples, num_examples)[:num_examples]
    except MediaError as exc:
        raise MediaError(f"{path}: {exc}") from None
