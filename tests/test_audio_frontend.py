"""The VGGish front end against a straightforward numpy re-derivation of TF ``vggish_input`` / ``mel_features``."""
import numpy as np
import pytest
import soundfile
import torch

from avseg.audio import load_audio, load_log_mel, log_mel_examples, mel_matrix, pad_examples, waveform_to_examples
from avseg.errors import MediaError


# ----------------------------------------------------------------------------- reference (TF algorithm, numpy, loops)
def tf_mel_matrix():
    def to_mel(hz):
        return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    bins_mel = to_mel(np.linspace(0.0, 8000.0, 257))
    edges = np.linspace(to_mel(125.0), to_mel(7500.0), 64 + 2)
    weights = np.empty((257, 64))
    for band in range(64):
        low, centre, high = edges[band : band + 3]
        lower_slope = (bins_mel - low) / (centre - low)
        upper_slope = (high - bins_mel) / (high - centre)
        weights[:, band] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    weights[0, :] = 0.0
    return weights


def tf_examples(samples):
    """TF ``waveform_to_examples`` for 16 kHz input: [N, 96, 64] float64."""
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim > 1:
        data = data.mean(axis=1)
    num_frames = 1 + (len(data) - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi / 400 * np.arange(400))
    spectrogram = np.empty((num_frames, 257))
    for f in range(num_frames):
        spectrogram[f] = np.abs(np.fft.rfft(data[f * 160 : f * 160 + 400] * window, 512))
    log_mel = np.log(spectrogram @ tf_mel_matrix() + 0.01)
    num_examples = 1 + (num_frames - 96) // 96
    return np.stack([log_mel[i * 96 : i * 96 + 96] for i in range(num_examples)])


def make_signal(seconds=3.2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    loud = 0.6 * np.sin(2 * np.pi * 440 * t) * (t < 1.5)  # loud tone, then near silence: stresses quiet bins
    return (loud + 1e-4 * rng.standard_normal(t.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- tests
def test_mel_matrix_matches_tf_loop():
    np.testing.assert_allclose(mel_matrix(), tf_mel_matrix(), rtol=0, atol=1e-12)
    nonzero_rows = np.flatnonzero(mel_matrix().sum(axis=1))
    assert nonzero_rows[0] == 5 and nonzero_rows[-1] == 239


@pytest.mark.parametrize("kind", ["numpy", "tensor", "stereo", "int16"])
def test_examples_match_tf_reference(kind):
    wave = make_signal()
    reference = tf_examples(wave)
    if kind == "tensor":
        inputs = torch.from_numpy(wave)
    elif kind == "stereo":
        inputs = np.stack([wave * 0.5, wave * 1.5], axis=1)  # [samples, channels]; the mean is `wave`
    elif kind == "int16":
        inputs = np.round(wave * 32767).astype(np.int16)
        reference = tf_examples(inputs / 32768.0)
    else:
        inputs = wave
    examples = waveform_to_examples(inputs, 16000)
    assert examples.shape == (3, 1, 96, 64) and examples.dtype == torch.float32
    assert np.abs(examples[:, 0].double().numpy() - reference).max() < 1e-4


def test_batched_equals_single_and_shapes():
    batch = torch.from_numpy(np.stack([make_signal(5.0, seed) for seed in range(3)]))
    examples = log_mel_examples(batch)
    assert examples.shape == (3, 5, 1, 96, 64)
    for b in range(3):
        assert torch.equal(examples[b], waveform_to_examples(batch[b], 16000))
    assert waveform_to_examples(np.zeros(15599, np.float32), 16000).shape == (0, 1, 96, 64)
    assert waveform_to_examples(np.zeros(15600, np.float32), 16000).shape == (1, 1, 96, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_tf_reference():
    wave = make_signal()
    examples = waveform_to_examples(torch.from_numpy(wave).cuda(), 16000)
    assert examples.is_cuda
    assert np.abs(examples[:, 0].double().cpu().numpy() - tf_examples(wave)).max() < 1e-4


def test_channels_first_input_is_refused():
    with pytest.raises(ValueError, match="samples, channels"):
        waveform_to_examples(np.zeros((2, 32000), np.float32), 16000)


def test_pad_examples_repeats_last():
    examples = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 96, 64)
    padded = pad_examples(examples, 5)
    assert padded.shape == (5, 1, 96, 64)
    assert padded[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert pad_examples(padded, 5) is padded
    with pytest.raises(MediaError, match="too short"):
        pad_examples(examples[:0], 5)


def test_resampling_to_16k_keeps_features():
    t44 = np.arange(int(3.0 * 44100)) / 44100
    t16 = np.arange(int(3.0 * 16000)) / 16000
    tone44 = (0.5 * np.sin(2 * np.pi * 523.0 * t44)).astype(np.float32)
    tone16 = (0.5 * np.sin(2 * np.pi * 523.0 * t16)).astype(np.float32)
    resampled = waveform_to_examples(tone44, 44100)
    direct = waveform_to_examples(tone16, 16000)
    assert resampled.shape == direct.shape == (3, 1, 96, 64)
    assert (resampled[1] - direct[1]).abs().max() < 0.05  # interior example


def test_resampy_selectable_or_clear_error():
    tone = np.sin(np.arange(44100) / 44100 * 2 * np.pi * 300).astype(np.float32)
    try:
        import resampy  # noqa: F401
    except ImportError:
        with pytest.raises(MediaError, match="pip install resampy"):
            waveform_to_examples(tone, 44100, resampler="resampy")
    else:
        assert waveform_to_examples(tone, 44100, resampler="resampy").shape == (1, 1, 96, 64)


def test_load_audio_wav_and_video(tmp_path):
    from avseg.data.synthetic import write_mp4

    t = np.arange(22050 * 2) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 330 * t), 0.5 * np.sin(2 * np.pi * 330 * t)], axis=1) * 0.4
    soundfile.write(tmp_path / "a.wav", stereo, 22050, subtype="PCM_16")
    wave, rate = load_audio(tmp_path / "a.wav")
    assert rate == 16000 and wave.ndim == 1 and wave.dtype == np.float32
    assert abs(len(wave) - 32000) <= 1 and 0.25 < np.abs(wave).max() < 0.35

    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    write_mp4(tmp_path / "v.mp4", np.zeros((16, 32, 32, 3), np.uint8), tone, fps=8)
    video_wave, rate = load_audio(tmp_path / "v.mp4")
    assert rate == 16000 and abs(len(video_wave) - 32000) < 2048
    examples = load_log_mel(tmp_path / "v.mp4", num_examples=5)
    assert examples.shape == (5, 1, 96, 64) and torch.equal(examples[2], examples[4])
    with pytest.raises(MediaError, match="not found"):
        load_audio(tmp_path / "missing.mp4")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(MediaError, match="bad.wav"):
        load_audio(tmp_path / "bad.wav")
