"""Audio: the VGGish log-mel front end and audio readers (wav via soundfile, video audio via PyAV)."""
from avseg.audio.io import load_audio, load_log_mel, read_video_audio, read_wav, resample, to_mono
from avseg.audio.vggish_input import (
    EXAMPLE_FRAMES,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    log_mel_examples,
    log_mel_spectrogram,
    mel_matrix,
    pad_examples,
    waveform_to_examples,
)

__all__ = [
    "EXAMPLE_FRAMES",
    "NUM_MEL_BINS",
    "SAMPLE_RATE",
    "load_audio",
    "load_log_mel",
    "log_mel_examples",
    "log_mel_spectrogram",
    "mel_matrix",
    "pad_examples",
    "read_video_audio",
    "read_wav",
    "resample",
    "to_mono",
    "waveform_to_examples",
]
