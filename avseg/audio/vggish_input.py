"""The VGGish log-mel front end, computed in torch exactly as TF ``vggish_input.waveform_to_examples``.

Algorithm (TF VGGish, ``vggish_params`` constants):

1. 16 kHz mono waveform in [-1, 1] (2-D input ``[samples, channels]`` is averaged over channels).
2. Frames of 400 samples (25 ms) with hop 160 (10 ms) starting at sample 0, no padding; a trailing
   partial frame is dropped. Each frame is multiplied by a periodic Hann window and zero-padded to 512.
3. Magnitude of the 512-point real FFT (257 bins), times the TF mel matrix (64 HTK bands over
   125-7500 Hz, triangles linear in mel, DC row zeroed), then ``log(x + 0.01)``.
4. Non-overlapping examples of 96 frames (0.96 s): ``[N, 96, 64]``; a partial example is dropped.

Everything runs in float64 (float32 FFT rounding alone exceeds 1e-4 after the log in quiet bins)
on the device of the input, and returns float32 ``[N, 1, 96, 64]``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Union

import numpy as np
import torch

from avseg.errors import MediaError

SAMPLE_RATE = 16000
WINDOW_LENGTH = 400  # 0.025 s
HOP_LENGTH = 160  # 0.010 s
FFT_LENGTH = 512  # 2 ** ceil(log2(400))
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s, no overlap
MIN_SAMPLES = WINDOW_LENGTH + (EXAMPLE_FRAMES - 1) * HOP_LENGTH  # 15600: shorter audio gives no example

ArrayLike = Union[np.ndarray, torch.Tensor]


def hertz_to_mel(frequencies_hz: np.ndarray) -> np.ndarray:
    """HTK mel scale: ``1127 * ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(frequencies_hz, dtype=np.float64) / 700.0)


def mel_matrix(
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = NUM_MEL_BINS,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """The TF VGGish mel weight matrix ``[num_spectrogram_bins, num_mel_bins]`` (float64).

    Band ``i`` is a triangle over mel edges ``e[i], e[i+1], e[i+2]`` (``num_mel_bins + 2`` edges evenly
    spaced in mel between ``lower_hz`` and ``upper_hz``), evaluated at the mel value of each FFT bin
    centre; no area normalisation; the DC bin gets weight 0.
    """
    nyquist = sample_rate / 2.0
    if lower_hz < 0.0 or lower_hz >= upper_hz or upper_hz > nyquist:
        raise ValueError(f"mel band edges must satisfy 0 <= lower ({lower_hz}) < upper ({upper_hz}) <= Nyquist ({nyquist})")
    bin_mels = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))[:, None]  # [K, 1]
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # [M] each
    rising = (bin_mels - lower) / (centre - lower)
    falling = (upper - bin_mels) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


@lru_cache(maxsize=8)
def _torch_constants(device: torch.device, dtype: torch.dtype):
    window = torch.hann_window(WINDOW_LENGTH, periodic=True, dtype=dtype, device=device)
    mel = torch.from_numpy(mel_matrix()).to(device=device, dtype=dtype)
    return window, mel


def log_mel_spectrogram(waveforms: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """16 kHz waveforms ``[..., L]`` → log-mel spectrogram ``[..., F, 64]`` with F = 1 + (L - 400) // 160."""
    if waveforms.shape[-1] < WINDOW_LENGTH:
        shape = (*waveforms.shape[:-1], 0, NUM_MEL_BINS)
        return waveforms.new_zeros(shape, dtype=dtype)
    window, mel = _torch_constants(waveforms.device, dtype)
    frames = waveforms.to(dtype).unfold(-1, WINDOW_LENGTH, HOP_LENGTH)  # [..., F, 400]
    magnitude = torch.fft.rfft(frames * window, n=FFT_LENGTH).abs()  # [..., F, 257]
    return torch.log(magnitude @ mel + LOG_OFFSET)


def frame_examples(log_mel: torch.Tensor) -> torch.Tensor:
    """``[..., F, 64]`` → non-overlapping examples ``[..., N, 96, 64]`` with N = F // 96."""
    num_examples = log_mel.shape[-2] // EXAMPLE_FRAMES
    usable = log_mel[..., : num_examples * EXAMPLE_FRAMES, :]
    return usable.reshape(*log_mel.shape[:-2], num_examples, EXAMPLE_FRAMES, log_mel.shape[-1])


def log_mel_examples(waveforms: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Batched front end on any device: 16 kHz waveforms ``[..., L]`` → float32 ``[..., N, 1, 96, 64]``."""
    examples = frame_examples(log_mel_spectrogram(waveforms, dtype=dtype))
    return examples.unsqueeze(-3).float()


def _as_mono_tensor(waveform: ArrayLike) -> torch.Tensor:
    """1-D or ``[samples, channels]`` array/tensor → 1-D float tensor (integer PCM scaled to [-1, 1])."""
    tensor = torch.from_numpy(np.ascontiguousarray(waveform)) if isinstance(waveform, np.ndarray) else waveform
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"waveform must be a numpy array or a torch tensor, got {type(waveform).__name__}")
    if not tensor.is_floating_point():
        if tensor.dtype not in (torch.int16, torch.int32, torch.int8):
            raise TypeError(f"waveform dtype {tensor.dtype} is not supported (expected float or int16/int32 PCM)")
        tensor = tensor.double() / float(torch.iinfo(tensor.dtype).max + 1)
    if tensor.dim() == 2:
        if tensor.shape[1] > tensor.shape[0]:
            raise ValueError(
                f"2-D waveform of shape {tuple(tensor.shape)} looks like [channels, samples]; "
                "pass [samples, channels] (soundfile's order) or a 1-D mono waveform"
            )
        tensor = tensor.mean(dim=1)
    elif tensor.dim() != 1:
        raise ValueError(f"waveform must be 1-D or [samples, channels], got shape {tuple(tensor.shape)}")
    return tensor


def waveform_to_examples(
    waveform: ArrayLike, sample_rate: int, resampler: str = "soxr", device: Union[str, torch.device, None] = None
) -> torch.Tensor:
    """Waveform (1-D or ``[samples, channels]``, array or tensor, values in [-1, 1]) → ``[N, 1, 96, 64]``.

    Audio at another rate is resampled to 16 kHz first (``resampler``: ``"soxr"`` or ``"resampy"``,
    see :func:`avseg.audio.io.resample`). The result is on ``device`` (default: the input's device).
    Audio shorter than 0.975 s (15 600 samples at 16 kHz) gives ``N = 0``, as in TF.
    """
    mono = _as_mono_tensor(waveform)
    target_device = torch.device(device) if device is not None else mono.device
    if int(sample_rate) != SAMPLE_RATE:
        from avseg.audio.io import resample

        resampled = resample(mono.detach().cpu().double().numpy(), int(sample_rate), SAMPLE_RATE, resampler)
        mono = torch.from_numpy(np.ascontiguousarray(resampled))
    return log_mel_examples(mono.to(target_device))


def pad_examples(examples: torch.Tensor, num_examples: int = 5) -> torch.Tensor:
    """AVSBench's rule: repeat the last example until there are ``num_examples`` (``[N, ...]`` → ``[max(N, n), ...]``).

    Longer inputs are returned unchanged; take ``[:num_examples]`` to trim.
    """
    count = examples.shape[0]
    if count == 0:
        raise MediaError(
            f"audio too short for VGGish: it needs at least {MIN_SAMPLES} samples at {SAMPLE_RATE} Hz (0.975 s) "
            "to give one 0.96 s example"
        )
    if count >= num_examples:
        return examples
    filler = examples[-1:].expand(num_examples - count, *examples.shape[1:])
    return torch.cat([examples, filler], dim=0)
