"""The Segmenter API: window schedule, per-frame clips, audio alignment, determinism, bad input."""
import math

import av
import numpy as np
import pytest
import soundfile
import torch

from avseg.audio.vggish_input import SAMPLE_RATE
from avseg.checkpoint import save_checkpoint
from avseg.config import load_config
from avseg.data.avsbench_dataset import normalize_frames
from avseg.errors import MediaError
from avseg.inference.segmenter import Segmenter, assign_windows, plan_windows, window_examples
from avseg.inference.video import iter_frames, probe_video
from avseg.models import build_model

TINY_MODEL = [
    "model.name=tpavi", "model.backbone.name=resnet18", "model.backbone.weights=null", "model.audio.name=small",
    "model.audio.weights=null", "model.audio.freeze=false", "model.neck_channels=16", "data.image_size=64",
]


def write_video(path, seconds, fps=10, size=(64, 48), audio=True, grey_levels=None, pix_fmt="yuv420p"):
    """An mp4 (libx264) of ``seconds`` at ``fps``: frame i has grey level ``grey_levels[i]`` plus a moving
    square; with ``audio`` a 16 kHz AAC track whose tone gets louder over time."""
    width, height = size
    count = round(seconds * fps)
    levels = grey_levels if grey_levels is not None else np.linspace(20, 230, count)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        stream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio else None
        for index in range(count):
            image = np.full((height, width, 3), int(levels[index]), np.uint8)
            x = (index * 3) % (width - 12)
            image[10:22, x:x + 12] = (250, 30, 30)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if stream is not None:
            t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
            wave = (0.05 + 0.4 * t / seconds) * np.sin(2 * np.pi * 440 * t)
            samples = wave.astype(np.float32)[None]
            for start in range(0, samples.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format="fltp",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
                container.mux(stream.encode(chunk))
            container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, build_model(cfg).state_dict(), cfg)
    return path


class ProbeModel(torch.nn.Module):
    """logits = red channel of each frame + mean of its log-mel example: both inputs are traceable."""

    def forward(self, frames, log_mel, masks=None, mask_valid=None):
        return {"logits": frames[:, :, :1] + log_mel.mean(dim=(2, 3, 4))[:, :, None, None, None]}


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("duration, length, starts", [
    (0.975, 1, [0.0]), (1.5, 1, [0.0, 0.5]), (3.0, 3, [0.0]), (4.6, 4, [0.0, 0.6]), (5.0, 5, [0.0]),
    (7.5, 5, [0.0, 1.0, 2.0, 2.5]), (12.0, 5, [0.0, 1, 2, 3, 4, 5, 6, 7]),
])
def test_plan_windows(duration, length, starts):
    got_length, got_starts = plan_windows(duration, 5)
    assert got_length == length
    np.testing.assert_allclose(got_starts, starts)


@pytest.mark.parametrize("duration", [0.975, 1.5, 3.0, 4.6, 7.5, 12.0, 13.7])
def test_each_second_uses_the_window_where_it_is_most_central(duration):
    length, starts = plan_windows(duration, 5)
    times = np.arange(0, duration - 1e-9, 0.1)
    windows, slots = assign_windows(times, duration, length, starts)
    for t, window, slot in zip(times, windows, slots):
        start = starts[window]
        assert start - 1e-9 <= t < start + length + 1e-9
        assert slot == min(int(math.floor(t - start + 1e-9)), length - 1)
        # brute force: among windows holding the whole second, the one whose centre is nearest its centre
        second = min(int(t + 1e-9), math.ceil(duration) - 1)
        end = min(second + 1, duration)
        holding = [a for a in starts if a <= second + 1e-9 and a + length >= end - 1e-9]
        best = min(holding, key=lambda a: (abs(a + length / 2 - (second + end) / 2), a))
        assert start == best
        # every frame of the clip stays inside the window and inside the video
        clip_times = t + np.arange(length) - slot
        assert clip_times.min() >= start - 1e-9 and clip_times.max() < min(start + length, duration) + 1e-9


# ----------------------------------------------------------------------------- clips
def test_every_frame_is_segmented_as_itself_with_its_window_audio(tmp_path):
    """7.5 s at 10 fps: windows 0, 1, 2 and 2.5 (end-aligned); each output frame must see its own
    decoded frame in its slot and the log-mel of its window's audio in the same slot."""
    video = write_video(tmp_path / "v.mp4", 7.5, fps=10)
    cfg = load_config(None, ["data.image_size=32"])
    seg = Segmenter(ProbeModel(), cfg, device="cpu", batch_size=3)
    result = seg.predict_video(video)
    info = probe_video(video)
    assert len(result) == info.num_frames == 75
    np.testing.assert_allclose(result.window_starts, [0, 1, 2, 2.5])

    waveform = seg.open_video(video).waveform
    log_mels = [window_examples(waveform, start, result.clip_seconds) for start in result.window_starts]
    decoded = dict(iter_frames(info))
    for index in range(len(result)):
        image = normalize_frames(seg.resize(decoded[index])[None])[0, 0]  # red channel [32, 32]
        log_mel = log_mels[result.windows[index]][result.slots[index]]
        expected = torch.sigmoid(image + log_mel.mean()).numpy()
        np.testing.assert_allclose(result.probabilities[index], expected, atol=1e-5)


def test_output_fps_and_cap(tmp_path):
    video = write_video(tmp_path / "v.mp4", 2.0, fps=30)
    seg = Segmenter(ProbeModel(), load_config(None, ["data.image_size=32"]), device="cpu")
    assert len(seg.predict_video(video)) == 50  # capped at the default 25 fps
    assert len(seg.predict_video(video, max_fps=None)) == 60
    lowered = seg.predict_video(video, fps=4)
    assert len(lowered) == 8 and float(lowered.fps) == 4
    np.testing.assert_allclose(lowered.timestamps, np.arange(8) / 4)


def test_rotated_video_is_turned_upright(tmp_path):
    """A phone-style display matrix (rotate 90 degrees clockwise): frames come out upright, size swapped."""
    with av.open(str(tmp_path / "rot.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(-90)  # FFmpeg's angle is counter-clockwise
        image = np.zeros((32, 64, 3), np.uint8)
        image[:8, :8] = 255  # marker in the top-left corner of the stored picture
        for index in range(12):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    info = probe_video(tmp_path / "rot.mp4")
    assert (info.width, info.height, info.rotation) == (32, 64, 270)
    _, upright = next(iter_frames(info))
    assert upright.shape == (64, 32, 3)
    assert upright[:8, -8:].min() > 200 and upright[:8, :8].max() < 50  # clockwise: top-left -> top-right


# ----------------------------------------------------------------------------- real model
def test_predict_video_shapes_and_determinism(tmp_path, tiny_checkpoint):
    video = write_video(tmp_path / "odd.mp4", 3.0, fps=4, size=(75, 41), pix_fmt="yuv444p")  # odd sizes
    first = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu").predict_video(video)
    repeat = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu").predict_video(video)
    one_by_one = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", batch_size=1).predict_video(video)
    assert first.masks.shape == (12, 41, 75) and first.masks.dtype == bool
    assert first.probabilities.shape == (12, 64, 64)
    assert first.clip_seconds == 3 and list(first.window_starts) == [0.0]
    np.testing.assert_array_equal(first.probabilities, repeat.probabilities)
    np.testing.assert_array_equal(first.masks, repeat.masks)
    # another batch size may pick another convolution algorithm (seen on AMD EPYC): float32 rounding only
    np.testing.assert_allclose(first.probabilities, one_by_one.probabilities, rtol=0, atol=1e-6)
    clear = np.abs(np.stack([first.probability(index) for index in range(len(first))]) - first.threshold) > 1e-5
    np.testing.assert_array_equal(first.masks[clear], one_by_one.masks[clear])
    assert first.mask(5).shape == (41, 75)


def test_sampling_ecmvae_is_deterministic(tmp_path):
    """ECMVAE that samples its latent at test time: the seeded inference repeats itself exactly."""
    torch.manual_seed(0)
    cfg = load_config("synthetic/s4_ecmvae.yaml", ["data.image_size=32", "model.ecmvae.sample_at_test=true"])
    save_checkpoint(tmp_path / "ecmvae.pth", build_model(cfg).state_dict(), cfg)
    video = write_video(tmp_path / "v.mp4", 2.0, fps=2)
    seg = Segmenter.from_checkpoint(tmp_path / "ecmvae.pth", device="cpu")
    first, again = seg.predict_video(video), seg.predict_video(video)
    assert first.masks.shape == (4, 48, 64)
    np.testing.assert_array_equal(first.probabilities, again.probabilities)


def test_predict_clip(tiny_checkpoint):
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 50, 70, 3), dtype=np.uint8)
    waveform = (0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32)  # 3 s for 5 frames: repeat rule
    result = seg.predict_clip(frames, waveform, SAMPLE_RATE)
    assert result.masks.shape == (5, 50, 70) and list(result.timestamps) == [0, 1, 2, 3, 4]
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_array_equal(seg.predict_clip(as_float, waveform, SAMPLE_RATE).probabilities, result.probabilities)
    with pytest.raises(MediaError, match="0.975"):
        seg.predict_clip(frames, waveform[:8000], SAMPLE_RATE)


def test_predict_frames_folder_with_wav(tmp_path, tiny_checkpoint):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(10):  # 10 frames, 5 s of sound: 2 frames per second
        image = np.full((40, 60, 3), 25 * index, np.uint8)
        av.VideoFrame.from_ndarray(image, format="rgb24").to_image().save(folder / f"{index + 1}.png")
    soundfile.write(tmp_path / "a.wav", (0.2 * np.sin(np.arange(5 * SAMPLE_RATE) / 9)).astype(np.float32), SAMPLE_RATE)
    result = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu").predict_frames(folder, tmp_path / "a.wav")
    assert float(result.fps) == 2 and len(result) == 10 and result.masks.shape == (10, 40, 60)
    assert result.clip_seconds == 5


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(tmp_path):
    seg = Segmenter(ProbeModel(), load_config(None, ["data.image_size=32"]), device="cpu")
    with pytest.raises(MediaError, match="not found"):
        seg.predict_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 10)
    with pytest.raises(MediaError, match="cannot be read as a video container"):
        seg.predict_video(tmp_path / "junk.mp4")
    soundfile.write(tmp_path / "sound.wav", np.zeros(16000 * 2, np.float32), 16000)
    with pytest.raises(MediaError, match="no video stream"):
        seg.predict_video(tmp_path / "sound.wav")
    silent = write_video(tmp_path / "silent.mp4", 2.0, audio=False)
    with pytest.raises(MediaError, match="no audio track.*--allow-silent"):
        seg.predict_video(silent)
    assert seg.predict_video(silent, allow_silent=True).silent
    short = write_video(tmp_path / "short.mp4", 0.5)
    with pytest.raises(MediaError, match="0.975"):
        seg.predict_video(short)


def test_a_non_avs_checkpoint_or_config_is_refused(tmp_path):
    from avseg.errors import CheckpointError, ConfigError

    cfg = load_config(None, ["model.name=fashion_vae", "data.name=fashion_mnist"])
    path = tmp_path / "vae.pth"
    save_checkpoint(path, build_model(cfg).state_dict(), cfg)
    with pytest.raises(CheckpointError, match=r"vae\.pth: the model 'fashion_vae' is an image autoencoder/VAE"):
        Segmenter.from_checkpoint(path, device="cpu")
    with pytest.raises(ConfigError, match="model.name.*segmenting videos needs an AVS model"):
        Segmenter(ProbeModel(), cfg, device="cpu")


# ----------------------------------------------------------------------------- semantic models
class SemanticProbeModel(torch.nn.Module):
    """Three-class logits: (c - 1) x the red channel of each frame + c x the mean of its log-mel example."""

    def forward(self, frames, log_mel, masks=None, mask_valid=None):
        scale = torch.arange(3, dtype=frames.dtype)[None, None, :, None, None]
        return {"logits": (scale - 1) * frames[:, :, :1] + scale * log_mel.mean(dim=(2, 3, 4))[:, :, None, None, None]}


def test_semantic_model_gives_class_probabilities_and_class_maps(tmp_path):
    """num_classes > 1: softmax probabilities [N, C, S, S], class maps [N, H, W] (argmax after resizing), masks =
    not background; predict_clip and the live stream return class probabilities too."""
    video = write_video(tmp_path / "v.mp4", 2.0, fps=5, size=(40, 30))
    seg = Segmenter(SemanticProbeModel(), load_config(None, ["data.image_size=32"]), device="cpu")
    result = seg.predict_video(video)
    assert result.num_classes == 3 and result.probabilities.shape == (10, 3, 32, 32)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-6)
    waveform = seg.open_video(video).waveform
    log_mel = window_examples(waveform, 0.0, result.clip_seconds)
    decoded = dict(iter_frames(probe_video(video)))
    for index in (0, 7):
        red = normalize_frames(seg.resize(decoded[index])[None])[0, 0]
        mean = log_mel[result.slots[index]].mean()
        logits = torch.stack([(c - 1) * red + c * mean for c in range(3)])
        np.testing.assert_allclose(result.probabilities[index], torch.softmax(logits, 0).numpy(), atol=1e-5)
        resized = torch.nn.functional.interpolate(torch.softmax(logits, 0)[None], size=(30, 40), mode="bilinear",
                                                  align_corners=False)[0]
        np.testing.assert_array_equal(result.class_map(index), resized.argmax(0).numpy())
    assert result.class_maps.shape == (10, 30, 40) and result.class_maps.dtype == np.uint8
    np.testing.assert_array_equal(result.masks, result.class_maps != 0)
    clip = seg.predict_clip(np.stack([decoded[i] for i in (0, 5)]), waveform, SAMPLE_RATE)
    assert clip.probabilities.shape == (2, 3, 32, 32) and clip.class_map(1).shape == (30, 40)
    stream = seg.stream()
    outputs = [stream.push(decoded[i], waveform[max(i - 1, 0) * 3200:i * 3200], SAMPLE_RATE) for i in range(10)]
    assert outputs[4] is None and outputs[5].shape == (3, 30, 40)
