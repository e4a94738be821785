"""Live streams: each push's mask equals the offline model on the same frames and audio; tools/stream.py."""
import math
import re

import numpy as np
import pytest
import torch

from avseg.audio.vggish_input import SAMPLE_RATE
from avseg.checkpoint import save_checkpoint
from avseg.cli.stream import main as stream_main
from avseg.config import load_config
from avseg.data.avsbench_dataset import normalize_frames
from avseg.inference.segmenter import Segmenter, resize_probabilities, window_examples
from avseg.inference.stream import file_source, run_stream
from test_feature_cache import tiny_model
from test_segmenter import ProbeModel, write_video

FPS = 10
HOP = SAMPLE_RATE // FPS


def synthetic_source(seconds, size=(30, 40), seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (seconds * FPS,) + size + (3,), dtype=np.uint8)
    t = np.arange(seconds * SAMPLE_RATE) / SAMPLE_RATE
    waveform = (0.2 * np.sin(2 * np.pi * 300 * t * (1 + t / seconds)) + 0.05 * rng.standard_normal(len(t)))
    return frames, waveform.astype(np.float32)


def offline(seg, frames, waveform, index, output):
    """The documented schedule, written out: clip of the frames 1 s apart ending at push ``index``, the last
    ``n`` complete examples of the 0.96 s grid, through the model's own forward pass."""
    time = index / FPS
    examples = (index * HOP - 15600) // 15360 + 1
    length = min(seg.clip_seconds, math.floor(time + 1e-6) + 1, examples)
    slot = length - 1 if output == "last" else (length - 1) // 2
    clip = [round((time - length + 1 + j) * FPS) for j in range(length)]
    log_mel = window_examples(waveform, 0.96 * (examples - length), length)
    images = normalize_frames(np.stack([seg.resize(frames[i]) for i in clip]))[None]
    with torch.inference_mode():
        logits = seg.model(images, log_mel[None])["logits"][0, slot]
    return clip[slot], resize_probabilities(torch.sigmoid(logits[0]).numpy(), frames.shape[1:3])


def run_pushes(seg, frames, waveform, output, sample_rate=SAMPLE_RATE, audio=None):
    stream = seg.stream(output=output)
    audio = waveform if audio is None else audio
    hop = sample_rate // FPS
    results = []
    for index, frame in enumerate(frames):
        result = stream.push(frame, audio[max(index - 1, 0) * hop:index * hop], sample_rate)
        results.append(None if result is None else (stream.last_index, result))
    return results


@pytest.mark.parametrize("name, output", [("tpavi", "last"), ("tpavi", "center"), ("ecmvae", "last")])
def test_stream_equals_the_offline_model(name, output):
    frames, waveform = synthetic_source(7)
    model, cfg = tiny_model(name, image_size=32)
    seg = Segmenter(model, cfg, device="cpu")
    results = run_pushes(seg, frames, waveform, output)
    assert all(r is None for r in results[:10]) and all(r is not None for r in results[10:])  # 0.975 s of audio
    for index in list(range(10, 70, 7)) + [69]:
        expected_index, expected = offline(seg, frames, waveform, index, output)
        got_index, got = results[index]
        assert got.shape == (30, 40)
        assert got_index == expected_index == (index if output == "last" else expected_index)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    if output == "center":
        assert results[69][0] == 69 - 2 * FPS  # the centre of a full 5-frame clip is 2 s behind


def test_stream_without_the_cache_and_at_48khz():
    """A model without the cache runs whole clips (same masks); 48 kHz audio is resampled on the fly."""
    frames, waveform = synthetic_source(3, size=(32, 32))
    seg = Segmenter(ProbeModel(), load_config(None, ["data.image_size=32"]), device="cpu")
    results = run_pushes(seg, frames, waveform, "last")
    for index in (10, 25, 29):
        expected_index, expected = offline(seg, frames, waveform, index, "last")
        assert results[index][0] == expected_index
        np.testing.assert_allclose(results[index][1], expected, atol=1e-5, rtol=0)
    t = np.arange(3 * 48000) / 48000
    loud = (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    results = run_pushes(seg, frames, None, "last", sample_rate=48000, audio=loud)
    assert results[9] is None and results[11] is not None and results[29][1].shape == (32, 32)


def test_stream_refuses_bad_input():
    seg = Segmenter(ProbeModel(), load_config(None, ["data.image_size=32"]), device="cpu")
    with pytest.raises(ValueError, match="output must be one of"):
        seg.stream(output="middle")
    stream = seg.stream()
    with pytest.raises(ValueError, match="frame must be RGB uint8"):
        stream.push(np.zeros((8, 8), np.float32), np.zeros(10, np.float32), SAMPLE_RATE)
    stream.push(np.zeros((8, 8, 3), np.uint8), np.zeros(10, np.float32), SAMPLE_RATE)
    with pytest.raises(ValueError, match="sample_rate changed"):
        stream.push(np.zeros((8, 8, 3), np.uint8), np.zeros(10, np.float32), 44100)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model, cfg = tiny_model("tpavi", image_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, model.state_dict(), cfg)
    return path


def test_file_source_in_real_time(tmp_path, tiny_checkpoint, capsys):
    video = write_video(tmp_path / "v.mp4", 2.0, fps=10)
    assert stream_main(["--ckpt", str(tiny_checkpoint), "--video", str(video), "--realtime", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "latency (s): p50" in printed and "frames pushed" in printed
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu")
    items, fps = file_source(seg, video)
    report = run_stream(seg.stream(), items, realtime=False)
    assert fps == 10 and report.frames == 20 and report.dropped == 0
    assert report.outputs == 10  # pushes 10..19: from 0.975 s of audio on


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp: ("missing.pth", write_video(tmp / "v.mp4", 1.5)), "checkpoint not found: .*missing.pth"),
    (lambda tmp: (None, write_video(tmp / "silent.mp4", 1.5, audio=False)), "silent.mp4: has no audio track"),
    (lambda tmp: (None, tmp / "junk.mp4"), "junk.mp4: cannot be read as a video container"),
])
def test_user_errors_exit_2(tmp_path, tiny_checkpoint, capsys, make_input, message):
    from avseg.cli.common import run_cli

    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 20)
    checkpoint, video = make_input(tmp_path)
    checkpoint = str(tmp_path / checkpoint) if checkpoint else str(tiny_checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(stream_main, ["--ckpt", checkpoint, "--video", str(video), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
